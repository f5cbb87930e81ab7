"""Video on the model side: projected frame features -> one video's token sequence (LLaVA-OneVision).

Each frame is one view of the tower. Its ``side x side`` feature grid is bilinearly pooled to
``ceil(side / pool)`` a side (OneVision: 27 x 27 -> 14 x 14 for SigLIP-384), the frames follow
one another, and under AnyRes one learned newline ends the whole video.
:meth:`llava_lite.image_grid.ImageGrid.video_tokens` counts the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llava_lite.image_grid import ImageGrid


def pool_frames(frames: Tensor, grid: ImageGrid) -> Tensor:
    """Frame features ``[F, side*side, D]`` -> pooled ``[F, pooled*pooled, D]``."""
    count, _, dim = frames.shape
    side, pooled = grid.patches, grid.frame_side
    maps = frames.view(count, side, side, dim).permute(0, 3, 1, 2)  # [F, D, side, side]
    maps = nn.functional.interpolate(maps, size=[pooled, pooled], mode="bilinear")  # [F, D, p, p]
    return maps.permute(0, 2, 3, 1).reshape(count, pooled * pooled, dim)  # [F, p*p, D]


def pack_video(frames: Tensor, grid: ImageGrid, newline: Tensor | None) -> Tensor:
    """One video's projected frames ``[F, side*side, D]`` -> its tokens ``[video_tokens(F), D]``."""
    tokens = pool_frames(frames, grid).flatten(0, 1)  # [F * p*p, D]
    if newline is None:
        return tokens
    return torch.cat([tokens, newline.to(tokens.dtype)[None]], dim=0)  # [F * p*p + 1, D]
