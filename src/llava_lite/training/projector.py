"""The stage-1 artefact: projector weights on their own, in a small safetensors file.

Stage 2 names this file explicitly (``model.init_projector_from=...``); nothing is inferred
from folder names. The file records the projector type so a mismatch fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

PROJECTOR_FILE = "projector.safetensors"


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


def load_projector(projector: nn.Module, path: str | Path, projector_type: str) -> None:
    """Load a file written by ``save_projector``; errors name the file and what differs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_projector_from: no projector file at {path}")
    with safe_open(str(path), framework="pt") as f:
        saved_type = (f.metadata() or {}).get("projector_type")
    if saved_type is not None and saved_type != projector_type:
        raise ValueError(
            f"{path} holds a {saved_type!r} projector; this model's projector is {projector_type!r}"
        )
    state = load_file(str(path))
    own = projector.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f"{path} does not fit this projector: missing={missing} unexpected={unexpected} "
            f"shape mismatches={sorted(bad_shapes)}"
        )
    projector.load_state_dict(state)
