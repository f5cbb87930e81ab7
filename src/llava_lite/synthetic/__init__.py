"""A small deterministic world of shape images with COCO-format annotations, for offline runs.

``build_world`` writes the images and ``captions_{split}.json`` / ``instances_{split}.json``;
``llava_lite.synthetic.tasks`` turns them into stage-1 caption records and held-out
closed-form questions; ``llava_lite.synthetic.checker`` verifies answers against the truth;
``OfflineTeacher`` (``llava_lite.synthetic.teacher``) writes instruction data from the
captions and boxes, chosen with ``llava-lite-generate teacher=offline``; ``OfflineJudge``
(``llava_lite.synthetic.judge``) scores answers from the annotations for preference pairs,
chosen with ``llava-lite-pairs judge=offline``.
"""

from llava_lite.synthetic.judge import OfflineJudge
from llava_lite.synthetic.scene import COLORS, SHAPES, SIZES, Scene, SceneObject
from llava_lite.synthetic.teacher import OfflineTeacher
from llava_lite.synthetic.world import SPLITS, WorldPaths, build_world, load_scenes, sample_scene

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "OfflineJudge",
    "OfflineTeacher",
    "Scene",
    "SceneObject",
    "WorldPaths",
    "build_world",
    "load_scenes",
    "sample_scene",
]
