"""``ObjectiveModule`` and ``fit_objective``: the library's recipe for a custom objective.

Parts that are not a ``LlavaModel`` (the demo's tiny CLIP and its tiny LLM warm-up) still
train the way the LLaVA stages do: the optimiser groups of ``param_groups`` (per part, and
no weight decay on parameters with fewer than 2 dimensions: biases and normalisation
weights; 2-D embedding tables are decayed like any matrix), ``build_adamw``, the linear
warm-up then cosine to 0 of ``build_cosine_schedule``, gradient-norm clipping at 1.0, and
Lightning's ``Trainer`` running the loop. Only the loss differs, so the caller passes it.

Gradient accumulation: one batch is one optimiser step. A caller with micro-batches passes
the step's list of them and the objective adds their losses into one graph (e.g. each
micro-batch's summed token loss divided by the whole step's trained tokens), so a single
backward gives the step's gradient. Why not Lightning's ``accumulate_grad_batches`` or manual
optimisation: Lightning divides each micro-batch's loss by the micro-batch count, a mean of
means that weighs short micro-batches' tokens more (``LlavaLitModule`` has to undo it), and
manual optimisation would re-write the clipping and schedule steps this module exists to
share. The cost is that a step's activations are held at once, which is nothing at the
demo's sizes; a packed step (``llava_lite.data.packing``) is one forward anyway.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from llava_lite.training.optim import build_adamw, build_cosine_schedule, param_groups

# (one step's batch) -> (loss to minimise, values to record for the step, e.g. loss terms)
Objective = Callable[[Any], tuple[Tensor, tuple[float | Tensor, ...]]]
# (step, *values) after each optimiser step
Progress = Callable[..., None]

# Lightning's own loggers: their INFO lines ("GPU available: ...", "`Trainer.fit` stopped") are
# banners here, since the caller prints its own progress.
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def check_steps(steps: int, warmup_steps: int) -> None:
    """``steps >= 1`` optimiser steps, of which ``0 <= warmup_steps < steps`` warm up."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; valid: an integer >= 1")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps={warmup_steps!r}; valid: an integer in [0, steps={steps})")


class ObjectiveModule(L.LightningModule):
    """Trains the parameters of ``parts`` on ``objective`` with the library's optimiser and schedule.

    Args:
        parts: named modules, trained together; each name gets its own decay / no-decay group
            pair (``param_groups``). Parameters with ``requires_grad=False`` stay out, as in
            ``param_groups``; a part shared by two names is trained once.
        objective: ``batch -> (loss, values)``; ``loss`` is the scalar to minimise for the
            whole optimiser step, ``values`` the numbers to record (floats or one-element
            tensors, e.g. each loss term).
        lr: peak learning rate, reached after ``warmup_steps``.
        weight_decay: AdamW decay for the parameters with 2 or more dimensions.
        warmup_steps: linear warm-up from 0; then cosine to 0 at the trainer's ``max_steps``.
        betas, eps: AdamW settings (``build_adamw``'s defaults).
        progress: called as ``progress(step, *values)`` after each optimiser step (and its
            schedule step), ``step`` counting from 1.

    ``losses`` holds ``(step, *values)`` per optimiser step of the latest fit.
    """

    def __init__(
        self,
        parts: Mapping[str, nn.Module],
        objective: Objective,
        *,
        lr: float,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        progress: Progress | None = None,
    ) -> None:
        super().__init__()
        if not parts:
            raise ValueError("parts={}; valid: at least one named nn.Module")
        if not lr > 0:
            raise ValueError(f"lr={lr!r}; valid: a number > 0")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps!r}; valid: an integer >= 0")
        self.parts = nn.ModuleDict(dict(parts))
        self.objective = objective
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.betas, self.eps = betas, eps
        self.progress = progress
        self.losses: list[tuple[float, ...]] = []  # (step, *values)

    def on_fit_start(self) -> None:
        self.losses = []

    def on_train_start(self) -> None:
        # Lightning keeps each submodule's mode as the caller left it (eval after scoring, say);
        # training means dropout and the like on.
        self.parts.train()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, values = self.objective(batch)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"objective loss={shape}; valid: a 0-dimensional tensor")
        self.losses.append((self.global_step + 1, *(float(v) for v in values)))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning has stepped the optimiser and the schedule by now.
        if self.progress is not None:
            self.progress(*self.losses[-1])

    def configure_optimizers(self) -> dict[str, Any]:
        steps = self.trainer.max_steps
        check_steps(steps, self.warmup_steps)
        groups = param_groups(dict(self.parts.items()), self.lr, self.weight_decay)
        optimizer = build_adamw(groups, self.lr, betas=self.betas, eps=self.eps)
        scheduler = build_cosine_schedule(optimizer, steps, warmup_steps=self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _Steps(IterableDataset):
    """The first ``steps`` of the caller's batches, each one optimiser step, taken as they are.

    Exactly ``steps``: the caller's iterator is not advanced past the last step (Lightning
    fetches one batch ahead), and a source that runs short fails instead of ending the fit.
    """

    def __init__(self, batches: Iterable[Any], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[Any]:
        source = iter(self.batches)
        for n in range(self.steps):
            try:
                yield next(source)
            except StopIteration:
                raise ValueError(
                    f"batches ran out after {n} batches; valid: at least steps={self.steps} "
                    "(an endless iterable)"
                ) from None


def _as_is(batch: Any) -> Any:
    """The caller's batch is already built (``DataLoader(batch_size=None)`` hands items one by one)."""
    return batch


@contextmanager
def quiet_lightning(accelerator: str) -> Iterator[None]:
    """Without Lightning's banners and its two notices that do not apply to a caller's stream.

    INFO lines of Lightning's loggers are held back (warnings and errors pass); the warnings
    dropped are only "does not have many workers" (the caller builds batches in-process on
    purpose) and, when the caller asked for the CPU, "GPU available but not used".
    """
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "The 'train_dataloader' does not have many workers", PossibleUserWarning
            )
            if accelerator == "cpu":
                warnings.filterwarnings("ignore", "GPU available but not used", PossibleUserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def fit_objective(
    module: ObjectiveModule,
    batches: Iterable[Any],
    steps: int,
    *,
    seed: int | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
    gradient_clip_val: float | None = 1.0,
) -> ObjectiveModule:
    """Train ``module`` for ``steps`` optimiser steps, one per batch of ``batches``; return it in eval mode.

    ``batches`` yields at least ``steps`` ready batches (an endless generator is typical); each
    goes to the objective as it is, on the device Lightning moves it to. ``seed`` seeds torch,
    numpy and ``random`` first (for dropout and any sampling inside the objective; the parts
    were built by the caller already). ``gradient_clip_val`` clips the global gradient norm
    (``None``: no clipping). One device, no logger, checkpoints, progress bar or summary:
    ``module.losses`` and ``progress`` report the steps. The parts train in train mode
    whatever mode they came in, and are left in eval mode for the caller's next use (scoring,
    saving, freezing into a larger model); a later fit sets train mode again.
    """
    check_steps(steps, module.warmup_steps)
    with quiet_lightning(accelerator):
        if seed is not None:
            L.seed_everything(seed, verbose=False)
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_steps=steps,
            max_epochs=-1,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm="norm",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        loader = DataLoader(_Steps(batches, steps), batch_size=None, collate_fn=_as_is)
        trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != steps:
        raise RuntimeError(f"fit stopped at step {trainer.global_step} of steps={steps}")
    return module.eval()
