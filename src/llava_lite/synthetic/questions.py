"""Closed-form questions about a scene: one-word answers with a known answer set.

Used twice: to build the held-out evaluation set from the test split's ground truth, and by
the offline teacher (from what it parsed out of captions and boxes) to write the short-answer
turns that teach the answer format, like LLaVA-1.5's VQA mix. Referring expressions are
always unique in the scene, so every question has exactly one right answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llava_lite.synthetic.language import located
from llava_lite.synthetic.scene import COLORS, MAX_OBJECTS, SHAPES, Scene, SceneObject

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or number."
# The demo world's detail-description instructions (the offline teacher's fallback when a
# request names none, and the demo's first chat question).
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "What do you see in this picture? Describe everything.",
)
HORIZONTAL: tuple[str, ...] = ("left", "center", "right")
VERTICAL: tuple[str, ...] = ("top", "middle", "bottom")
COUNT_CHOICES: tuple[str, ...] = tuple(str(n) for n in range(1, MAX_OBJECTS + 1))


@dataclass(frozen=True)
class ClosedQuestion:
    question_type: str  # one of QUESTION_TYPES
    question: str  # without the short-answer prompt
    answer: str
    choices: tuple[str, ...]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)


def _matches(obj: SceneObject, attrs: tuple[str, ...], ref: SceneObject) -> bool:
    return all(getattr(obj, a) == getattr(ref, a) for a in attrs)


def referring_expression(obj: SceneObject, scene: Scene, avoid: str | None = None) -> str | None:
    """The shortest unique way to name ``obj`` without using attribute ``avoid``.

    Tries shape, colour + shape, size + colour + shape, then position (always unique: one
    object per grid cell). Returns None when nothing unique is left (only when ``avoid``
    is "position" and two objects look identical).
    """
    candidates: list[tuple[tuple[str, ...], str]] = [
        (("shape",), f"the {obj.shape}"),
        (("color",), f"the {obj.color} object"),
        (("color", "shape"), f"the {obj.color} {obj.shape}"),
        (("size", "shape"), f"the {obj.size} {obj.shape}"),
        (("size", "color", "shape"), f"the {obj.size} {obj.color} {obj.shape}"),
    ]
    for attrs, phrase in candidates:
        if avoid in attrs:
            continue
        if sum(_matches(o, attrs, obj) for o in scene.objects) == 1:
            return phrase
    if avoid == "position":
        return None
    noun = "object" if avoid == "shape" else obj.shape
    return f"the {noun} {located(obj.position)}"


def colour_question(obj: SceneObject, scene: Scene) -> ClosedQuestion:
    ref = referring_expression(obj, scene, avoid="color")
    return ClosedQuestion("colour", f"What color is {ref}?", obj.color, tuple(COLORS))


def shape_question(obj: SceneObject, scene: Scene) -> ClosedQuestion:
    ref = referring_expression(obj, scene, avoid="shape")
    return ClosedQuestion("shape", f"What shape is {ref}?", obj.shape, SHAPES)


def count_question(scene: Scene) -> ClosedQuestion:
    return ClosedQuestion(
        "count", "How many objects are there in the image?", str(len(scene.objects)), COUNT_CHOICES
    )


def position_question(obj: SceneObject, scene: Scene, axis: str) -> ClosedQuestion | None:
    """'Is the red circle on the left, in the center, or on the right?' (axis 'x'), or top/middle/bottom."""
    ref = referring_expression(obj, scene, avoid="position")
    if ref is None:
        return None
    row, col = obj.cell
    if axis == "x":
        q = f"Is {ref} on the left, in the center, or on the right?"
        return ClosedQuestion("position", q, HORIZONTAL[col], HORIZONTAL)
    q = f"Is {ref} at the top, in the middle, or at the bottom?"
    return ClosedQuestion("position", q, VERTICAL[row], VERTICAL)


def closed_question(question_type: str, scene: Scene, rng: random.Random) -> ClosedQuestion | None:
    """One question of the given type about a random object (None if the type does not apply)."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"question_type={question_type!r}; valid: {list(QUESTION_TYPES)}")
    obj = rng.choice(scene.objects)
    if question_type == "colour":
        return colour_question(obj, scene)
    if question_type == "shape":
        return shape_question(obj, scene)
    if question_type == "count":
        return count_question(scene)
    return position_question(obj, scene, rng.choice(("x", "y")))
