"""``LlavaLitModule``: the thin Lightning wrapper around ``LlavaModel``.

It owns what only training needs: freezing by stage, optimiser groups and schedule,
the loss normalisation, logging.

The loss of an optimiser step is the mean over all trained tokens of that step, across
micro-batches (gradient accumulation) and ranks: each micro-batch contributes its summed
token loss divided by the step's trained tokens (``step_trained_tokens``, counted by the
loader a window ahead, summed over ranks), so short micro-batches weigh no more per token
than long ones. ``train/loss`` is that step loss; ``train/trained_tokens`` and
``train/samples`` are per optimiser step. Hyperparameters are plain config dicts (never modules), so
``LlavaLitModule.load_from_checkpoint(path)`` rebuilds the same model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from llava_lite.config import LlavaConfig
from llava_lite.modeling import IGNORE_INDEX, LlavaModel
from llava_lite.modeling.dtypes import resolve_dtype
from llava_lite.modeling.llava import VISUAL_INPUTS, ImageTokenMismatch, LossTerms
from llava_lite.modeling.llm import check_packed_attention
from llava_lite.modeling.load import load_pretrained
from llava_lite.training.freeze import (
    apply_lora,
    apply_stage,
    count_parameters,
    format_parameter_table,
)
from llava_lite.training.optim import build_adamw, build_cosine_schedule, param_groups
from llava_lite.training.projector import load_projector
from llava_lite.training.qlora import load_quant_state, merged_llm
from llava_lite.training.rng import rng_states, set_rng_states
from llava_lite.training.strategies import FSDP2Strategy, is_fsdp1, shard_fsdp2

log = logging.getLogger(__name__)

RNG_KEY = "llava_lite_rng_states"
EMPTY_BATCH_POLICIES = ("error", "skip")
FUSED_CROSS_ENTROPY = (None, "liger")
DEFAULT_OPTIMIZER: dict[str, Any] = {
    "lr": 2e-5,
    "component_lr": {},
    "weight_decay": 0.0,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
}


def loss_scale(trainer: L.Trainer) -> float:
    """What a micro-batch's share of the step loss is multiplied by so the step's gradient is exact.

    ``training_step`` wants the optimiser to see the gradient of (summed token losses) / (step
    tokens), but the frameworks rescale what it returns (paths under ``lightning/pytorch/`` of
    Lightning 2.6.6 and ``deepspeed/`` of DeepSpeed 0.19.8):

    - Lightning divides it by ``accumulate_grad_batches`` under every strategy
      (``loops/optimization/automatic.py:329`` passes it to ``ClosureResult``, which divides at :83).
    - DDP averages gradients over ranks, and so does DeepSpeed's ZeRO-1/2/3 by default
      (``gradient_allreduce_op: mean``, ``runtime/engine.py:542``; ``zero/stage_1_and_2.py:1687``,
      ``zero/stage3.py:1878``; ``gradient_predivide_factor`` only splits the division around the
      all-reduce). ZeRO-1/2 may sum instead (``gradient_allreduce_op: sum``; ZeRO-3 refuses it,
      ``runtime/config.py:694``).
    - DeepSpeed divides *again* by ``gradient_accumulation_steps``: Lightning calls
      ``engine.backward(loss)`` (``plugins/precision/deepspeed.py:117``), whose ``scale_wrt_gas``
      defaults to true (``runtime/engine.py:3413``), and sets that to ``accumulate_grad_batches``
      (``strategies/deepspeed.py:928``).
    """
    accumulate = trainer.accumulate_grad_batches
    scale = float(accumulate * trainer.world_size)
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        scale *= accumulate
        if (getattr(strategy, "config", None) or {}).get("gradient_allreduce_op") == "sum":
            scale /= trainer.world_size
    return scale


class LlavaLitModule(L.LightningModule):
    """Trains a ``LlavaModel`` built from ``model`` (a ``LlavaConfig`` dict) in one stage.

    Args:
        model: ``LlavaConfig`` fields; its ``init_projector_from`` (a stage-1 projector
            file) is loaded at fit start unless resuming from a checkpoint.
        stage: ``pretrain`` (projector only) or ``finetune`` (projector + LLM; the vision
            tower too when ``model.vision.freeze`` is false).
        optimizer: AdamW settings: ``lr``, ``component_lr`` (e.g. ``{projector: 2e-5}``),
            ``weight_decay``, ``betas``, ``eps``.
        warmup_ratio: share of optimiser steps with linear warmup before the cosine decay.
        lora: ``peft.LoraConfig`` fields to train the LLM through LoRA (finetune only); with
            ``model.llm.quantization`` set, QLoRA: LoRA on the 4-bit LLM, the only way it trains.
        init_from: a saved model folder (this library's, llava-hf or original LLaVA) that this
            stage starts from, config and weights; ``model`` is then not used. Later stages
            (preference tuning) start from a stage-2 folder this way.
        gradient_checkpointing: recompute LLM activations in backward to save memory
            (activation checkpointing).
        compile_llm: ``torch.compile`` the LLM's decoder (GPU; the first steps compile, and
            packed rows of new shapes recompile).
        fused_cross_entropy: ``liger`` computes head + loss at the trained positions with
            Liger kernel's fused linear cross-entropy (optional extra ``llava_lite[liger]``, GPU),
            so not even the trained positions' logits are stored; ``None`` is the plain loss.
        fp32_trainable: keep trained parameters in float32 (master weights for ``bf16-mixed``)
            while frozen parts stay in ``model.llm.dtype``; turn off for ``bf16-true`` runs.
        on_empty_batch: a batch with no trained token would give a NaN or zero loss;
            ``error`` raises, ``skip`` skips its optimiser step, counts it and logs the count
            as ``train/empty_batches`` (single-process only: ranks would desynchronise).
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        stage: str = "pretrain",
        optimizer: dict[str, Any] | None = None,
        warmup_ratio: float = 0.03,
        lora: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        fp32_trainable: bool = True,
        on_empty_batch: str = "error",
        compile_llm: bool = False,
        fused_cross_entropy: str | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if on_empty_batch not in EMPTY_BATCH_POLICIES:
            raise ValueError(f"on_empty_batch={on_empty_batch!r}; valid: {list(EMPTY_BATCH_POLICIES)}")
        if fused_cross_entropy not in FUSED_CROSS_ENTROPY:
            raise ValueError(
                f"module.fused_cross_entropy={fused_cross_entropy!r}; valid: {list(FUSED_CROSS_ENTROPY)}"
            )
        self.linear_cross_entropy = liger_linear_cross_entropy() if fused_cross_entropy == "liger" else None
        if lora and stage != "finetune":
            raise ValueError(f"LoRA trains the LLM, which stage {stage!r} keeps frozen; use stage 'finetune'")
        quantized = ((model or {}).get("llm") or {}).get("quantization") is not None
        if quantized and init_from:
            raise ValueError(
                "model.llm.quantization (QLoRA) loads the LLM from model.llm.name_or_path; module.init_from "
                "loads a saved folder in full precision: set one of them"
            )
        if quantized and stage == "finetune" and not lora:
            raise ValueError(
                "model.llm.quantization keeps the LLM's 4-bit weights frozen: stage 'finetune' trains it "
                "through LoRA only; set module.lora (experiment=finetune_qlora)"
            )
        self.save_hyperparameters()
        self.optimizer_cfg = {**DEFAULT_OPTIMIZER, **(optimizer or {})}

        if init_from:
            self.model = load_pretrained(init_from).train()  # loaded for inference, in eval mode
            self.model.config.init_projector_from = None  # its stage-1 file is in the weights already
        elif model is not None:
            self.model = LlavaModel(LlavaConfig.from_dict(dict(model)))
        else:
            raise ValueError(
                "module.model (a model config) or module.init_from (a saved model folder) is needed"
            )
        self.init_projector_from = self.model.config.init_projector_from
        if gradient_checkpointing:
            self.model.llm.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        self.trained = apply_stage(
            self.model.components(), stage, train_vision=not self.model.config.vision.freeze
        )
        if lora:
            self.model.llm = apply_lora(self.model.llm, lora)
        if fp32_trainable:
            # Optimiser updates (lr x grad ~ 1e-8 relative) vanish in bf16 weights.
            for p in self.model.parameters():
                if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                    p.data = p.data.float()
        if compile_llm:
            self.model.llm.get_decoder().compile()
        # FSDP1 keeps these parameter objects but makes them flat views of shards: remember shapes
        self._param_ndims = {id(p): p.ndim for p in self.model.parameters()}
        self.empty_batches = 0
        self._batch_start = 0.0
        self._step_loss: torch.Tensor | float = 0.0  # summed token loss of this optimiser step (local)
        self._step_counts = [0, 0]  # trained tokens, samples of this optimiser step (local)

    # ---- lifecycle -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        packing = getattr(datamodule, "packing", None)
        if stage == "fit" and packing is not None and packing.enabled:
            # before any step: never silent cross-sample attention
            check_packed_attention(self.model.llm, rows_per_batch=1 if packing.one_row else 2)
        # A resumed run takes every weight from its checkpoint, so the stage-1 file is only
        # read when starting fresh.
        if stage == "fit" and self.init_projector_from and self.trainer.ckpt_path is None:
            load_projector(
                self.model.projector,
                self.init_projector_from,
                self.model.config.projector.type,
                self.model.image_newline,
            )
            log.info("projector initialised from %s", self.init_projector_from)
        elif (
            stage == "fit"
            and self.hparams.stage == "finetune"
            and not (self.init_projector_from or self.hparams.init_from)
        ):
            log.warning(
                "finetune without model.init_projector_from: the projector starts from random weights"
            )

    def configure_model(self) -> None:
        # FSDP2 shards in place, here; the other strategies wrap the module themselves.
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDP2Strategy):
            # training_step calls loss_terms, not forward: it must gather the root's shards too
            blocks = shard_fsdp2(self.model, strategy, methods=("loss_terms",))
            if blocks is not None:
                log.info("FSDP2: %d transformer blocks and the root sharded", blocks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not checkpoint the global RNGs; without them a resumed run reshuffles
        # map-style data and redraws dropout masks differently from an uninterrupted one.
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only when a Trainer resumes a fit: load_from_checkpoint for inference must not reset
        # the caller's RNGs. Restored at once, since the train DataLoader's iterator (which
        # draws its base seed) may be created before any later hook runs.
        if RNG_KEY in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            set_rng_states(checkpoint[RNG_KEY])
        if self.model.config.llm.quantization is not None:  # QLoRA: bitsandbytes cannot load its own
            load_quant_state(self, checkpoint["state_dict"])

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:
            table = format_parameter_table(count_parameters(self.model.components()))
            log.info("stage %r, trainable components %s\n%s", self.hparams.stage, sorted(self.trained), table)

    # ---- steps -----------------------------------------------------------------------
    def _has_trained_tokens(self, batch: dict[str, Any], batch_idx: int, split: str) -> bool:
        # The LM loss shifts labels by one, so only labels[:, 1:] are trained.
        n_trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if n_trained:
            return True
        if self.hparams.on_empty_batch == "error":
            raise ValueError(
                f"{split} batch {batch_idx} (global step {self.global_step}) has no trained token: every "
                "label is -100 (prompts longer than model_max_length, or empty answers). Fix the data or "
                "set module.on_empty_batch=skip"
            )
        self.empty_batches += 1
        log.warning(
            "skipping %s batch %d with no trained token (%d so far)", split, batch_idx, self.empty_batches
        )
        return False

    def _loss_terms(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Summed token loss of the batch and its trained-token count (padded or packed rows)."""
        terms = self._forward(self.model, batch)
        return terms.loss_sum, terms.num_tokens

    def _forward(self, model: LlavaModel, batch: dict[str, Any]) -> LossTerms:
        """``model.loss_terms`` on the batch, a slot mismatch naming its samples, the count checked."""
        try:
            terms = model.loss_terms(
                input_ids=batch["input_ids"],  # [B, T]
                labels=batch["labels"],  # [B, T]
                attention_mask=batch.get("attention_mask"),  # [B, T], None for packed rows
                position_ids=batch.get("position_ids"),  # [B, T] for packed rows
                linear_cross_entropy=self.linear_cross_entropy,
                # pixel_values [N(_tiles), 3, H, W], image_sizes [N, 2], image_tiled [N], videos
                **{k: batch.get(k) for k in VISUAL_INPUTS},
            )
        except ImageTokenMismatch as err:
            ids = list(batch.get("ids", []))
            padded = batch.get("position_ids") is None and err.row is not None and err.row < len(ids)
            where = (
                f"sample {ids[err.row]!r}" if padded else f"a batch of samples {ids}"
            )  # packed rows hold several
            raise ImageTokenMismatch(f"{where}: {err}", err.row) from None
        expected = batch.get("trained_tokens", terms.num_tokens)
        if terms.num_tokens != expected:
            raise RuntimeError(
                f"the loss trains {terms.num_tokens} tokens but the collator counted {expected}"
            )
        return terms

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return values
        return self.trainer.strategy.reduce(values.to(self.device), reduce_op="sum").cpu()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if not self._has_trained_tokens(batch, batch_idx, "train"):
            self.log("train/empty_batches", float(self.empty_batches))
            return None
        loss_sum, n_tokens = self._loss_terms(batch)
        # Without the loader's window count (a foreign loader), each micro-batch's own mean is used.
        own = n_tokens * self.trainer.accumulate_grad_batches
        local = torch.tensor([float(batch.get("step_trained_tokens", own))], dtype=torch.float64)
        step_tokens = float(self._sum_over_ranks(local)[0])
        self._step_loss = self._step_loss + loss_sum.detach()
        self._step_counts[0] += n_tokens
        self._step_counts[1] += len(batch.get("ids", []))
        # Undo the strategy's rescaling (``loss_scale``) so the step's gradient is that of
        # (sum of all token losses) / (all trained tokens).
        return loss_sum * (loss_scale(self.trainer) / step_tokens)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        totals = torch.tensor([float(self._step_loss), *self._step_counts], dtype=torch.float64)
        loss_sum, tokens, samples = self._sum_over_ranks(totals).tolist()
        self._step_loss, self._step_counts = 0.0, [0, 0]
        if tokens:
            self.log("train/loss", loss_sum / tokens, prog_bar=True, batch_size=1)
        self.log("train/trained_tokens", tokens, batch_size=1)
        self.log("train/samples", samples, batch_size=1)
        self._log_learning_rates(optimizer)

    def _log_learning_rates(self, optimizer: torch.optim.Optimizer) -> None:
        """``train/lr_<part>`` per optimiser group pair (a no-decay group has its twin's lr)."""
        for group in optimizer.param_groups:
            if not group["name"].endswith("/no_decay"):
                self.log(f"train/lr_{group['name']}", group["lr"], batch_size=1)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_start
        mask = batch.get("attention_mask")
        if mask is not None:
            tokens = int(mask.sum())
        else:  # packed rows: the samples' tokens, without the row-end padding
            tokens = int(batch.get("real_tokens", batch["input_ids"].numel()))
        if elapsed > 0:
            self.log("train/tokens_per_s", tokens / elapsed, batch_size=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not self._has_trained_tokens(batch, batch_idx, "val"):
            return
        loss_sum, n_tokens = self._loss_terms(batch)
        # weighted by trained tokens, so the epoch value is the token mean over the whole split
        self.log("val/loss", loss_sum / n_tokens, prog_bar=True, sync_dist=True, batch_size=n_tokens)

    # ---- optimisation ------------------------------------------------------------------
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's FSDP precision refuses norm clipping; FSDP's own clip_grad_norm_ takes the
        # norm over every rank's shards, as a single process would.
        wrapped = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_fsdp1(wrapped):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optimizer_cfg
        groups = param_groups(
            self.model.components(), cfg["lr"], cfg["weight_decay"], cfg["component_lr"], self._param_ndims
        )
        optimizer = build_adamw(groups, cfg["lr"], betas=cfg["betas"], eps=cfg["eps"])
        total = self.trainer.estimated_stepping_batches
        scheduler = build_cosine_schedule(optimizer, total, self.hparams.warmup_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- export ------------------------------------------------------------------------
    def export_model(self, path: str | Path) -> Path:
        """Save the trained ``LlavaModel`` (LoRA merged into the LLM, a 4-bit LLM dequantised first)
        for generation and eval; the saved model is full precision."""
        if self.hparams.lora or self.model.config.llm.quantization is not None:
            self.model.llm = merged_llm(self.model.llm, resolve_dtype(self.model.config.llm.dtype))
            self.model.config.llm.quantization = None
        self.model.save_pretrained(path)
        return Path(path)


def liger_linear_cross_entropy() -> Any:
    """Liger kernel's fused linear cross-entropy as ``(weight, hidden, targets) -> summed loss``."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as err:
        raise ImportError(
            "module.fused_cross_entropy=liger needs Liger kernel: pip install 'llava_lite[liger]' (GPU with Triton)"
        ) from err
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    return lambda weight, hidden, targets: loss(weight, hidden, targets)
