"""``train(cfg)``: one training run from a composed Hydra config.

The same function backs the ``llava-lite-train`` console script and notebooks
(``compose_config([...])`` then ``train(cfg)``). Both stages go through it; they differ
only in config (``experiment=pretrain`` / ``experiment=finetune``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from llava_lite.data import LlavaDataModule, LlavaProcessor
from llava_lite.hydra_conf import config_dir
from llava_lite.modeling import LlavaModel
from llava_lite.training.callbacks import ProjectorCheckpoint
from llava_lite.training.module import LlavaLitModule
from llava_lite.training.strategies import full_state_dict, is_sharded

log = logging.getLogger(__name__)


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides (for notebooks and tests)."""
    with initialize_config_dir(config_dir=str(config_dir(config_name)), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Gradient accumulation that makes per-device batch x devices x accumulation = global batch."""
    per_step = per_device_batch_size * world_size
    if global_batch_size < per_step or global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of data.batch_size="
            f"{per_device_batch_size} x {world_size} device(s) = {per_step}"
        )
    return global_batch_size // per_step


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a name -> config mapping (``callbacks``, ``logger``); null entries are off."""
    if not node:
        return []
    return [instantiate(c) for c in node.values() if c is not None and "_target_" in c]


# Keys of the data config that are LlavaProcessor settings, not LlavaDataModule arguments.
PROCESSOR_KEYS = ("overlong",)


def build_datamodule(data_cfg: DictConfig, model: LlavaModel) -> LlavaDataModule:
    """The data config's ``LlavaDataModule`` with the processor of ``model``; the config's
    processor settings (``data.overlong``) go to the processor, the rest to the DataModule."""
    data_cfg = data_cfg.copy()
    with open_dict(data_cfg):
        settings = {k: data_cfg.pop(k) for k in PROCESSOR_KEYS if k in data_cfg}
    datamodule = instantiate(data_cfg)
    datamodule.attach_processor(LlavaProcessor.from_model(model, **settings))
    return datamodule


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Build module, data and trainer from ``cfg``, fit, and return metrics and artefact paths.

    ``callbacks`` are added to those ``cfg.callbacks`` names (for notebooks and tests).

    Returns ``{"metrics": {name: float}, "output_dir", "last_checkpoint", "best_checkpoint",
    "projector_path", "model_dir", "global_step", "accumulate_grad_batches", "empty_batches",
    "bad_samples", "truncated"}`` (paths are ``None`` where the run made none; ``bad_samples``
    counts skipped records by reason, ``truncated`` the records cut under ``data.overlong=truncate``).
    """
    cfg = cfg.copy()
    OmegaConf.resolve(cfg)  # fix ${now:...} and friends once for the whole run
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    module = instantiate(cfg.module)
    datamodule = build_datamodule(cfg.data, module.model)
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.get("global_batch_size"):
        steps = accumulation_steps(cfg.global_batch_size, cfg.data.batch_size, trainer.world_size)
        if trainer.accumulate_grad_batches not in (1, steps):
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} contradicts "
                f"global_batch_size={cfg.global_batch_size} (which needs {steps}); set one of them"
            )
        trainer.accumulate_grad_batches = steps
    if trainer.is_global_zero:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        log.info(
            "stage %s: global batch %d = %d per device x %d device(s) x %d accumulation",
            cfg.module.stage,
            cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches,
            cfg.data.batch_size,
            trainer.world_size,
            trainer.accumulate_grad_batches,
        )

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    ckpt_cb = trainer.checkpoint_callback
    model_dir = None
    if cfg.get("export_model"):  # every rank: gathering shards is a collective
        exported = _export(trainer, module, output_dir)
        model_dir = str(exported) if exported else None
    projector_path = next((c.path for c in trainer.callbacks if isinstance(c, ProjectorCheckpoint)), None)
    return {
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "output_dir": str(output_dir),
        "last_checkpoint": (ckpt_cb.last_model_path or None) if ckpt_cb else None,
        "best_checkpoint": (ckpt_cb.best_model_path or None) if ckpt_cb else None,
        "projector_path": str(projector_path) if projector_path and projector_path.is_file() else None,
        "model_dir": model_dir,
        "global_step": trainer.global_step,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "empty_batches": module.empty_batches,
        "bad_samples": datamodule.bad_sample_counts("train"),
        "truncated": datamodule.truncated_count("train"),
    }


def _export(trainer: L.Trainer, module: LlavaLitModule, output_dir: Path) -> Path | None:
    """Save the final ``LlavaModel`` from rank 0 (``None`` elsewhere); every rank calls it.

    FSDP / FSDP2 gather the whole weights from every rank's shard into an unsharded copy on
    rank 0's CPU. DeepSpeed keeps the float32 master weights in its optimiser (ZeRO-2's module
    parameters are views into its flat buffers, ZeRO-3's are partitioned): a final checkpoint
    is written and consolidated (DeepSpeed's zero_to_fp32).
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if is_sharded(strategy):
        state = full_state_dict(strategy.model)  # every rank takes part; rank 0 gets the weights
        if not trainer.is_global_zero:
            return None
        module = type(module)(**module.hparams)
        module.load_state_dict(state)
    elif isinstance(strategy, DeepSpeedStrategy):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        final = output_dir / "checkpoints" / "final.ckpt"
        trainer.save_checkpoint(final)  # every rank writes its partition
        if not trainer.is_global_zero:
            return None
        consolidated = output_dir / "consolidated.ckpt"
        convert_zero_checkpoint_to_fp32_state_dict(str(final), str(consolidated))
        module = type(module).load_from_checkpoint(str(consolidated), map_location="cpu")
    elif not trainer.is_global_zero:
        return None
    return module.export_model(output_dir / "model")
