"""Draw a scene with PIL: antialiased shapes on a plain background, plus per-object visibility.

Shapes are drawn at ``SUPERSAMPLE`` times the resolution and downsampled, so edges are
smooth and a 16 px circle still looks round. Each shape fills its (square) box: a circle
touches all four sides, a triangle points up, a cross is a plus sign with arms a third
of the side wide.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from llava_lite.synthetic.scene import BACKGROUND, COLORS, Scene, SceneObject

SUPERSAMPLE = 4


def shape_polygon(
    shape: str, bbox: tuple[float, float, float, float], scale: float = 1.0
) -> list[tuple[float, float]]:
    """Outline of a shape filling ``bbox`` (COCO x, y, w, h) as polygon vertices (circles: 24-gon)."""
    x, y, w, h = (v * scale for v in bbox)
    if shape == "square":
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    if shape == "triangle":
        return [(x + w / 2, y), (x + w, y + h), (x, y + h)]
    if shape == "cross":
        a, b = w / 3, 2 * w / 3
        c, d = h / 3, 2 * h / 3
        return [
            (x + a, y), (x + b, y), (x + b, y + c), (x + w, y + c), (x + w, y + d), (x + b, y + d),
            (x + b, y + h), (x + a, y + h), (x + a, y + d), (x, y + d), (x, y + c), (x + a, y + c),
        ]  # fmt: skip
    if shape == "circle":
        cx, cy, r = x + w / 2, y + h / 2, w / 2
        return [
            (cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
            for k in range(24)
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, ...] | int) -> None:
    if obj.shape == "circle":
        x, y, w, h = (v * SUPERSAMPLE for v in obj.bbox)
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
    else:
        draw.polygon(shape_polygon(obj.shape, obj.bbox, SUPERSAMPLE), fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """The RGB image of a scene, objects drawn in order."""
    big = Image.new("RGB", (scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw(draw, obj, COLORS[obj.color])
    return big.resize((scene.width, scene.height), Image.Resampling.BOX)


def visible_areas(scene: Scene) -> list[tuple[float, float]]:
    """(visible area in pixels, visible fraction) per object, after occlusion by later objects."""
    size = (scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE)
    label = Image.new("L", size, 0)
    draw = ImageDraw.Draw(label)
    for i, obj in enumerate(scene.objects, start=1):
        _draw(draw, obj, i)
    ids = np.asarray(label)  # [H*S, W*S], index of the top object per pixel
    out = []
    for i, obj in enumerate(scene.objects, start=1):
        full = Image.new("L", size, 0)
        _draw(ImageDraw.Draw(full), obj, 1)
        total = float(np.asarray(full).sum())
        visible = float((ids == i).sum())
        out.append((visible / SUPERSAMPLE**2, visible / total if total else 0.0))
    return out
