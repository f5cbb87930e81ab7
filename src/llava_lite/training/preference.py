"""Stage 3: preference tuning (DPO) of a stage-2 model, on pairs of answers to the same prompt.

The objective is DPO's sigmoid loss on the log-ratio margin between policy and reference,
with the answers' log-probabilities summed over their trained tokens (only the answer turn,
exact labels, as stage 2 trains it). ``sft_weight`` adds the chosen answers' token-mean
cross-entropy (the MPO / RPO mix that keeps the chosen answer likely). These are the
definitions of TRL's ``DPOTrainer`` (``loss_type=["sigmoid", "sft"]``), matched to 1e-5 in
the tests.

Normalisation over an optimiser step: the DPO term is the mean over the step's pairs and the
SFT term the mean over the step's chosen tokens, across micro-batches and ranks, as the
stage-2 loss is a mean over the step's trained tokens (``LlavaLitModule``).

The reference (``llava_lite.training.reference``) is a frozen copy of the starting model,
the LoRA-disabled base, or log-probabilities computed once and cached beside the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llava_lite.training.logps import sequence_logps
from llava_lite.training.module import LlavaLitModule, loss_scale
from llava_lite.training.reference import REFERENCES, Reference

log = logging.getLogger(__name__)

# Summed per optimiser step, then reported: see PreferenceLitModule.on_before_optimizer_step.
_STEP_SUMS = ("dpo", "sft", "chosen_tokens", "pairs", "reward_chosen", "reward_rejected", "reward_right")


@dataclass(frozen=True)
class PreferenceSettings:
    """``module.preference``: ``beta`` (DPO's temperature), ``sft_weight`` (0: pure DPO),
    ``reference`` (``copy`` | ``lora_base`` | ``cached``) and, for ``cached``, ``cache_file``
    (default: beside the first training file)."""

    beta: float = 0.1
    sft_weight: float = 0.0
    reference: str = "copy"
    cache_file: str | None = None

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"module.preference.beta={self.beta!r}; valid: a number > 0")
        if not self.sft_weight >= 0:
            raise ValueError(f"module.preference.sft_weight={self.sft_weight!r}; valid: a number >= 0")
        if self.reference not in REFERENCES:
            raise ValueError(f"module.preference.reference={self.reference!r}; valid: {list(REFERENCES)}")


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO (sigmoid) losses and the implicit rewards ``beta * (policy - reference)``.

    Each argument is ``[P]`` summed log-probabilities of the answers; returns ``(losses [P],
    chosen_rewards [P], rejected_rewards [P])``, the rewards detached.
    """
    chosen_ratio = chosen - ref_chosen  # [P]
    rejected_ratio = rejected - ref_rejected  # [P]
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))  # [P]
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class PreferenceLitModule(LlavaLitModule):
    """DPO on preference pairs (``LlavaDataModule(preference=True)``), from a stage-2 model.

    Args (beyond ``LlavaLitModule``'s, whose ``stage`` is ``finetune`` here):
        preference: :class:`PreferenceSettings` fields.

    Logged per optimiser step: ``train/loss`` (the step's objective), ``train/dpo_loss``,
    ``train/sft_loss``, ``train/rewards_chosen``, ``train/rewards_rejected``,
    ``train/reward_margin``, ``train/reward_accuracy`` and ``train/pairs``.
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        stage: str = "finetune",
        preference: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("fused_cross_entropy"):
            raise ValueError("module.fused_cross_entropy computes no logits, which DPO needs: set it to null")
        super().__init__(model, stage, **kwargs)
        self.settings = PreferenceSettings(**(preference or {}))
        self.reference = Reference(
            self.settings.reference, self.model, self.trained, self.settings.cache_file
        )
        self._sums = dict.fromkeys(_STEP_SUMS, 0.0)

    # ---- the reference ----------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        if not getattr(datamodule, "preference", False):
            raise ValueError("preference tuning reads preference pairs: set data.preference=true")
        self.reference.prepare(self, datamodule, resuming=self.trainer.ckpt_path is not None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.reference.drop_from(checkpoint["state_dict"])  # rebuilt from the starting model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reference.fill_in(checkpoint["state_dict"], self.state_dict())

    # ---- steps ------------------------------------------------------------------------
    def _pair_terms(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-pair losses and rewards of the batch, and the chosen answers' summed NLL."""
        logps, chosen_nll = sequence_logps(self.model, batch, self._forward)
        ref = self.reference.logps(self, batch, lambda model: sequence_logps(model, batch, self._forward)[0])
        pairs = int(batch["pairs"])
        losses, reward_chosen, reward_rejected = dpo_loss(
            logps[:pairs], logps[pairs:], ref[:pairs].to(logps), ref[pairs:].to(logps), self.settings.beta
        )
        return {"losses": losses, "chosen_nll": chosen_nll, "rc": reward_chosen, "rr": reward_rejected}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._has_trained_tokens(batch, batch_idx, "train"):
            self.log("train/empty_batches", float(self.empty_batches))
            return None
        t = self._pair_terms(batch)
        pairs, chosen_tokens = int(batch["pairs"]), int(batch["chosen_tokens"])
        accumulate = self.trainer.accumulate_grad_batches
        local = torch.tensor(
            [
                float(batch.get("step_pairs", pairs * accumulate)),
                float(batch.get("step_chosen_tokens", chosen_tokens * accumulate)),
            ],
            dtype=torch.float64,
        )
        step_pairs, step_chosen = self._sum_over_ranks(local).tolist()
        loss = t["losses"].sum() / step_pairs
        if self.settings.sft_weight:
            loss = loss + self.settings.sft_weight * t["chosen_nll"] / step_chosen
        for key, value in (
            ("dpo", t["losses"].detach().sum()),
            ("sft", t["chosen_nll"].detach()),
            ("chosen_tokens", chosen_tokens),
            ("pairs", pairs),
            ("reward_chosen", t["rc"].sum()),
            ("reward_rejected", t["rr"].sum()),
            ("reward_right", (t["rc"] > t["rr"]).sum()),
        ):
            self._sums[key] += float(value)
        # As in stage 2: undo the strategy's rescaling of the returned loss.
        return loss * loss_scale(self.trainer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        totals = torch.tensor([self._sums[k] for k in _STEP_SUMS], dtype=torch.float64)
        sums = dict(zip(_STEP_SUMS, self._sum_over_ranks(totals).tolist(), strict=True))
        self._sums = dict.fromkeys(_STEP_SUMS, 0.0)
        pairs = max(sums["pairs"], 1.0)
        dpo, sft = sums["dpo"] / pairs, sums["sft"] / max(sums["chosen_tokens"], 1.0)
        self.log("train/loss", dpo + self.settings.sft_weight * sft, prog_bar=True, batch_size=1)
        self.log("train/dpo_loss", dpo, batch_size=1)
        self.log("train/sft_loss", sft, batch_size=1)
        self.log("train/rewards_chosen", sums["reward_chosen"] / pairs, batch_size=1)
        self.log("train/rewards_rejected", sums["reward_rejected"] / pairs, batch_size=1)
        self.log(
            "train/reward_margin", (sums["reward_chosen"] - sums["reward_rejected"]) / pairs, batch_size=1
        )
        self.log("train/reward_accuracy", sums["reward_right"] / pairs, prog_bar=True, batch_size=1)
        self.log("train/pairs", sums["pairs"], batch_size=1)
        self._log_learning_rates(optimizer)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._has_trained_tokens(batch, batch_idx, "val"):
            return
        t = self._pair_terms(batch)
        pairs = int(batch["pairs"])
        self.log("val/loss", t["losses"].mean(), prog_bar=True, sync_dist=True, batch_size=pairs)
        right = (t["rc"] > t["rr"]).float().mean()
        self.log("val/reward_accuracy", right, sync_dist=True, batch_size=pairs)
