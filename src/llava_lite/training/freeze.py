"""Which parameters train in which stage, decided from config and logged.

The stage is an explicit config value (``pretrain`` | ``finetune``), never inferred from a
path. Frozen parameters get ``requires_grad=False`` so the optimiser never sees them (no
AdamW state for a frozen 7B LLM in stage 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from llava_lite.modeling.llm import is_quantized

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune")
COMPONENTS = ("vision_tower", "projector", "llm")


def trainable_components(stage: str, train_vision: bool = False) -> set[str]:
    """Component names that train in ``stage``.

    ``pretrain`` (LLaVA stage 1, feature alignment): only the projector.
    ``finetune`` (stage 2): projector and LLM, plus the vision tower if ``train_vision``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}; valid: {list(STAGES)}")
    if stage == "pretrain":
        if train_vision:
            raise ValueError(
                "stage 'pretrain' trains only the projector; model.vision.freeze=false is only "
                "meaningful with stage 'finetune'"
            )
        return {"projector"}
    return {"projector", "llm", "vision_tower"} if train_vision else {"projector", "llm"}


def apply_stage(components: dict[str, nn.Module], stage: str, train_vision: bool = False) -> set[str]:
    """Set ``requires_grad`` on every parameter of every component; returns the trained names."""
    missing = sorted(set(COMPONENTS) - set(components))
    if missing:
        raise ValueError(f"model.components() lacks {missing}; expected {list(COMPONENTS)}")
    trained = trainable_components(stage, train_vision)
    for name, module in components.items():
        for p in module.parameters():
            # 4-bit (QLoRA) weights are integer storage: they never take gradients
            p.requires_grad_(name in trained and p.is_floating_point())
    return trained


def apply_lora(llm: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """Wrap the LLM with LoRA adapters (``peft``); only adapter weights stay trainable.

    ``lora`` keys are ``peft.LoraConfig`` fields (``r``, ``lora_alpha``, ``lora_dropout``,
    ``target_modules``, ...). ``peft`` is the optional extra ``llava_lite[lora]``.
    A 4-bit LLM (QLoRA) first goes through peft's ``prepare_model_for_kbit_training``, as
    LLaVA's ``--bits 4`` does: every base weight frozen, the full-precision ones upcast to
    float32; then, as LLaVA's ``train.py``, the embeddings and LM head go back to the LLM's dtype
    (norms stay float32), so the residual stream and logits are not float32 in a bf16 run.
    """
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError as err:  # pragma: no cover - peft is in the dev extra
        raise ImportError("LoRA needs peft: pip install 'llava_lite[lora]'") from err
    config = LoraConfig(task_type="CAUSAL_LM", **lora)
    if is_quantized(llm):
        dtype = llm.get_input_embeddings().weight.dtype
        # Checkpointing is the module's own setting (non-reentrant, so inputs need no grad hook).
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
        for embeddings in (llm.get_input_embeddings(), llm.get_output_embeddings()):
            if embeddings is not None:
                embeddings.to(dtype)
    return get_peft_model(llm, config)


@dataclass(frozen=True)
class ParamCount:
    """Trainable and frozen parameter counts of one component."""

    component: str
    trainable: int
    frozen: int


def count_parameters(components: dict[str, nn.Module]) -> list[ParamCount]:
    """Per-component counts; a parameter shared by two components is counted once."""
    seen: set[int] = set()
    rows = []
    for name, module in components.items():
        trainable = frozen = 0
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        rows.append(ParamCount(name, trainable, frozen))
    return rows


def format_parameter_table(rows: list[ParamCount]) -> str:
    """A fixed-width table for the log: component | trainable | frozen."""
    header = f"{'component':<14}{'trainable':>14}{'frozen':>14}"
    lines = [header, "-" * len(header)]
    lines += [f"{r.component:<14}{r.trainable:>14,}{r.frozen:>14,}" for r in rows]
    total_t = sum(r.trainable for r in rows)
    total_f = sum(r.frozen for r in rows)
    lines += ["-" * len(header), f"{'total':<14}{total_t:>14,}{total_f:>14,}"]
    return "\n".join(lines)
