"""AdamW parameter groups per component and the cosine-with-warmup schedule.

One group pair per component (decay / no decay) so each component has its own learning
rate, like LLaVA's ``mm_projector_lr``, and the LR monitor shows them by name.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup


def param_groups(
    components: dict[str, nn.Module],
    lr: float,
    weight_decay: float = 0.0,
    component_lr: dict[str, float | None] | None = None,
    ndims: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped as ``{component}`` and ``{component}/no_decay``.

    Biases and normalisation weights (every parameter with fewer than 2 dimensions) get no
    weight decay. ``component_lr`` maps a component name to its own learning rate; missing or
    ``None`` means ``lr``. Frozen parameters are left out, so they carry no optimiser state.
    ``ndims`` (``id(parameter) -> ndim``, taken before sharding) gives the dimensions where
    FSDP1 has turned every parameter into a flat 1-D view of its shard.
    """
    ndims = ndims or {}
    component_lr = component_lr or {}
    unknown = sorted(set(component_lr) - set(components))
    if unknown:
        raise ValueError(f"learning rate given for unknown components {unknown}; valid: {sorted(components)}")
    seen: set[int] = set()
    groups: list[dict[str, Any]] = []
    for name, module in components.items():
        decay, no_decay = [], []
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if ndims.get(id(p), p.ndim) >= 2 else no_decay).append(p)
        group_lr = component_lr.get(name)
        group_lr = lr if group_lr is None else group_lr
        if decay:
            groups.append({"name": name, "params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append(
                {"name": f"{name}/no_decay", "params": no_decay, "lr": group_lr, "weight_decay": 0.0}
            )
    if not groups:
        raise ValueError("no trainable parameters: every component is frozen")
    return groups


def build_adamw(
    groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (each group carries its own lr and weight decay).

    On the CPU, torch's default is the one-tensor-at-a-time update; the multi-tensor
    (``foreach``) one computes the same step and took a tenth of a tiny model's step time
    off. Elsewhere torch's own choice stands.
    """
    on_cpu = all(p.device.type == "cpu" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True if on_cpu else None)


def build_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int | float,
    warmup_ratio: float = 0.03,
    *,
    warmup_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``ceil(warmup_ratio * total_steps)`` optimiser steps (or exactly
    ``warmup_steps``, when given), then cosine to 0."""
    if not math.isfinite(total_steps) or total_steps <= 0:
        raise ValueError(
            f"cannot size the LR schedule: {total_steps} total optimiser steps. Streaming (unsized) data "
            "needs trainer.max_steps"
        )
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio={warmup_ratio}; must be in [0, 1)")
    total = int(total_steps)
    if warmup_steps is None:
        warmup_steps = math.ceil(warmup_ratio * total)
    elif not 0 <= warmup_steps < total:
        raise ValueError(f"warmup_steps={warmup_steps}; valid: an integer in [0, total_steps={total})")
    return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total)
