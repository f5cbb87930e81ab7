"""Token estimates before spending, with tiktoken working offline.

Claude's tokenizer is not public; ``cl100k_base`` counts are a close, documented proxy,
scaled by ``token_ratio`` if you have measured a better factor for your model. tiktoken
normally downloads its BPE file on first use; here the file shipped in the ``bpe-openai``
package is seeded into tiktoken's own cache (hash-checked by tiktoken), so no network is
needed. The file is found without importing ``bpe_openai``, whose import builds its own
tokenizers through a deprecated ``importlib.resources`` call (a DeprecationWarning).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import tiktoken

from llava_lite.claude.prices import Usage

_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_DEFAULT_CACHE = Path.home() / ".cache" / "llava_lite" / "tiktoken"


@cache
def offline_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)`` without a download (``cl100k_base`` or ``o200k_base``)."""
    cache_dir = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or _DEFAULT_CACHE)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_dir))
    # tiktoken's cache file name is the sha1 of the URL it would download from.
    target = cache_dir / hashlib.sha1(_BPE_URL.format(name=name).encode()).hexdigest()
    if not target.exists():
        shipped = _bpe_openai_dir() / "data" / f"{name}.tiktoken.gz"
        if not shipped.is_file():
            raise FileNotFoundError(f"bpe-openai ships no {name}.tiktoken.gz; use cl100k_base or o200k_base")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress(shipped.read_bytes()))
        os.replace(tmp, target)
    return tiktoken.get_encoding(name)


def _bpe_openai_dir() -> Path:
    """The installed ``bpe_openai`` package folder, located without running its ``__init__``."""
    spec = find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package is not installed (pip install bpe-openai)")
    return Path(next(iter(spec.submodule_search_locations)))


class TokenEstimator:
    """Counts the tokens of a Messages API body: the shared prefix and the per-request part."""

    def __init__(self, encoding: str = "cl100k_base", token_ratio: float = 1.0) -> None:
        self.encoding = offline_encoding(encoding)
        self.token_ratio = token_ratio

    def count(self, text: str) -> int:
        return round(len(self.encoding.encode(text, disallowed_special=())) * self.token_ratio)

    def prefix_tokens(self, body: dict[str, Any]) -> int:
        """Tools + system: the part prompt caching writes once and then reads."""
        tools = json.dumps(body.get("tools", []), ensure_ascii=False)
        system = "\n".join(b["text"] for b in body.get("system", []))
        return self.count(tools) + self.count(system)

    def message_tokens(self, body: dict[str, Any]) -> int:
        total = 0
        for m in body["messages"]:
            content = m["content"]
            total += self.count(
                content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            )
        return total

    def worst_case(self, body: dict[str, Any]) -> Usage:
        """Upper bound used for budget reservations: no cache hit, the full ``max_tokens`` out."""
        return Usage(
            input_tokens=self.prefix_tokens(body) + self.message_tokens(body),
            output_tokens=int(body["max_tokens"]),
        )
