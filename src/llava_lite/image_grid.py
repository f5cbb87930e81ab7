"""How many tokens an image becomes: one square view (LLaVA-1.5) or AnyRes tiles (LLaVA-NeXT).

This is the one place that counts an image's tokens. The processor expands ``<image>`` by it,
packing and length grouping budget rows with it, the over-long policy measures samples with
it, and the model checks its features against it, so the four cannot drift apart.

AnyRes (LLaVA-NeXT): the image is read as a base view (the whole image resized to one tile)
plus a grid of tiles cut from the image resized to the best-fitting ``pinpoint`` (height,
width in pixels, transformers' order). The grid's patch features are laid out as one picture
of ``rows * patches`` by ``cols * patches`` features, the padding added to fit the pinpoint is
cut away again ("unpadding", symmetric, rounding as transformers does), and a learned
newline vector ends each feature row. OneVision's ``anyres_max_N`` (``max_tiles=N``) then
shrinks a grid holding more than about N tiles' worth of features by bilinear interpolation.

Several images and video (LLaVA-OneVision): an image of a multi-image sample may be read as
its base view alone ("untiled"), which under AnyRes is followed by one newline; a video is its
frames, each one view whose feature grid is pooled to ``ceil(patches / video_pool)`` a side,
and under AnyRes one newline after the last frame.

Only geometry lives here: no torch, no pixels. Sizes are ``(height, width)`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers.image_processing_utils import select_best_resolution

# LLaVA-NeXT's grid for a 336-pixel tower (llava-hf's llava-v1.6 configs), as (height, width).
LLAVA_NEXT_PINPOINTS: tuple[tuple[int, int], ...] = (
    (336, 672),
    (672, 336),
    (672, 672),
    (1008, 336),
    (336, 1008),
)
# OneVision's grid for a 384-pixel tower: every (rows, cols) from 1x1 to 6x6 tiles.
ONEVISION_PINPOINTS: tuple[tuple[int, int], ...] = tuple(
    (384 * rows, 384 * cols) for rows in range(1, 7) for cols in range(1, 7)
)
# OneVision's downsampling starts only above this factor of the allowed feature side.
_DOWNSAMPLE_SLACK = 1.1


@dataclass(frozen=True)
class ImageGrid:
    """The token geometry of one vision tower, optionally with AnyRes tiling.

    ``tile``: the tower's input side in pixels; ``patches``: patch features per tile side;
    ``base_tokens``: tokens of one view after feature selection (the CLS token counts when
    kept); ``pinpoints``: AnyRes canvases ``(height, width)``, None for one square view;
    ``max_tiles``: OneVision's ``anyres_max_N``, None for none; ``video_pool``: how much a
    video frame's feature grid shrinks per side.
    """

    tile: int
    patches: int
    base_tokens: int
    pinpoints: tuple[tuple[int, int], ...] | None = None
    max_tiles: int | None = None
    video_pool: int = 2

    def __post_init__(self) -> None:
        if self.pinpoints is None:
            return
        if not self.pinpoints:
            raise ValueError("anyres.grid_pinpoints is empty; give at least one (height, width)")
        bad = [
            p for p in self.pinpoints if len(p) != 2 or p[0] % self.tile or p[1] % self.tile or min(p) <= 0
        ]
        if bad:
            raise ValueError(
                f"anyres.grid_pinpoints {bad} are not (height, width) multiples of the tower's {self.tile}-pixel tile"
            )
        if self.base_tokens != self.patches**2:
            raise ValueError(
                "AnyRes lays tiles out as patch grids, so it needs vision.select_feature='patch' "
                f"(one view gives {self.base_tokens} tokens, not {self.patches}x{self.patches})"
            )
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ValueError(f"anyres.max_tiles={self.max_tiles}; must be >= 1 or null")

    @property
    def anyres(self) -> bool:
        return self.pinpoints is not None

    def best_resolution(self, height: int, width: int) -> tuple[int, int]:
        """The pinpoint an image of this size is resized into (transformers' choice, ties to the first)."""
        assert self.pinpoints is not None
        best = select_best_resolution((int(height), int(width)), [list(p) for p in self.pinpoints])
        return int(best[0]), int(best[1])

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of full-resolution tiles for an image of this size."""
        best_h, best_w = self.best_resolution(height, width)
        return best_h // self.tile, best_w // self.tile

    def num_tiles(self, height: int, width: int, tiled: bool = True) -> int:
        """Views the tower encodes for one image: the base view plus the grid's tiles (one untiled)."""
        if not self.anyres or not tiled:
            return 1
        rows, cols = self.grid_shape(height, width)
        return 1 + rows * cols

    def unpadded_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of grid features once the padding added to fit the pinpoint is cut away."""
        rows, cols = self.grid_shape(height, width)
        feat_h, feat_w = rows * self.patches, cols * self.patches
        if width / height > feat_w / feat_h:  # the image is wider: padding was added above and below
            kept = int(round(height * (feat_w / width), 7))
            feat_h -= 2 * ((feat_h - kept) // 2)
        else:
            kept = int(round(width * (feat_h / height), 7))
            feat_w -= 2 * ((feat_w - kept) // 2)
        return feat_h, feat_w

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(rows, cols)`` of grid features after unpadding and ``max_tiles`` downsampling."""
        feat_h, feat_w = self.unpadded_shape(height, width)
        ratio = self.downsample_ratio(feat_h, feat_w)
        if ratio is not None:
            return int(feat_h // ratio), int(feat_w // ratio)
        return feat_h, feat_w

    def downsample_ratio(self, feat_h: int, feat_w: int) -> float | None:
        """How much ``anyres_max_N`` shrinks each side of an unpadded grid, or None to keep it."""
        if self.max_tiles is None:
            return None
        ratio = math.sqrt(feat_h * feat_w / (self.max_tiles * self.patches**2))
        return ratio if ratio > _DOWNSAMPLE_SLACK else None

    def num_tokens(self, height: int, width: int, tiled: bool = True) -> int:
        """Image-token slots of one image of ``height`` x ``width`` pixels.

        ``tiled=False``: the image is read as its base view alone (one of several images under
        OneVision's ``multi_image="base"``), plus one newline under AnyRes.
        """
        if not self.anyres:
            return self.base_tokens
        if not tiled:
            return self.base_tokens + 1
        feat_h, feat_w = self.feature_shape(height, width)
        return self.base_tokens + feat_h * feat_w + feat_h  # base view, grid, one newline per row

    @property
    def frame_side(self) -> int:
        """Features per side of one video frame once pooled (``ceil``, as transformers' OneVision)."""
        return math.ceil(self.patches / self.video_pool)

    def video_tokens(self, frames: int) -> int:
        """Video-token slots of a video of ``frames`` frames: pooled frames, then a newline under AnyRes."""
        if self.base_tokens != self.patches**2:
            raise ValueError(
                "video frames are pooled as patch grids, so video needs vision.select_feature='patch' "
                f"(one view gives {self.base_tokens} tokens, not {self.patches}x{self.patches})"
            )
        return frames * self.frame_side**2 + (1 if self.anyres else 0)

    @property
    def max_tokens(self) -> int:
        """At least the tokens any image can become (what a row budget must hold).

        Without ``max_tiles`` that is a full grid, uncut. With it, a downsampled grid keeps
        about ``max_tiles`` tiles' worth of features whatever its size, and ``h // ratio`` newlines,
        which grow with the grid's aspect: an unpadded grid (cut on one side) can outgrow its
        full pinpoint, and one just under the slack is not downsampled at all. So every grid
        unpadding can leave is counted (cuts keep the side's parity): an upper bound, reached
        exactly on the tiny grids tests/unit/test_anyres_max.py searches.
        """
        if self.pinpoints is None:
            return self.base_tokens
        most = 0
        for best_h, best_w in self.pinpoints:
            full_h, full_w = best_h // self.tile * self.patches, best_w // self.tile * self.patches
            cut_h = [(h, full_w) for h in range(full_h, -1, -2)]  # a wider image: rows cut
            cut_w = [(full_h, w) for w in range(full_w, -1, -2)]  # a taller one: columns cut
            for feat_h, feat_w in cut_h + cut_w:
                ratio = self.downsample_ratio(feat_h, feat_w)
                if ratio is not None:
                    feat_h, feat_w = int(feat_h // ratio), int(feat_w // ratio)
                most = max(most, feat_h * feat_w + feat_h)
        return self.base_tokens + most
