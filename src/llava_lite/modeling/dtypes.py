"""Config dtype names -> torch dtypes, so configs stay plain strings (no torch import)."""

from __future__ import annotations

import torch


def resolve_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; a clear error for anything that is not a dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (use e.g. 'float32', 'bfloat16', 'float16')")
    return dtype
