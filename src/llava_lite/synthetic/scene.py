"""The world's vocabulary and one image's ground truth: objects on a 3x3 grid.

Each object sits in its own cell of a 3x3 grid (with jitter), so "top left" or "center"
names exactly one object and relative positions are never ambiguous. Sizes are fractions
of a cell, so the world scales with the image size. This module is the hidden truth:
teachers never read it, they read captions and boxes (see ``llava_lite.symbolic``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Saturated, well-separated colours on a dark background: a tiny encoder tells them apart
# from one patch's mean RGB.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 190, 60),
    "blue": (45, 95, 240),
    "yellow": (245, 225, 40),
    "purple": (160, 60, 210),
    "orange": (250, 140, 20),
}
BACKGROUND: tuple[int, int, int] = (28, 28, 32)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# Side length of an object's (square) box as a fraction of a grid cell.
SIZE_FRACTION: dict[str, float] = {"small": 0.5, "large": 0.85}
MAX_OBJECTS = 4
GRID = 3
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")


def cell_phrase(cell: tuple[int, int]) -> str:
    """'top left', 'top', 'center', 'right', ... for a (row, column) grid cell."""
    row, col = cell
    vertical = "" if row == 1 else ROWS[row]
    horizontal = "" if col == 1 else COLUMNS[col]
    return " ".join(p for p in (vertical, horizontal) if p) or "center"


CELL_PHRASES: dict[str, tuple[int, int]] = {
    cell_phrase((r, c)): (r, c) for r in range(GRID) for c in range(GRID)
}


def cell_of_point(x: float, y: float, width: float, height: float) -> tuple[int, int]:
    """Grid cell (row, column) containing pixel point (x, y)."""
    col = min(GRID - 1, max(0, int(x / width * GRID)))
    row = min(GRID - 1, max(0, int(y / height * GRID)))
    return row, col


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cell: tuple[int, int]  # (row, column) in the 3x3 grid
    bbox: tuple[float, float, float, float]  # COCO [x, y, w, h] in pixels

    @property
    def position(self) -> str:
        return cell_phrase(self.cell)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2

    def noun(self, size: bool = True) -> str:
        """'small red circle' (or 'red circle')."""
        return f"{self.size} {self.color} {self.shape}" if size else f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image_id: int
    width: int
    height: int
    objects: tuple[SceneObject, ...]  # in drawing order: later objects occlude earlier ones


def sample_layout(rng: random.Random, image_size: int) -> list[tuple[str, str, str, tuple[int, int]]]:
    """Pick 1..MAX_OBJECTS objects (shape, colour, size, distinct cell), uniformly at random."""
    n = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    return [(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), cell) for cell in cells]


def place(
    rng: random.Random, image_size: int, size: str, cell: tuple[int, int], spill: float
) -> tuple[float, float, float, float]:
    """A box of the given size whose centre stays in ``cell``; it may spill ``spill`` cells outside."""
    cell_px = image_size / GRID
    side = round(SIZE_FRACTION[size] * cell_px)
    row, col = cell
    lo_x = col * cell_px - spill * cell_px
    hi_x = (col + 1) * cell_px + spill * cell_px - side
    lo_y = row * cell_px - spill * cell_px
    hi_y = (row + 1) * cell_px + spill * cell_px - side
    # Keep the box inside the image and its centre inside the cell.
    lo_x, hi_x = (
        max(lo_x, 0.0, col * cell_px - side / 2),
        min(hi_x, image_size - side, (col + 1) * cell_px - side / 2 - 1),
    )
    lo_y, hi_y = (
        max(lo_y, 0.0, row * cell_px - side / 2),
        min(hi_y, image_size - side, (row + 1) * cell_px - side / 2 - 1),
    )
    x = rng.randint(math.ceil(lo_x), max(math.ceil(lo_x), math.floor(hi_x)))
    y = rng.randint(math.ceil(lo_y), max(math.ceil(lo_y), math.floor(hi_y)))
    return float(x), float(y), float(side), float(side)
