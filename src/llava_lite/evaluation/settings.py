"""Typed settings of an evaluation run; ``conf/eval.yaml`` is validated against them.

No secrets live here: the judge's API key comes from ``ANTHROPIC_API_KEY`` (or the SDK's
own configuration); ``judge.base_url`` may point at a proxy or a local stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from llava_lite.claude.settings import ClaudeSettings
from llava_lite.config import validated_settings
from llava_lite.inference.decoding import DecodingSettings

TASKS = ("answers", "scienceqa", "scienceqa_convert", "llava_bench")


@dataclass
class AnswersSettings:
    """``task=answers``: answer a LLaVA questions file (resumable)."""

    questions_file: str | None = None
    image_root: str | None = None
    answers_file: str = "answers.jsonl"


@dataclass
class ScienceQASettings:
    """``task=scienceqa``: the original release in ``base_dir`` (problems.json, pid_splits.json, images/).

    ``task=scienceqa_convert`` writes ``split`` as LLaVA training JSON to ``llava_file`` instead.
    """

    base_dir: str | None = None
    split: str = "test"
    use_caption: bool = False
    answers_file: str = "scienceqa_answers.jsonl"
    questions_file: str | None = None  # if set, also write the converted questions here
    llava_file: str = "scienceqa_llava.json"  # scienceqa_convert output
    answer_format: str = "letter"  # scienceqa_convert: "letter" ("A") or "sentence" ("The answer is A.")


@dataclass
class BenchSettings:
    """``task=llava_bench``: questions, reference answers and a context source.

    Context: ``context_file`` (LLaVA-Bench JSONL) or COCO-format ``captions_file`` (+
    ``instances_file``) rendered as the symbolic context. Model answers are read from
    ``answers_file``; with ``model_dir`` set, missing ones are generated first.
    """

    questions_file: str | None = None
    references_file: str | None = None
    context_file: str | None = None
    captions_file: str | None = None
    instances_file: str | None = None
    image_root: str | None = None
    answers_file: str = "llava_bench_answers.jsonl"
    reviews_file: str = "llava_bench_reviews.jsonl"


@dataclass
class JudgeSettings(ClaudeSettings):
    """The shared Claude settings (model, limits, ``prices``) plus the judge's budget and cache."""

    budget_usd: float | None = 5.0  # hard cap on billed dollars; None = no cap
    both_orders: bool = True  # judge each pair twice, swapped, and report the position bias
    cache_file: str = "judge_requests.sqlite"


@dataclass
class EvalSettings:
    task: str = "answers"
    model_dir: str | None = None
    model_id: str | None = None  # written into answers; default: the model folder's name
    template: str | None = None  # default: the model's conv_template
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8
    output_dir: str = "outputs/eval"
    decoding: DecodingSettings = field(default_factory=DecodingSettings)  # how answers are decoded
    answers: AnswersSettings = field(default_factory=AnswersSettings)
    scienceqa: ScienceQASettings = field(default_factory=ScienceQASettings)
    llava_bench: BenchSettings = field(default_factory=BenchSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; valid: {list(TASKS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# Keys an older eval config used, and what they are called now.
RENAMED = {"generation": "decoding"}


def renamed_key_error(key: str) -> ValueError:
    """The one error for a key that was renamed (no silent alias: two names would drift)."""
    new = RENAMED[key]
    return ValueError(
        f"{key}: the eval config's decoding block is now called {new!r} "
        f"(llava_lite.inference.DecodingSettings); rename {key}.* to {new}.*"
    )


def check_overrides(overrides: list[str]) -> None:
    """Command-line overrides that use a renamed key (``generation.max_new_tokens=8``,
    ``+generation=...``, ``~generation``) fail in one line before Hydra composes anything."""
    for item in overrides:
        if item.startswith("-"):  # Hydra's own flags (--cfg, --multirun, ...)
            continue
        key = item.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        if key in RENAMED:
            raise renamed_key_error(key)


def settings_from(cfg: DictConfig | dict[str, Any] | EvalSettings) -> EvalSettings:
    """Validate a Hydra / dict config against :class:`EvalSettings` (types, unknown keys; a
    renamed key gets one error naming its new name)."""
    if not isinstance(cfg, EvalSettings):
        for key in RENAMED:
            if key in cfg:
                raise renamed_key_error(key)
    return validated_settings(EvalSettings, cfg)
