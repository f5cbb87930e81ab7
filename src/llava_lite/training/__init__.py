"""Two-stage LLaVA training on Lightning: the module, freezing, optimiser, and ``train(cfg)``."""

from llava_lite.training.callbacks import ProjectorCheckpoint
from llava_lite.training.freeze import (
    STAGES,
    ParamCount,
    apply_lora,
    apply_stage,
    count_parameters,
    format_parameter_table,
    trainable_components,
)
from llava_lite.training.module import LlavaLitModule
from llava_lite.training.objective import ObjectiveModule, fit_objective
from llava_lite.training.optim import build_adamw, build_cosine_schedule, param_groups
from llava_lite.training.projector import PROJECTOR_FILE, load_projector, save_projector
from llava_lite.training.run import accumulation_steps, build_datamodule, compose_config, config_dir, train

__all__ = [
    "PROJECTOR_FILE",
    "STAGES",
    "LlavaLitModule",
    "ObjectiveModule",
    "ParamCount",
    "ProjectorCheckpoint",
    "accumulation_steps",
    "apply_lora",
    "apply_stage",
    "build_adamw",
    "build_cosine_schedule",
    "build_datamodule",
    "compose_config",
    "config_dir",
    "count_parameters",
    "fit_objective",
    "format_parameter_table",
    "load_projector",
    "param_groups",
    "save_projector",
    "train",
    "trainable_components",
]
