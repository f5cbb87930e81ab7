"""The stage-1 artefact: projector weights on their own, in a small safetensors file.

Stage 2 names this file explicitly (``model.init_projector_from=...``); nothing is inferred
from folder names. The file records the projector type so a mismatch fails loudly; types
that differ only by a variant suffix (``mlp2x_gelu`` / ``mlp2x_gelu+patch_positions``) are
compared key by key instead, so files from before variants were type names still load.

The original LLaVA's stage-1 ``mm_projector.bin`` loads too: a torch state dict with keys
``model.mm_projector.0.weight`` ... (``torch.load(weights_only=True)``, so no code runs);
the ``mm_projector.`` prefix is dropped, and ``0``/``2`` are our MLP's layers already.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llava_lite.modeling.projector import same_base_projector

log = logging.getLogger(__name__)

PROJECTOR_FILE = "projector.safetensors"
# An AnyRes model's row separator travels in the same file: it is trained with the projector.
NEWLINE_KEY = "image_newline"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")
_ORIGINAL_PREFIX = "mm_projector."


def save_projector(
    projector: nn.Module | Mapping[str, Tensor], path: str | Path, projector_type: str
) -> Path:
    """Write the projector's state dict (on CPU, contiguous) with its type as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = projector.state_dict() if isinstance(projector, nn.Module) else projector
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(
        tensors, str(path), metadata={"format": "llava_lite.projector", "projector_type": projector_type}
    )
    return path


def _read_state(path: Path, projector_type: str) -> tuple[dict[str, Tensor], str | None]:
    """Tensors of a projector file, ours (safetensors) or the original LLaVA's (``mm_projector.bin``),
    and the projector type the file records (None: it records none)."""
    saved_type = None
    if path.suffix in _TORCH_SUFFIXES:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} is not a state dict of tensors")
    else:
        with safe_open(str(path), framework="pt") as f:
            saved_type = (f.metadata() or {}).get("projector_type")
        # Another variant of the same base may still fit: files written before variants were
        # type names record the base only (e.g. 'mlp2x_gelu' with patch positions). The keys decide.
        if saved_type is not None and not same_base_projector(saved_type, projector_type):
            raise ValueError(
                f"{path} holds a {saved_type!r} projector; this model's projector is {projector_type!r}"
            )
        state = load_file(str(path))
    # "model.mm_projector.0.weight" (original LLaVA) -> "0.weight"; our own keys have no prefix.
    return {k.split(_ORIGINAL_PREFIX, 1)[-1]: v for k, v in state.items()}, saved_type


def load_projector(
    projector: nn.Module, path: str | Path, projector_type: str, image_newline: nn.Module | None = None
) -> None:
    """Load a file written by ``save_projector`` or LLaVA's ``mm_projector.bin``; errors name the file and what differs.

    ``image_newline`` (an AnyRes model's) takes the file's ``image_newline`` when it has one; a
    file from a square-image stage 1 (LLaVA-NeXT trains stage 1 at base resolution) has none,
    and the newline keeps its initialisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_projector_from: no projector file at {path}")
    state, saved_type = _read_state(path, projector_type)
    newline = state.pop(NEWLINE_KEY, None)
    if image_newline is not None and newline is not None:
        image_newline.weight.data.copy_(newline.reshape(image_newline.weight.shape))
    elif image_newline is not None:
        log.info("%s has no image_newline (a square-image stage 1): the AnyRes newline starts fresh", path)
    elif newline is not None:
        log.warning("%s holds an AnyRes image_newline this model does not read; it is ignored", path)
    own = projector.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shapes:
        # Other keys mean another projector type (a variant adds or drops one); shapes alone, other sizes.
        written = f", file: {saved_type}" if saved_type and saved_type != projector_type else ""
        hint = (
            f"; was it written with another model.projector.type (this model: {projector_type}{written})? "
            "set it to match"
            if missing or unexpected
            else ""
        )
        raise ValueError(
            f"{path} does not fit this projector: missing={missing} unexpected={unexpected} "
            f"shape mismatches={sorted(bad_shapes)}{hint}"
        )
    projector.load_state_dict(state)
