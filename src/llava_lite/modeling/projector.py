"""Projectors: vision features -> LLM embedding space.

A plain registry with exact keys. ``mlp{N}x_gelu`` is a family, so it is matched by a
full regex (``mlp2x_gelu`` yes, ``mlp2x_gelu_v2`` or ``xmlp2x_gelu`` no), never by substring.
The MLP is an ``nn.Sequential`` of Linear/GELU so its state-dict keys (``0.weight``,
``2.weight``, ...) match the original LLaVA ``mm_projector`` checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

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


class PatchPositions(nn.Module):
    """Adds one learned vector per image-token slot: ``[N, P, D] -> [N, P, D]``.

    Starts at zero, so a projector gains it without changing what it computes.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_tokens, dim))

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-2] != self.weight.shape[0]:
            raise ValueError(
                f"patch positions: {features.shape[-2]} image tokens, but {self.weight.shape[0]} were built"
            )
        return features + self.weight.to(features.dtype)  # [N, P, D]


def build_projector(
    projector_type: str, in_dim: int, out_dim: int, patch_positions: int | None = None
) -> nn.Module:
    """Build the projector named ``projector_type`` mapping ``[..., in_dim]`` to ``[..., out_dim]``.

    ``patch_positions``: the number of image tokens, to add :class:`PatchPositions` last (an
    ``nn.Sequential`` then; an MLP keeps its ``0.weight`` ... keys, the positions are the next index).
    """
    if projector_type in PROJECTORS:
        projector = PROJECTORS[projector_type](in_dim, out_dim)
    elif match := _MLP_GELU.fullmatch(projector_type):
        projector = mlp_gelu(in_dim, out_dim, int(match.group(1)))
    else:
        raise KeyError(f"unknown projector type {projector_type!r}; valid: {valid_projector_types()}")
    if patch_positions is None:
        return projector
    layers = list(projector) if isinstance(projector, nn.Sequential) else [projector]
    return nn.Sequential(*layers, PatchPositions(patch_positions, out_dim))
