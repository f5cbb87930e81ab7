"""The scene a text-only reader can rebuild from one image's symbolic context.

Boxes give each object's shape and grid cell; captions that say "<size> <colour> <shape>
<in/on/at> the <position>" (as ``llava_lite.synthetic.captions`` writes them) give its colour
and size. The offline teacher writes its replies from this scene, and the demo reads the same
scene to label its tiny CLIP's grid cells, so both see only what a teacher sees.
"""

from __future__ import annotations

import re

from llava_lite.symbolic import SymbolicContext
from llava_lite.synthetic.scene import CELL_PHRASES, COLORS, SHAPES, SIZES, Scene, SceneObject, cell_of_point

_POSITIONS = sorted(CELL_PHRASES, key=len, reverse=True)  # longest first: "top left" before "top"
_MENTION = re.compile(
    rf"\b(?P<size>{'|'.join(SIZES)})\s+(?P<color>{'|'.join(COLORS)})\s+(?P<shape>{'|'.join(SHAPES)})"
    rf"\s+(?:in|on|at)\s+the\s+(?P<pos>{'|'.join(_POSITIONS)})\b",
    re.IGNORECASE,
)


class ContextInsufficient(ValueError):
    """The captions and boxes do not say what each object is (a box no caption describes)."""


def parse_context(context: SymbolicContext) -> Scene:
    """Rebuild the scene a teacher can know: boxes give shape + cell, captions give colour + size.

    Raises ``ContextInsufficient`` naming the image when a box has no matching caption.
    """
    mentions: dict[tuple[int, int], tuple[str, str, str]] = {}
    for caption in context.captions:
        for m in _MENTION.finditer(caption):
            cell = CELL_PHRASES[m["pos"].lower()]
            mentions.setdefault(cell, (m["size"].lower(), m["color"].lower(), m["shape"].lower()))
    objects = []
    for box in context.objects:
        x1, y1, x2, y2 = box.box
        cell = cell_of_point((x1 + x2) / 2, (y1 + y2) / 2, 1.0, 1.0)
        where = f"image {context.image_id} ({context.file_name})"
        if cell not in mentions:
            raise ContextInsufficient(f"{where}: no caption describes the {box.category} box at {cell}")
        size, color, shape = mentions[cell]
        if shape != box.category:
            raise ContextInsufficient(f"{where}: captions put a {shape} where the boxes put a {box.category}")
        bbox = (
            x1 * context.width,
            y1 * context.height,
            (x2 - x1) * context.width,
            (y2 - y1) * context.height,
        )
        objects.append(SceneObject(shape, color, size, cell, bbox))
    if not objects:
        raise ContextInsufficient(f"image {context.image_id} ({context.file_name}): no object boxes")
    return Scene(context.image_id, context.width, context.height, tuple(objects))
