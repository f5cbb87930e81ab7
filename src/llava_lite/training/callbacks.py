"""Lightning callbacks specific to LLaVA training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

from llava_lite.training.projector import NEWLINE_KEY, save_projector
from llava_lite.training.strategies import full_state_dict, is_sharded

log = logging.getLogger(__name__)


class ProjectorCheckpoint(L.Callback):
    """Write the projector alone to ``path`` whenever Lightning checkpoints, and at train end.

    This is what stage 2 loads through ``model.init_projector_from``; the Lightning checkpoint
    beside it remains the thing to resume from. Weights come from the checkpoint's full state
    dict when it has one (FSDP's ``state_dict_type: full`` gathers one on rank 0); FSDP's and
    FSDP2's sharded checkpoints, and the end of a sharded run, gather them from every rank (a
    collective); otherwise they come from the module, unsharded on rank 0 (single device, DDP,
    ZeRO-2).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._written_at_step: int | None = None

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, state: dict[str, Any] | None) -> None:
        if trainer.is_global_zero:
            model = pl_module.model
            if not state:
                state = dict(model.projector.state_dict())
                if model.image_newline is not None:  # AnyRes: trained with the projector
                    state[NEWLINE_KEY] = model.image_newline.weight
            save_projector(state, self.path, model.config.projector.type)
        self._written_at_step = trainer.global_step

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        full = checkpoint.get("state_dict") or {}
        if any(isinstance(v, DTensor | ShardedTensor) for v in full.values()):  # every rank a shard
            full = full_state_dict(trainer.strategy.model)
        self._write(trainer, pl_module, _projector_state(full))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._written_at_step != trainer.global_step:
            sharded = is_sharded(trainer.strategy)
            state = _projector_state(full_state_dict(trainer.strategy.model)) if sharded else None
            self._write(trainer, pl_module, state)
        if trainer.is_global_zero:
            log.info("projector weights written to %s", self.path)


def _projector_state(full: dict[str, Any]) -> dict[str, Any]:
    """The projector's (and AnyRes newline's) weights out of the module's full state dict."""
    prefix = "model.projector."
    state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    if state and "model.image_newline.weight" in full:
        state[NEWLINE_KEY] = full["model.image_newline.weight"]
    return state
