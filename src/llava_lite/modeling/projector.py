"""Projectors: vision features -> LLM embedding space.

A plain registry with exact keys. ``mlp{N}x_gelu`` is a family, so it is matched by a
full regex (``mlp2x_gelu`` yes, ``mlp2x_gelu_v2`` or ``xmlp2x_gelu`` no), never by substring.
The MLP is an ``nn.Sequential`` of Linear/GELU so its state-dict keys (``0.weight``,
``2.weight``, ...) match the original LLaVA ``mm_projector`` checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

_MLP_GELU = re.compile(r"mlp([1-9][0-9]*)x_gelu")


def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def _identity(in_dim: int, out_dim: int) -> nn.Module:
    if in_dim != out_dim:
        raise ValueError(
            f"projector 'identity' needs vision hidden size == LLM hidden size, got {in_dim} != {out_dim}"
        )
    return nn.Identity()


def mlp_gelu(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """``depth`` Linear layers with GELU between them (LLaVA-1.5 uses depth 2)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": _linear,
    "identity": _identity,
}


def valid_projector_types() -> list[str]:
    """Exact registry keys plus the ``mlp{N}x_gelu`` family, for error messages and docs."""
    return [*sorted(PROJECTORS), "mlp{N}x_gelu (N >= 1)"]


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    """Build the projector named ``projector_type`` mapping ``[..., in_dim]`` to ``[..., out_dim]``."""
    if projector_type in PROJECTORS:
        return PROJECTORS[projector_type](in_dim, out_dim)
    match = _MLP_GELU.fullmatch(projector_type)
    if match:
        return mlp_gelu(in_dim, out_dim, int(match.group(1)))
    raise KeyError(f"unknown projector type {projector_type!r}; valid: {valid_projector_types()}")
