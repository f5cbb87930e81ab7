"""Typed settings of a generation run; ``conf/generate.yaml`` is validated against them.

No secrets live here: the API key comes only from the environment or the SDK's own
configuration. Prices are USD per million tokens, per model id
(:data:`llava_lite.claude.prices.PRICES`, or ``teacher.prices``); check them against the
provider's current price list for the model you choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from llava_lite.claude.settings import ClaudeSettings
from llava_lite.config import validated_settings
from llava_lite.generation.base import RESPONSE_TYPES, BatchSettings
from llava_lite.generation.messages import ContextOptions
from llava_lite.generation.prompts import PROMPT_VERSION
from llava_lite.generation.validation import ValidationConfig


@dataclass
class TeacherSettings(ClaudeSettings):
    """The shared Claude settings (model, limits, ``prices``) plus what only the teacher has."""

    name: str = "anthropic"  # "anthropic" | "offline"
    prompt_caching: bool = True
    max_tokens_after_cut: int = 4096  # a retry after a reply cut by max_tokens doubles it, up to this
    seed: int = 0  # offline teacher only


@dataclass
class EstimateSettings:
    encoding: str = "cl100k_base"
    token_ratio: float = 1.0  # Claude tokens per cl100k token, if you have measured it
    # Shortest prefix the model will cache (1024 for Sonnet-class models, more for some others);
    # the dry run warns when the shared prefix is estimated below it.
    min_cacheable_tokens: int = 1024
    expected_output_tokens: dict[str, int] = field(
        default_factory=lambda: {"conversation": 450, "detail": 300, "complex_reasoning": 300}
    )


@dataclass
class GenerateSettings:
    captions_file: str = "???"
    instances_file: str | None = None
    image_root: str | None = None  # if set, images missing from it are skipped (counted)
    output_dir: str = "outputs/generate"
    export_json: bool = True  # also write one LLaVA JSON array at the end (temp + rename)
    response_types: list[str] = field(default_factory=lambda: list(RESPONSE_TYPES))
    samples_per_type: dict[str, int] = field(
        default_factory=lambda: {"conversation": 1, "detail": 1, "complex_reasoning": 1}
    )
    max_images: int | None = None
    prompt_version: str = PROMPT_VERSION
    seed: int = 0  # draws the "detail" instruction per image and sample
    max_attempts: int = 2  # requests per sample: the first + retries after a rejected or failed reply
    retry_stored_failures: bool = False  # failures replayed from the cache do not use up attempts
    budget_usd: float | None = 5.0  # hard cap; null = no cap
    dry_run: bool = False
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    context: dict[str, ContextOptions] = field(
        default_factory=lambda: {
            "conversation": ContextOptions(captions=True, boxes=False),
            "detail": ContextOptions(captions=True, boxes=True),
            "complex_reasoning": ContextOptions(captions=True, boxes=True),
        }
    )
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    estimate: EstimateSettings = field(default_factory=EstimateSettings)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.response_types) - set(RESPONSE_TYPES))
        if unknown:
            raise ValueError(f"response_types {unknown} unknown; valid: {list(RESPONSE_TYPES)}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


def settings_from(cfg: DictConfig | dict[str, Any] | GenerateSettings) -> GenerateSettings:
    """Validate a Hydra / dict config against :class:`GenerateSettings` (types, unknown keys)."""
    return validated_settings(GenerateSettings, cfg)
