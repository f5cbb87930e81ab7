"""AnyRes on the model side: tile features -> one image's token sequence (LLaVA-NeXT's layout).

Each image arrives as ``1 + rows * cols`` tile features from the tower and projector (base view
first, then the grid row-major). The grid becomes one feature picture, its padding is cut
away, OneVision's ``anyres_max_N`` may shrink it, and a learned newline ends each row; the
base view's features come first. :class:`llava_lite.image_grid.ImageGrid` decides every size
here, so the sequence length is by construction the processor's slot count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from llava_lite.image_grid import ImageGrid


class ImageNewline(nn.Module):
    """The learned vector that ends each feature row of an AnyRes grid (llava-hf's ``image_newline``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        # transformers' initialisation: a normal draw scaled by 1/sqrt(hidden size).
        self.weight = nn.Parameter(torch.randn(hidden_size) / math.sqrt(hidden_size))  # [D]


def pack_tiles(
    tiles: Tensor, image_size: tuple[int, int], grid: ImageGrid, newline: Tensor, tiled: bool = True
) -> Tensor:
    """One image's projected tile features ``[1 + rows*cols, P, D]`` -> its tokens ``[num_tokens, D]``.

    An untiled image (one of several under OneVision) is its one view ``[1, P, D]`` and a newline.
    """
    if not tiled:
        return torch.cat([tiles[0], newline.to(tiles.dtype)[None]], dim=0)  # [P + 1, D]
    height, width = image_size
    rows, cols = grid.grid_shape(height, width)
    side = grid.patches
    dim = tiles.shape[-1]
    base, cells = tiles[0], tiles[1:]  # [P, D], [rows*cols, P, D]
    picture = cells.view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3)  # [D, rows, side, cols, side]
    picture = picture.reshape(dim, rows * side, cols * side)  # [D, H_f, W_f]
    kept_h, kept_w = grid.unpadded_shape(height, width)
    top, left = (picture.shape[1] - kept_h) // 2, (picture.shape[2] - kept_w) // 2
    picture = picture[:, top : top + kept_h, left : left + kept_w]  # [D, h, w]
    feat_h, feat_w = grid.feature_shape(height, width)
    if (feat_h, feat_w) != (kept_h, kept_w):  # anyres_max_N
        picture = nn.functional.interpolate(picture[None], [feat_h, feat_w], mode="bilinear")[0]
    ends = newline.to(picture.dtype)[:, None, None].expand(dim, feat_h, 1)  # [D, h, 1]
    picture = torch.cat([picture, ends], dim=2)  # [D, h, w + 1]
    return torch.cat([base, picture.flatten(1, 2).transpose(0, 1)], dim=0)  # [P + h * (w + 1), D]
