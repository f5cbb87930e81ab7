"""Projectors: vision features -> LLM embedding space.

A plain registry with exact keys. A projector type is a base type, optionally followed by one
variant suffix: ``<base>[+<variant>]``, e.g. ``mlp2x_gelu`` or ``mlp2x_gelu+patch_positions``.
Bases are ``linear``, ``identity`` and the ``mlp{N}x_gelu`` family, the latter matched by a
full regex (``mlp2x_gelu`` yes, ``mlp2x_gelu_v2`` or ``xmlp2x_gelu`` no), never by substring.
The MLP is an ``nn.Sequential`` of Linear/GELU so its state-dict keys (``0.weight``,
``2.weight``, ...) match the original LLaVA ``mm_projector`` checkpoints; a variant appends its
module as the next index, so the base's keys stay where they were.

Every entry carries its own llava-hf export rule, so the exporter asks this registry how (or
whether) a type maps to ``LlavaForConditionalGeneration``'s ``multi_modal_projector`` and no
other module special-cases a projector type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

_MLP_GELU = re.compile(r"mlp([1-9][0-9]*)x_gelu")
_VARIANT_SEP = "+"

# in_dim, out_dim, number of image tokens per image (None where the caller has none to give).
Builder = Callable[[int, int, int | None], nn.Module]
# A built projector -> (llava-hf ``projector_hidden_act``, ``multi_modal_projector.*`` tensors).
HFExport = Callable[[nn.Module], tuple[str, dict[str, Tensor]]]


@dataclass(frozen=True)
class ProjectorEntry:
    """How to build one projector type and how to export it to llava-hf (or why it cannot be)."""

    build: Builder
    to_llava_hf: HFExport


class ProjectorType(NamedTuple):
    """A parsed projector type string: its base type and its variant suffix (None: plain)."""

    base: str
    variant: str | None


def _no_llava_hf(projector_type: str) -> HFExport:
    def refuse(projector: nn.Module) -> tuple[str, dict[str, Tensor]]:
        raise ValueError(
            f"projector {projector_type!r} has no llava-hf equivalent; export supports 'mlp2x_gelu' and 'linear'"
        )

    return refuse


def _linear(in_dim: int, out_dim: int, num_image_tokens: int | None = None) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def _linear_to_hf(projector: nn.Module) -> tuple[str, dict[str, Tensor]]:
    # llava-hf always has two linears: ours is linear_2(identity(linear_1(x))) with linear_2 = I.
    assert isinstance(projector, nn.Linear)
    out_dim = projector.weight.shape[0]
    return "linear", {
        "linear_1.weight": projector.weight,
        "linear_1.bias": projector.bias,
        "linear_2.weight": torch.eye(out_dim, dtype=projector.weight.dtype),
        "linear_2.bias": torch.zeros(out_dim, dtype=projector.weight.dtype),
    }


def _identity(in_dim: int, out_dim: int, num_image_tokens: int | None = None) -> nn.Module:
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


def _mlp2x_gelu_to_hf(projector: nn.Module) -> tuple[str, dict[str, Tensor]]:
    assert isinstance(projector, nn.Sequential)
    return "gelu", {
        "linear_1.weight": projector[0].weight,
        "linear_1.bias": projector[0].bias,
        "linear_2.weight": projector[2].weight,
        "linear_2.bias": projector[2].bias,
    }


def _mlp_entry(name: str, depth: int) -> ProjectorEntry:
    # Only depth 2 has a llava-hf form: LlavaMultiModalProjector is exactly linear -> act -> linear.
    def build(in_dim: int, out_dim: int, num_image_tokens: int | None = None) -> nn.Module:
        return mlp_gelu(in_dim, out_dim, depth)

    return ProjectorEntry(build=build, to_llava_hf=_mlp2x_gelu_to_hf if depth == 2 else _no_llava_hf(name))


PROJECTORS: dict[str, ProjectorEntry] = {
    "linear": ProjectorEntry(build=_linear, to_llava_hf=_linear_to_hf),
    "identity": ProjectorEntry(build=_identity, to_llava_hf=_no_llava_hf("identity")),
}


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


def _patch_positions(name: str, base: ProjectorEntry) -> ProjectorEntry:
    """``<base>+patch_positions``: the base, then :class:`PatchPositions` as the next Sequential index.

    Not part of LLaVA: a ViT's upper layers keep little of where a patch sits, so a learned
    vector per image-token slot hands it to the LLM directly (docs/model.md).
    """

    def build(in_dim: int, out_dim: int, num_image_tokens: int | None = None) -> nn.Module:
        if num_image_tokens is None:
            raise ValueError(f"projector {name!r} needs the number of image tokens per image")
        # The base first, so its parameters draw the same random numbers as without positions.
        projector = base.build(in_dim, out_dim, num_image_tokens)
        layers = list(projector) if isinstance(projector, nn.Sequential) else [projector]
        return nn.Sequential(*layers, PatchPositions(num_image_tokens, out_dim))

    def refuse(projector: nn.Module) -> tuple[str, dict[str, Tensor]]:
        raise ValueError(
            f"projector.type={name!r} has no llava-hf equivalent (LlavaForConditionalGeneration "
            "adds nothing to the projected features); save the native format (save_pretrained) instead"
        )

    return ProjectorEntry(build=build, to_llava_hf=refuse)


# Suffixes after "+": each wraps a base entry into a new one (builder and export rule).
VARIANTS: dict[str, Callable[[str, ProjectorEntry], ProjectorEntry]] = {
    "patch_positions": _patch_positions,
}


def valid_projector_types() -> list[str]:
    """Exact registry keys, the ``mlp{N}x_gelu`` family and the variant forms, for error messages and docs."""
    return [
        *sorted(PROJECTORS),
        "mlp{N}x_gelu (N >= 1)",
        *(f"<any of these>{_VARIANT_SEP}{v}" for v in sorted(VARIANTS)),
    ]


def _unknown(projector_type: str) -> KeyError:
    return KeyError(f"unknown projector type {projector_type!r}; valid: {valid_projector_types()}")


def parse_projector_type(projector_type: str) -> ProjectorType:
    """Split ``<base>[+<variant>]`` exactly (whole string, one suffix at most); KeyError if invalid."""
    base, sep, variant = projector_type.partition(_VARIANT_SEP)
    if sep and variant not in VARIANTS:
        raise _unknown(projector_type)
    if base not in PROJECTORS and not _MLP_GELU.fullmatch(base):
        raise _unknown(projector_type)
    return ProjectorType(base, variant if sep else None)


def projector_entry(projector_type: str) -> ProjectorEntry:
    """The registry entry of ``projector_type`` (a variant wraps its base's entry); KeyError if unknown."""
    base, variant = parse_projector_type(projector_type)
    if base in PROJECTORS:
        entry = PROJECTORS[base]
    else:
        match = _MLP_GELU.fullmatch(base)
        assert match is not None  # parse_projector_type checked it
        entry = _mlp_entry(base, int(match.group(1)))
    return entry if variant is None else VARIANTS[variant](projector_type, entry)


def build_projector(
    projector_type: str, in_dim: int, out_dim: int, num_image_tokens: int | None = None
) -> nn.Module:
    """Build the projector named ``projector_type`` mapping ``[..., in_dim]`` to ``[..., out_dim]``.

    ``num_image_tokens`` (per image) is given to every builder; only types that hold something
    per image-token slot (``+patch_positions``) need it, and they raise without it.
    """
    return projector_entry(projector_type).build(in_dim, out_dim, num_image_tokens)


def projector_to_llava_hf(projector_type: str, projector: nn.Module) -> tuple[str, dict[str, Tensor]]:
    """(llava-hf ``projector_hidden_act``, ``multi_modal_projector.*`` tensors) for a built projector.

    Raises ValueError, in one line, for a type llava-hf cannot hold.
    """
    return projector_entry(projector_type).to_llava_hf(projector)


def same_base_projector(type_a: str, type_b: str) -> bool:
    """Whether two types share a base (differ at most by a variant); False if either is unknown.

    Lets a projector file written under another variant reach the key-by-key comparison, whose
    message says exactly what differs, instead of failing on the type label alone.
    """
    try:
        return parse_projector_type(type_a).base == parse_projector_type(type_b).base
    except KeyError:
        return False
