"""Lightning callbacks specific to LLaVA training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from llava_lite.training.projector import save_projector

log = logging.getLogger(__name__)


class ProjectorCheckpoint(L.Callback):
    """Write the projector alone to ``path`` whenever Lightning checkpoints, and at train end.

    This is what stage 2 loads through ``model.init_projector_from``; the Lightning checkpoint
    beside it remains the thing to resume from. Parameters must be whole on rank 0 (single
    device, DDP, FSDP/ZeRO-2 with an unsharded projector); under ZeRO-3, extract the
    projector from the consolidated Lightning checkpoint instead.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_projector(pl_module.model.projector, self.path, pl_module.model.config.projector.type)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)
        if trainer.is_global_zero:
            log.info("projector weights written to %s", self.path)
