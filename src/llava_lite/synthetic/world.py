"""Build the synthetic world: images plus COCO-format ``captions_{split}.json`` / ``instances_{split}.json``.

Layout under ``out_dir``::

    images/{split}/{image_id:07d}.png     file_name in the JSON is relative to images/
    annotations/captions_{split}.json     COCO captions: images + 5 captions per image
    annotations/instances_{split}.json    COCO instances: images, categories (shapes), annotations
    world.json                            the arguments and vocabulary the world was built with

Categories are the shapes (supercategory "shape"); an instance's colour and size are
extra ``attributes`` on its annotation (as attribute datasets add to COCO). Those
attributes are ground truth for checkers and evaluation; the generation pipeline's
symbolic context ignores them, so teachers learn colours from the captions, as a teacher
learns them from real COCO captions.

Every image is drawn from its own random stream seeded by ``(seed, split, index)``, so an
image does not change when another split's size does, and image ids never collide across
splits (``split_index * 1_000_000 + index + 1``).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_lite.io import write_json_atomic
from llava_lite.synthetic.captions import scene_captions
from llava_lite.synthetic.render import render_scene, shape_polygon, visible_areas
from llava_lite.synthetic.scene import (
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    cell_of_point,
    place,
    sample_layout,
)

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_ID_STRIDE = 1_000_000
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class WorldPaths:
    """Where a built world lives; ``image_root`` joins with every ``file_name`` / record ``image``."""

    root: Path

    @property
    def image_root(self) -> Path:
        return self.root / "images"

    @staticmethod
    def file_name(split: str, image_id: int) -> str:
        """An image's ``file_name`` in the COCO files, relative to ``image_root``."""
        return f"{split}/{image_id:07d}.png"

    def captions(self, split: str) -> Path:
        return self.root / "annotations" / f"captions_{split}.json"

    def instances(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def meta(self) -> Path:
        return self.root / "world.json"


def categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]


def sample_scene(
    seed: int, split: str, index: int, image_size: int, spill: float = 0.12, min_visible: float = 0.75
) -> Scene:
    """One scene, deterministic from (seed, split, index); every object keeps ``min_visible`` of its area."""
    rng = random.Random(f"{seed}:{split}:{index}")
    image_id = SPLITS.index(split) * _ID_STRIDE + index + 1
    layout = sample_layout(rng, image_size)
    for attempt in range(_PLACEMENT_TRIES + 1):
        # The last attempt keeps boxes inside their cells, where objects cannot overlap.
        s = spill if attempt < _PLACEMENT_TRIES else 0.0
        objects = tuple(
            SceneObject(shape, color, size, cell, place(rng, image_size, size, cell, s))
            for shape, color, size, cell in layout
        )
        scene = Scene(image_id, image_size, image_size, objects)
        if all(frac >= min_visible for _, frac in visible_areas(scene)):
            return scene
    raise AssertionError("unreachable: objects inside distinct cells never overlap")


def build_world(
    out_dir: str | Path,
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 200,
    image_size: int = 96,
    seed: int = 0,
) -> WorldPaths:
    """Render the world's images and write its COCO files; returns where they are."""
    if image_size < 24:
        raise ValueError(f"image_size={image_size}: objects would be under 4 px; use 24 or more")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(n < 0 or n >= _ID_STRIDE for n in counts.values()):
        raise ValueError(f"split sizes must be in [0, {_ID_STRIDE}); got {counts}")
    paths = WorldPaths(Path(out_dir))
    (paths.root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = cap_id = 0
    for split in SPLITS:
        (paths.image_root / split).mkdir(parents=True, exist_ok=True)
        images, captions, instances = [], [], []
        for index in range(counts[split]):
            scene = sample_scene(seed, split, index, image_size)
            file_name = paths.file_name(split, scene.image_id)
            render_scene(scene).save(paths.image_root / file_name)
            images.append(
                {"id": scene.image_id, "file_name": file_name, "width": image_size, "height": image_size}
            )
            cap_rng = random.Random(f"{seed}:{split}:{index}:captions")
            for text in scene_captions(scene, cap_rng):
                cap_id += 1
                captions.append({"id": cap_id, "image_id": scene.image_id, "caption": text})
            for obj, (area, _) in zip(scene.objects, visible_areas(scene), strict=True):
                ann_id += 1
                polygon = [round(v, 2) for xy in shape_polygon(obj.shape, obj.bbox) for v in xy]
                instances.append(
                    {
                        "id": ann_id,
                        "image_id": scene.image_id,
                        "category_id": SHAPES.index(obj.shape) + 1,
                        "bbox": list(obj.bbox),
                        "area": round(area, 2),
                        "iscrowd": 0,
                        "segmentation": [polygon],
                        "attributes": {"color": obj.color, "size": obj.size},
                    }
                )
        info = {"description": f"llava_lite synthetic world ({split})", "version": "1.0", "year": 2026}
        write_json_atomic(
            paths.captions(split), {"info": info, "licenses": [], "images": images, "annotations": captions}
        )
        write_json_atomic(
            paths.instances(split),
            {
                "info": info,
                "licenses": [],
                "images": images,
                "annotations": instances,
                "categories": categories(),
            },
        )
        log.info("world %s: %d images, %d objects -> %s", split, len(images), len(instances), paths.root)
    write_json_atomic(
        paths.meta,
        {"seed": seed, "image_size": image_size, "splits": counts, "shapes": list(SHAPES),
         "colors": list(COLORS), "sizes": list(SIZES)},
    )  # fmt: skip
    return paths


def load_scenes(paths: WorldPaths, split: str) -> list[Scene]:
    """Ground truth of one split, from its instances file (shape + the colour/size attributes)."""
    data = json.loads(paths.instances(split).read_text())
    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    by_image: dict[int, list[SceneObject]] = {int(im["id"]): [] for im in data["images"]}
    sizes = {int(im["id"]): (int(im["width"]), int(im["height"])) for im in data["images"]}
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        x, y, w, h = (float(v) for v in ann["bbox"])
        width, height = sizes[image_id]
        cell = cell_of_point(x + w / 2, y + h / 2, width, height)
        attrs = ann["attributes"]
        by_image[image_id].append(
            SceneObject(names[int(ann["category_id"])], attrs["color"], attrs["size"], cell, (x, y, w, h))
        )
    return [Scene(i, *sizes[i], tuple(objs)) for i, objs in by_image.items()]
