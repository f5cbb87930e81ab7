"""Typed settings of a preference-pairs run; ``conf/pairs.yaml`` is validated against them.

No secrets live here: the judge's API key comes from ``ANTHROPIC_API_KEY`` (or the SDK's own
configuration). Another judge (the synthetic world's offline one) is a ``judge`` node with a
``_target_`` (``conf/judge/``), moved whole into ``judge.target``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from llava_lite.claude.settings import ClaudeSettings
from llava_lite.config import validated_settings
from llava_lite.evaluation.answer_judge import PROMPT_VERSION, PROMPTS
from llava_lite.generation.base import BatchSettings, check_target
from llava_lite.generation.settings import target_moved

JUDGE_TARGET_SETTING = "judge._target_"


@dataclass
class SamplingSettings:
    """How the model samples its candidate answers."""

    k: int = 4  # answers per question (the best and the worst become a pair)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 8  # rows per decode call; a question's k samples share one call
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"sampling.k={self.k}; valid: 2 or more (a pair needs two answers)")
        if self.temperature <= 0:
            raise ValueError(f"sampling.temperature={self.temperature}; valid: > 0 (greedy gives one answer)")
        if self.batch_size < 1:
            raise ValueError(f"sampling.batch_size={self.batch_size}; valid: 1 or more")


@dataclass
class AnswerJudgeSettings(ClaudeSettings):
    """The Claude answer judge (the shared Claude settings plus its prompt version), or any other
    judge as ``{_target_: <class path>, **its arguments}`` in ``target``."""

    max_tokens: int = 512
    prompt_version: str = PROMPT_VERSION
    target: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_version not in PROMPTS:
            raise ValueError(f"judge.prompt_version={self.prompt_version!r}; valid: {sorted(PROMPTS)}")
        if self.target is not None:
            check_target(self.target, JUDGE_TARGET_SETTING)


@dataclass
class PairsSettings:
    model_dir: str = "???"
    questions_file: str = "???"
    image_root: str | None = None
    captions_file: str | None = None  # COCO captions (+ instances): the Claude judge's context
    instances_file: str | None = None
    output_dir: str = "outputs/pairs"
    device: str = "auto"
    template: str | None = None  # default: the model's conv_template
    margin: float = 2.0  # best - worst score a pair needs
    budget_usd: float | None = 5.0  # hard cap on the judge's billed dollars; None = no cap
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    judge: AnswerJudgeSettings = field(default_factory=AnswerJudgeSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self) -> None:
        if self.margin <= 0:
            raise ValueError(f"margin={self.margin}; valid: > 0")


def settings_from(cfg: DictConfig | dict[str, Any] | PairsSettings) -> PairsSettings:
    """Validate a Hydra / dict config against :class:`PairsSettings` (types, unknown keys)."""
    if isinstance(cfg, PairsSettings):
        return cfg
    return validated_settings(PairsSettings, target_moved(cfg, "judge"))
