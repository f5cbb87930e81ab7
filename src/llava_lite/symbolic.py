"""The symbolic representation of an image that a text-only teacher reads.

As in the LLaVA paper: the image's captions, and one line per object box,
``category: [x1, y1, x2, y2]``, coordinates normalised to 0..1 with three decimals.
Read from COCO-format files (real COCO and the synthetic world write the same shape).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ObjectBox:
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 normalised to 0..1


@dataclass(frozen=True)
class SymbolicContext:
    """Everything a teacher may know about one image: never the pixels."""

    image_id: int
    file_name: str
    width: int
    height: int
    captions: tuple[str, ...] = ()
    objects: tuple[ObjectBox, ...] = field(default_factory=tuple)

    def render(self, captions: bool = True, boxes: bool = True) -> str:
        """The text block given to the teacher: captions, then one line per box."""
        lines: list[str] = []
        if captions:
            lines.extend(c.strip() for c in self.captions)
        if boxes and self.objects:
            if lines:
                lines.append("")
            lines.extend(
                f"{o.category}: [{o.box[0]:.3f}, {o.box[1]:.3f}, {o.box[2]:.3f}, {o.box[3]:.3f}]"
                for o in self.objects
            )
        return "\n".join(lines)


def load_coco(captions_file: str | Path, instances_file: str | Path | None = None) -> list[SymbolicContext]:
    """Join COCO ``captions_*.json`` and (optionally) ``instances_*.json`` by image id.

    Boxes are COCO ``[x, y, w, h]`` in pixels; they become normalised corners. Crowd
    annotations are kept (the paper did not drop them). Order follows the captions file.
    """
    cap_data = _read_json(captions_file)
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in cap_data.get("annotations", []):
        captions[int(ann["image_id"])].append(str(ann["caption"]))

    categories: dict[int, str] = {}
    boxes: dict[int, list[ObjectBox]] = defaultdict(list)
    images = {int(im["id"]): im for im in cap_data.get("images", [])}
    if instances_file is not None:
        inst = _read_json(instances_file)
        categories = {int(c["id"]): str(c["name"]) for c in inst.get("categories", [])}
        for im in inst.get("images", []):
            images.setdefault(int(im["id"]), im)
        for ann in inst.get("annotations", []):
            image_id = int(ann["image_id"])
            im = images.get(image_id)
            if im is None:
                raise ValueError(
                    f"{instances_file}: annotation {ann.get('id')} names unknown image {image_id}"
                )
            cat_id = int(ann["category_id"])
            if cat_id not in categories:
                raise ValueError(
                    f"{instances_file}: annotation {ann.get('id')} has unknown category {cat_id}"
                )
            x, y, w, h = (float(v) for v in ann["bbox"])
            W, H = float(im["width"]), float(im["height"])
            box = (_clip(x / W), _clip(y / H), _clip((x + w) / W), _clip((y + h) / H))
            boxes[image_id].append(ObjectBox(categories[cat_id], box))

    contexts = []
    for image_id, im in images.items():
        contexts.append(
            SymbolicContext(
                image_id=image_id,
                file_name=str(im["file_name"]),
                width=int(im["width"]),
                height=int(im["height"]),
                captions=tuple(captions.get(image_id, ())),
                objects=tuple(boxes.get(image_id, ())),
            )
        )
    return contexts


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def _read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
