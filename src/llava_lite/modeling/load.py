"""``load_pretrained(dir)``: any model folder this library reads, as a :class:`LlavaModel`.

The format dispatch sits above the model class and the format modules, which import the
model class and never each other: a llava_lite folder (``config.json`` with a
``llava_lite`` key, written by ``LlavaModel.save_pretrained``), a llava-hf folder
(``model_type`` "llava", "llava_next" or "llava_onevision") or an original LLaVA checkpoint (``mm_vision_tower``).
"""

from __future__ import annotations

import json
from pathlib import Path

from llava_lite.modeling.formats.llava_hf import import_hf_llava
from llava_lite.modeling.formats.original_llava import import_original_llava
from llava_lite.modeling.llava import CONFIG_NAME, LlavaModel

FORMATS = ("llava_lite", "llava_hf", "original_llava")


def detect_format(path: str | Path) -> str:
    """Which of ``FORMATS`` the folder holds, from its ``config.json``."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: not a llava_lite model folder (nor a llava-hf or original LLaVA one)"
        )
    meta = json.loads(config_file.read_text())
    if "llava_lite" in meta:
        return "llava_lite"
    if "mm_vision_tower" in meta:
        return "original_llava"
    if meta.get("model_type") in ("llava", "llava_next", "llava_onevision"):
        return "llava_hf"
    raise ValueError(
        f"{config_file} has no 'llava_lite' key, no 'mm_vision_tower' and model_type="
        f"{meta.get('model_type')!r}: not one of {list(FORMATS)}"
    )


def load_pretrained(path: str | Path, trust_remote_code: bool = False) -> LlavaModel:
    """Load a model folder of any of ``FORMATS`` (original LLaVA folders with the ``vicuna_v1``
    template; ``import_original_llava`` takes another)."""
    fmt = detect_format(path)
    if fmt == "llava_lite":
        return LlavaModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    if fmt == "llava_hf":
        return import_hf_llava(path, trust_remote_code=trust_remote_code)
    return import_original_llava(path)
