"""The demo's settings: typed views of ``conf/demo.yaml`` (``demo/full.yaml``, ``demo/quick.yaml``).

The YAML files hold every value; these dataclasses have no defaults, so a value lives in one
place and a typo in an override is an error that names the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass

from llava_lite.config import validated_settings
from llava_lite.synthetic.questions import QUESTION_TYPES, WORDINGS


@dataclass
class WorldSettings:
    image_size: int
    n_train: int
    n_val: int
    n_test: int
    captions_per_image: int


@dataclass
class TeacherSettings:
    samples_per_type: dict[str, int]
    short_answer_rate: float


@dataclass
class VisionPretrainSettings:
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    text_layers: int
    feature_layer: int
    region_weight: float
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float


@dataclass
class LLMWarmupSettings:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    template: str
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    max_tokens_per_row: int
    drill_turns: int
    drill_mix: dict[str, float]
    drill_pool: str
    long_answer_sample: float

    def __post_init__(self) -> None:
        if self.drill_pool not in WORDINGS:
            raise ValueError(f"llm.drill_pool={self.drill_pool!r}; valid: {list(WORDINGS)}")
        if unknown := sorted(set(self.drill_mix) - set(QUESTION_TYPES)):
            raise ValueError(f"llm.drill_mix has {unknown}; valid question types: {list(QUESTION_TYPES)}")
        _check_share("llm.long_answer_sample", self.long_answer_sample)


@dataclass
class StageSettings:
    steps: int
    lr: float
    batch_size: int


@dataclass
class FinetuneSettings(StageSettings):
    described_first: float

    def __post_init__(self) -> None:
        _check_share("stage2.described_first", self.described_first)


@dataclass
class EvalSettings:
    batch_size: int
    chat_images: int
    checked_chats: int


@dataclass
class DpoSettings:
    """Stage 3 (``--with-dpo``): pairs from the stage-2 model's own answers about training images,
    judged offline, then DPO (``experiment=demo_dpo``)."""

    enabled: bool
    images: int
    samples: int
    temperature: float
    margin: float
    max_new_tokens: int
    steps: int
    lr: float
    beta: float
    sft_weight: float
    batch_size: int

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError(f"dpo.samples={self.samples}; valid: 2 or more (a pair needs two answers)")


@dataclass
class DemoSettings:
    seed: int
    world: WorldSettings
    teacher: TeacherSettings
    vision: VisionPretrainSettings
    llm: LLMWarmupSettings
    stage1: StageSettings
    stage2: FinetuneSettings
    eval: EvalSettings
    dpo: DpoSettings


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r}; valid: a share in [0, 1]")


def demo_settings(overrides: Sequence[str] = (), quick: bool = False) -> DemoSettings:
    """Compose ``conf/demo.yaml`` (``demo=quick`` with ``quick``) with command-line style
    overrides, e.g. ``["seed=1", "llm.steps=1800"]``, and check it against :class:`DemoSettings`."""
    from llava_lite.training import compose_config  # Hydra + the training stack: only when asked

    cfg = compose_config([*(["demo=quick"] if quick else []), *overrides], config_name="demo")
    return validated_settings(DemoSettings, cfg)


def settings_count(settings: object) -> int:
    """How many settings a user can set: the leaves of the tree, a mapping (``drill_mix``) one."""
    if is_dataclass(settings):
        return sum(settings_count(getattr(settings, f.name)) for f in fields(settings))
    return 1
