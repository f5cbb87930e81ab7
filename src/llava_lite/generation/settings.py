"""Typed settings of a generation run; ``conf/generate.yaml`` is validated against them.

No secrets live here: the API key comes only from the environment or the SDK's own
configuration. Prices are USD per million tokens, per model id
(:data:`llava_lite.claude.prices.PRICES`, or ``teacher.prices``); check them against the
provider's current price list for the model you choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llava_lite.claude.settings import ClaudeSettings
from llava_lite.config import validated_settings
from llava_lite.generation.base import (
    BUILT_IN_TEACHER,
    RESPONSE_TYPES,
    TARGET_KEY,
    BatchSettings,
    check_target,
)
from llava_lite.generation.messages import ContextOptions
from llava_lite.generation.prompts import PROMPT_VERSION
from llava_lite.generation.validation import ValidationConfig


@dataclass
class TeacherSettings(ClaudeSettings):
    """The built-in Claude teacher's settings (the shared Claude ones plus its own), or any other
    teacher as a ``{_target_: <class path>, **its arguments}`` node in ``target``.

    A config names another teacher by ``_target_`` (``conf/teacher/``: ``teacher=offline``), so
    this package never names the packages teachers come from; :func:`settings_from` moves such a
    ``teacher`` node into ``target`` whole, and the run builds it with ``hydra.utils.instantiate``.
    The pipeline's own knobs (``concurrency``, ``max_tokens`` after a cut reply) keep their
    defaults here for such a teacher.
    """

    name: str = BUILT_IN_TEACHER  # the one teacher chosen by name; any other is a `_target_`
    prompt_caching: bool = True
    max_tokens_after_cut: int = 4096  # a retry after a reply cut by max_tokens doubles it, up to this
    target: dict[str, Any] | None = None  # {_target_: ..., **kwargs}: a teacher built from config

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name != BUILT_IN_TEACHER:
            raise ValueError(
                f"teacher.name={self.name!r}; valid: [{BUILT_IN_TEACHER!r}] (any other teacher is chosen by "
                "teacher=<option of conf/teacher/>, e.g. teacher=offline, or by teacher._target_)"
            )
        if self.target is not None:
            check_target(self.target)


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
    """Validate a Hydra / dict config against :class:`GenerateSettings` (types, unknown keys).

    A ``teacher`` node with a ``_target_`` is taken whole as ``teacher.target``: its keys are that
    teacher's arguments, not the Claude teacher's settings.
    """
    if isinstance(cfg, GenerateSettings):
        return cfg
    return validated_settings(GenerateSettings, target_moved(cfg, "teacher"))


def target_moved(cfg: DictConfig | dict[str, Any], key: str) -> DictConfig | dict[str, Any]:
    """``cfg`` with a ``key`` node that has a ``_target_`` moved whole into ``key.target`` (the
    node's keys are that class's arguments, not the built-in Claude settings)."""
    node = cfg.get(key)
    if not isinstance(node, Mapping) or TARGET_KEY not in node:
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(plain, dict)
    spec = plain[key]
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    return {**plain, key: {"target": spec}}
