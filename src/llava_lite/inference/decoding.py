"""How a model decodes its answers: one settings object for chat, batch answers and the web demo.

Named for what it sets, decoding, apart from ``GenerateSettings`` (instruction-data
generation with a teacher, :mod:`llava_lite.generation.settings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class DecodingSettings:
    """Decoding settings; greedy by default, as LLaVA's evaluation runs (temperature 0)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}; valid: 1 or more")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}; valid: > 0 (do_sample=false for greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}; valid: 0 < top_p <= 1")

    @classmethod
    def from_temperature(
        cls, max_new_tokens: int, temperature: float, top_p: float = 1.0
    ) -> DecodingSettings:
        """The command-line and web-demo convention: temperature 0 means greedy."""
        if temperature < 0:
            raise ValueError(f"temperature={temperature}; valid: 0 (greedy) or more")
        sample = temperature > 0
        return cls(max_new_tokens, sample, temperature if sample else 1.0, top_p if sample else 1.0)

    def generate_kwargs(self, stop_token_ids: Sequence[int] = ()) -> dict[str, Any]:
        """Keyword arguments of ``LlavaModel.generate``; decoding stops at ``stop_token_ids``
        (the template's end-of-turn tokens), or at the tokenizer's EOS when there are none."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "eos_token_id": list(stop_token_ids) or None,
            "use_cache": self.use_cache,
        }
