"""Closed-form questions about a scene: one-word answers with a known answer set.

Used twice: to build the held-out evaluation set from the test split's ground truth, and by
the offline teacher (from what it parsed out of captions and boxes) to write the short-answer
turns that teach the answer format, like LLaVA-1.5's VQA mix. Referring expressions are
always unique in the scene, so every question has exactly one right answer.

Each question type has two disjoint pools of wordings. The teacher writes in the ``"train"``
pool, several wordings per type, so no type is one fixed phrase; the held-out set is asked
once in the pool's first wording (the demo's own words) and once, about the same objects, in
the ``"held_out"`` pool that no training text uses: the gap between the two is how much of
the score is instruction following rather than a memorised template. A third pool,
``"varied"``, holds the ``train`` frames and indirect questions and requests built from them
("Could you tell me what colour the circle is?"): the demo's rule-written drills ask in it.
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
_X_OPTIONS = "on the left, in the center, or on the right"
_Y_OPTIONS = "at the top, in the middle, or at the bottom"
# "{ref}" is a referring expression ("the red circle"); "{Ref}" the same, capitalised.
# Position wordings name their axis's three answers, so the question says what to answer.
# Some name the object last: the tiny demo LLM gathers a reference poorly from mid-sentence,
# and wordings that move it teach the gather itself (docs/demo_history.md, "... the reference last").
WORDINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "colour": (
            "What color is {ref}?",
            "What colour is {ref}?",
            "Which color is {ref}?",
            "Tell me the color of {ref}.",
            "What is the colour of {ref}?",
            "{Ref} is what color?",
            "Can you tell me the color of {ref}?",
            "Tell me the colour of {ref}.",
        ),
        "shape": (
            "What shape is {ref}?",
            "What kind of shape is {ref}?",
            "Which shape is {ref}?",
            "Tell me the shape of {ref}.",
            "What is the shape of {ref}?",
            "{Ref} is what shape?",
            "Can you tell me the shape of {ref}?",
        ),
        "count": (
            "How many objects are there in the image?",
            "How many objects are in the image?",
            "How many shapes can you see?",
            "Count the objects in this picture.",
            "What is the number of objects in the image?",
        ),
        "position_x": (
            f"Is {{ref}} {_X_OPTIONS}?",
            f"Is {{ref}} placed {_X_OPTIONS}?",
            "Which side is {ref} on: left, center or right?",
            "Tell me if {ref} is on the left, in the center or on the right.",
            "Left, center or right: where is {ref}?",
            "On the left, in the center or on the right: where is {ref}?",
        ),
        "position_y": (
            f"Is {{ref}} {_Y_OPTIONS}?",
            f"Is {{ref}} placed {_Y_OPTIONS}?",
            "Which row is {ref} in: top, middle or bottom?",
            "Tell me if {ref} is at the top, in the middle or at the bottom.",
            "Top, middle or bottom: where is {ref}?",
            "At the top, in the middle or at the bottom: where is {ref}?",
        ),
    },
    "held_out": {
        "colour": (
            "Which colour does {ref} have?",
            "Name the color of {ref}.",
            "Can you say what colour {ref} is?",
            "What color does {ref} appear in?",
        ),
        "shape": (
            "Which shape does {ref} have?",
            "Name the shape of {ref}.",
            "Can you say what shape {ref} is?",
            "What sort of shape is {ref}?",
        ),
        "count": (
            "How many objects does this picture contain?",
            "Tell me how many objects you see.",
            "What number of shapes is shown in the image?",
            "Can you say how many objects there are?",
        ),
        "position_x": (
            "Horizontally, is {ref} on the left, in the center, or on the right?",
            "Is {ref} located left, center or right?",
            "Can you say whether {ref} is on the left, in the center or on the right?",
        ),
        "position_y": (
            "Vertically, is {ref} at the top, in the middle, or at the bottom?",
            "Is {ref} located top, middle or bottom?",
            "Can you say whether {ref} is at the top, in the middle or at the bottom?",
        ),
    },
}


# Indirect questions and requests built from an opener and a body ("Could you tell me" + "what
# colour the circle is"): the rule-written drills ask in these as well as the ``train`` pool, so
# the closed-form answer format is learned for sentence shapes, not for a few frames.
_OPENERS: tuple[str, ...] = (
    "Could you tell me {body}?",
    "Do you know {body}?",
    "Would you tell me {body}?",
    "Please tell me {body}.",
    "I want to know {body}.",
    "Let me know {body}.",
    "Say {body}.",
)
_LEADS: tuple[str, ...] = ("Looking at the image, ", "In this picture, ")
_BODIES: dict[str, tuple[str, ...]] = {
    "colour": ("what color {ref} is", "what colour {ref} is", "the colour of {ref}", "which color {ref} has"),
    "shape": (
        "what shape {ref} is",
        "the shape of {ref}",
        "which shape {ref} has",
        "what kind of shape {ref} is",
    ),
    "count": (
        "how many objects there are",
        "how many objects are in the image",
        "how many shapes you can see",
        "the number of objects in the picture",
    ),
    "position_x": (
        "whether {ref} is on the left, in the center or on the right",
        "if {ref} is placed on the left, in the center or on the right",
        "which side {ref} is on: left, center or right",
    ),
    "position_y": (
        "whether {ref} is at the top, in the middle or at the bottom",
        "if {ref} is placed at the top, in the middle or at the bottom",
        "which row {ref} is in: top, middle or bottom",
    ),
}


def _composed(key: str) -> tuple[str, ...]:
    """The ``train`` frames, each also after a lead-in, and every opener with every body;
    minus any frame of the ``held_out`` pool, which no training text may use."""
    train = WORDINGS["train"][key]
    led = tuple(lead + f[0].lower() + f[1:] for lead in _LEADS for f in train if not f.startswith("{Ref}"))
    opened = tuple(o.format(body=b) for o in _OPENERS for b in _BODIES[key])
    held_out = set(WORDINGS["held_out"][key])
    return tuple(dict.fromkeys(f for f in (*train, *led, *opened) if f not in held_out))


WORDINGS["varied"] = {key: _composed(key) for key in WORDINGS["train"]}


def word(pool: str, key: str, ref: str = "", rng: random.Random | None = None) -> str:
    """A wording of question ``key`` ("colour", ..., "position_x") from ``pool``: the pool's
    first wording, or one drawn by ``rng``; ``ref`` fills it."""
    if pool not in WORDINGS:
        raise ValueError(f"wording pool={pool!r}; valid: {list(WORDINGS)}")
    frames = WORDINGS[pool][key]
    frame = rng.choice(frames) if rng is not None else frames[0]
    return frame.format(ref=ref, Ref=ref[:1].upper() + ref[1:])


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


def colour_question(
    obj: SceneObject, scene: Scene, pool: str = "train", rng: random.Random | None = None
) -> ClosedQuestion:
    ref = referring_expression(obj, scene, avoid="color")
    return ClosedQuestion("colour", word(pool, "colour", ref, rng), obj.color, tuple(COLORS))


def shape_question(
    obj: SceneObject, scene: Scene, pool: str = "train", rng: random.Random | None = None
) -> ClosedQuestion:
    ref = referring_expression(obj, scene, avoid="shape")
    return ClosedQuestion("shape", word(pool, "shape", ref, rng), obj.shape, SHAPES)


def count_question(scene: Scene, pool: str = "train", rng: random.Random | None = None) -> ClosedQuestion:
    return ClosedQuestion("count", word(pool, "count", rng=rng), str(len(scene.objects)), COUNT_CHOICES)


def position_question(
    obj: SceneObject, scene: Scene, axis: str, pool: str = "train", rng: random.Random | None = None
) -> ClosedQuestion | None:
    """'Is the red circle on the left, in the center, or on the right?' (axis 'x'), or top/middle/bottom."""
    ref = referring_expression(obj, scene, avoid="position")
    if ref is None:
        return None
    row, col = obj.cell
    if axis == "x":
        return ClosedQuestion("position", word(pool, "position_x", ref, rng), HORIZONTAL[col], HORIZONTAL)
    return ClosedQuestion("position", word(pool, "position_y", ref, rng), VERTICAL[row], VERTICAL)


def closed_question(
    question_type: str,
    scene: Scene,
    rng: random.Random,
    pool: str = "train",
    wording_rng: random.Random | None = None,
) -> ClosedQuestion | None:
    """One question of the given type about a random object (None if the type does not apply).

    ``rng`` picks the object (and axis); ``wording_rng`` picks a wording from ``pool``, or
    None for the pool's first. Two calls with equal ``rng`` states ask about the same object
    whatever the wording.
    """
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"question_type={question_type!r}; valid: {list(QUESTION_TYPES)}")
    obj = rng.choice(scene.objects)
    if question_type == "colour":
        return colour_question(obj, scene, pool, wording_rng)
    if question_type == "shape":
        return shape_question(obj, scene, pool, wording_rng)
    if question_type == "count":
        return count_question(scene, pool, wording_rng)
    return position_question(obj, scene, rng.choice(("x", "y")), pool, wording_rng)


def chat_questions(scene: Scene, rng: random.Random, pool: str = "train") -> list[str]:
    """Free-form questions for a shown chat, one per closed-form type, about random objects:
    how many, a colour, a shape, and where one is (answers are checked by ``synthetic.checker``)."""
    colour = colour_question(rng.choice(scene.objects), scene, pool, rng).question
    shape = shape_question(rng.choice(scene.objects), scene, pool, rng).question
    questions = [count_question(scene, pool, rng).question, colour, shape]
    refs = [r for o in scene.objects if (r := referring_expression(o, scene, avoid="position"))]
    if refs:
        questions.append(f"Where is {rng.choice(refs)}?")
    return questions
