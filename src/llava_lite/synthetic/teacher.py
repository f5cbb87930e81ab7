"""The world's rule-based teacher: the three LLaVA response types from the symbolic context alone.

It reads exactly what the Claude teacher reads (captions + ``category: [box]`` lines) and
never the world's hidden state: shapes and positions come from the boxes, colour and size
from captions that say "<size> <colour> <shape> <in/on/at> the <position>" (this world
writes such captions; see :mod:`llava_lite.synthetic.captions`), so it lives beside the
world, not in :mod:`llava_lite.generation`. A box that no caption describes is a
``TeacherError("context_insufficient")``, counted by the pipeline like any other rejected
reply. Answers are true of the image by construction and varied in wording; each reply is
deterministic from the teacher's seed and the request.

The generation run finds it through its config: ``llava-lite-generate teacher=offline``
(``conf/teacher/offline.yaml``, ``_target_: llava_lite.synthetic.OfflineTeacher``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from llava_lite.generation.base import GenerationRequest, TeacherError, TeacherReply, Usage
from llava_lite.symbolic import SymbolicContext
from llava_lite.synthetic.context import ContextInsufficient, parse_context
from llava_lite.synthetic.language import (
    article,
    capitalize,
    count_phrase,
    join_and,
    located,
    number_word,
    plural,
)
from llava_lite.synthetic.questions import (
    DETAIL_INSTRUCTIONS,
    QUESTION_TYPES,
    SHORT_ANSWER_PROMPT,
    closed_question,
    referring_expression,
    word,
)
from llava_lite.synthetic.scene import COLORS, SHAPES, Scene, SceneObject

Turn = tuple[str, str]


def _scene(context: SymbolicContext) -> Scene:
    """The scene the captions and boxes describe; one that they do not is a teacher error."""
    try:
        return parse_context(context)
    except ContextInsufficient as e:
        raise TeacherError("context_insufficient", str(e)) from e


def _list(objs: list[SceneObject] | tuple[SceneObject, ...], with_position: bool = True) -> str:
    items = [article(o.noun()) + (" " + located(o.position) if with_position else "") for o in objs]
    return join_and(items)


def _all(n: int) -> str:
    return "Both" if n == 2 else f"All {number_word(n)}"


def _reading(scene: Scene) -> list[SceneObject]:
    return sorted(scene.objects, key=lambda o: o.cell)


# ---- conversation turns: each returns (question, answer) or None when it does not apply ----
def _count_all(scene: Scene, rng: random.Random) -> Turn | None:
    n = len(scene.objects)
    q = word("train", "count", rng=rng)
    if n == 1:
        return q, f"There is just one object: {_list(scene.objects)}."
    return q, f"There are {number_word(n)} objects: {_list(_reading(scene))}."


def _count_kind(scene: Scene, rng: random.Random) -> Turn | None:
    if rng.random() < 0.5:
        shape = rng.choice(SHAPES)
        objs = [o for o in scene.objects if o.shape == shape]
        q = rng.choice(
            (f"How many {plural(shape)} are there?", f"How many {plural(shape)} can you find in the image?")
        )
        noun = shape
    else:
        color = rng.choice(list(COLORS))
        objs = [o for o in scene.objects if o.color == color]
        q = rng.choice(
            (f"How many {color} objects are there?", f"How many {color} shapes does the image contain?")
        )
        noun = f"{color} {rng.choice(('object', 'shape'))}"
    k = len(objs)
    if k == 0:
        return q, f"There are no {plural(noun)} in the image."
    verb = "is" if k == 1 else "are"
    return q, f"There {verb} {count_phrase(k, noun)}: {_list(objs)}."


def _colour_of(scene: Scene, rng: random.Random) -> Turn | None:
    obj = rng.choice(scene.objects)
    ref = referring_expression(obj, scene, avoid="color")
    return word("train", "colour", ref, rng), f"{capitalize(ref)} is {obj.color}."


def _shape_of(scene: Scene, rng: random.Random) -> Turn | None:
    obj = rng.choice(scene.objects)
    ref = referring_expression(obj, scene, avoid="shape")
    return word("train", "shape", ref, rng), f"{capitalize(ref)} is {article(obj.shape)}."


def _where(scene: Scene, rng: random.Random) -> Turn | None:
    obj = rng.choice(scene.objects)
    ref = referring_expression(obj, scene, avoid="position")
    if ref is None:
        return None
    q = rng.choice(
        (
            f"Where is {ref}?",
            f"Where in the image is {ref} located?",
            f"In which part of the picture is {ref}?",
        )
    )
    return q, f"{capitalize(ref)} is {located(obj.position)} of the image."


def _exists(scene: Scene, rng: random.Random) -> Turn | None:
    if rng.random() < 0.5:
        obj = rng.choice(scene.objects)
        color, shape = obj.color, obj.shape
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    objs = [o for o in scene.objects if (o.color, o.shape) == (color, shape)]
    q = rng.choice(
        (
            f"Is there {article(f'{color} {shape}')} in the image?",
            f"Can you see {article(f'{color} {shape}')}?",
        )
    )
    if not objs:
        return (
            q,
            f"No, there is no {color} {shape} in the image. It shows {_list(_reading(scene), with_position=False)}.",
        )
    if len(objs) == 1:
        return q, f"Yes, there is {article(objs[0].noun())} {located(objs[0].position)}."
    return q, f"Yes, there are {count_phrase(len(objs), f'{color} {shape}')}: {_list(objs)}."


def _relation(scene: Scene, rng: random.Random) -> Turn | None:
    if len(scene.objects) < 2:
        return None
    a, b = rng.sample(list(scene.objects), 2)
    ra, rb = referring_expression(a, scene), referring_expression(b, scene)
    horizontal = a.cell[1] != b.cell[1] and (a.cell[0] == b.cell[0] or rng.random() < 0.5)
    if horizontal:
        asked = rng.choice(("to the left of", "to the right of"))
        true = "to the left of" if a.cell[1] < b.cell[1] else "to the right of"
    else:
        asked = rng.choice(("above", "below"))
        true = "above" if a.cell[0] < b.cell[0] else "below"
    q = f"Is {ra} {asked} {rb}?"
    if asked == true:
        return q, f"Yes, {ra} is {true} {rb}."
    return q, f"No, {ra} is {true} {rb}."


def _size(scene: Scene, rng: random.Random) -> Turn | None:
    obj = rng.choice(scene.objects)
    pair = [o for o in scene.objects if o.size != obj.size]
    if pair and rng.random() < 0.5:
        other = rng.choice(pair)
        ra, rb = referring_expression(obj, scene), referring_expression(other, scene)
        big = ra if obj.size == "large" else rb
        return f"Which is bigger, {ra} or {rb}?", f"{capitalize(big)} is bigger."
    ref = referring_expression(obj, scene, avoid="size")
    return f"Is {ref} large or small?", f"{capitalize(ref)} is {obj.size}."


def _short(scene: Scene, rng: random.Random) -> Turn | None:
    cq = closed_question(rng.choice(QUESTION_TYPES), scene, rng, "train", wording_rng=rng)
    if cq is None:
        return None
    return f"{cq.question}\n{SHORT_ANSWER_PROMPT}", cq.answer


_LONG_TURNS: tuple[Callable[[Scene, random.Random], Turn | None], ...] = (
    _count_all, _count_kind, _colour_of, _shape_of, _where, _exists, _relation, _size,
)  # fmt: skip


# ---- detailed description ---------------------------------------------------------------
def _describe(scene: Scene, rng: random.Random) -> str:
    n = len(scene.objects)
    objs = _reading(scene)
    if n == 1:
        sentences = [f"The image shows a single {objs[0].noun()} on a plain dark background."]
    else:
        sentences = [f"The image shows {number_word(n)} simple shapes on a plain dark background."]
    for o in objs:
        sentences.append(
            rng.choice(
                (
                    f"{capitalize(located(o.position))} there is {article(o.noun())}.",
                    f"{capitalize(article(o.noun()))} sits {located(o.position)}.",
                    f"{capitalize(located(o.position))} of the picture we see {article(o.noun())}.",
                )
            )
        )
    if n > 1:
        sentences.append(_relation(scene, rng)[1].removeprefix("Yes, ").removeprefix("No, ").capitalize())
        colors = sorted({o.color for o in objs})
        sentences.append(
            f"The colors present are {join_and(colors)}."
            if len(colors) > 1
            else f"All of them are {colors[0]}."
        )
        sizes = Counter(o.size for o in objs)
        if len(sizes) == 1:
            sentences.append(f"{_all(n)} objects are {objs[0].size}.")
        else:
            sentences.append(
                f"{capitalize(number_word(sizes['large']))} of them {'is' if sizes['large'] == 1 else 'are'} large "
                f"and {number_word(sizes['small'])} {'is' if sizes['small'] == 1 else 'are'} small."
            )
    return " ".join(sentences)


# ---- complex reasoning ------------------------------------------------------------------
def _remove_one(scene: Scene, rng: random.Random) -> Turn | None:
    obj = rng.choice(scene.objects)
    ref = referring_expression(obj, scene)
    n = len(scene.objects)
    q = f"If {ref} were taken out of the picture, how many objects would remain?"
    if n == 1:
        return (
            q,
            f"{capitalize(ref)} is the only object in the image, so removing it would leave an empty picture: zero objects.",
        )
    rest = [o for o in _reading(scene) if o is not obj]
    return q, (
        f"The image contains {number_word(n)} objects. Removing {ref} leaves {number_word(n - 1)}: {_list(rest)}."
    )


def _extreme(scene: Scene, rng: random.Random) -> Turn | None:
    axis, word, key = rng.choice(((1, "furthest to the left", min), (1, "furthest to the right", max),
                                  (0, "highest up", min), (0, "lowest", max)))  # fmt: skip
    best = key(o.cell[axis] for o in scene.objects)
    winners = [o for o in scene.objects if o.cell[axis] == best]
    q = f"Which object is {word} in the image, and what color is it?"
    if len(winners) > 1:
        return q, (
            f"There is a tie: {_list(winners)} are equally far, so no single object is {word}. "
            f"Their colors are {join_and(sorted({o.color for o in winners}))}."
        )
    w = winners[0]
    others = [o for o in scene.objects if o is not w]
    reason = f" The other objects, {_list(others, with_position=True)}, are not as far." if others else ""
    return q, f"The {w.noun()} {located(w.position)} is {word}, and it is {w.color}.{reason}"


def _majority_colour(scene: Scene, rng: random.Random) -> Turn | None:
    counts = Counter(o.color for o in scene.objects)
    top = max(counts.values())
    leaders = sorted(c for c, k in counts.items() if k == top)
    q = "Which color appears most often among the objects, and how many objects have it?"
    listing = join_and([f"{number_word(k)} {c}" for c, k in sorted(counts.items())])
    if len(leaders) > 1:
        return (
            q,
            f"Counting by color gives {listing}, so no color is most frequent: {join_and(leaders)} are tied with {number_word(top)} each.",
        )
    return (
        q,
        f"Counting by color gives {listing}, so {leaders[0]} appears most often, on {count_phrase(top, 'object')}.",
    )


def _same_size(scene: Scene, rng: random.Random) -> Turn | None:
    q = "Are all the objects in the image the same size? Explain."
    sizes = {o.size for o in scene.objects}
    if len(scene.objects) == 1:
        return (
            q,
            f"There is only one object, {article(scene.objects[0].noun())}, so there is nothing to compare it with.",
        )
    if len(sizes) == 1:
        return (
            q,
            f"Yes. {_all(len(scene.objects))} objects are {next(iter(sizes))}: {_list(_reading(scene), False)}.",
        )
    large = [o for o in _reading(scene) if o.size == "large"]
    small = [o for o in _reading(scene) if o.size == "small"]
    return (
        q,
        f"No. {capitalize(_list(large, False))} {'is' if len(large) == 1 else 'are'} large, while {_list(small, False)} {'is' if len(small) == 1 else 'are'} small.",
    )


def _add_one(scene: Scene, rng: random.Random) -> Turn | None:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    k = sum(o.shape == shape for o in scene.objects)
    q = f"If I added {article(f'{color} {shape}')} to this picture, how many {plural(shape)} would there be?"
    now = (
        f"there {'is' if k == 1 else 'are'} {count_phrase(k, shape)}"
        if k
        else f"there are no {plural(shape)}"
    )
    return q, f"Right now {now}, so after adding one there would be {count_phrase(k + 1, shape)}."


_REASONING: tuple[Callable[[Scene, random.Random], Turn | None], ...] = (
    _remove_one, _extreme, _majority_colour, _same_size, _add_one,
)  # fmt: skip


def _stem(question: str) -> str:
    return question.removesuffix(f"\n{SHORT_ANSWER_PROMPT}")


class OfflineTeacher:
    """Implements ``llava_lite.generation.base.Teacher`` with rules instead of an LLM.

    ``short_answer_rate`` is the share of conversation turns asked in closed form (one word
    or number, with ``SHORT_ANSWER_PROMPT``), which teaches the evaluation's answer format.
    """

    def __init__(self, seed: int = 0, short_answer_rate: float = 0.4, min_turns: int = 3, max_turns: int = 6,
                 model: str = "offline-rules-v1") -> None:  # fmt: skip
        if not 0.0 <= short_answer_rate <= 1.0:
            raise ValueError(f"short_answer_rate={short_answer_rate} must be in [0, 1]")
        if not 1 <= min_turns <= max_turns:
            raise ValueError(f"need 1 <= min_turns <= max_turns; got {min_turns}, {max_turns}")
        self.name = "offline"
        self.seed = seed
        self.short_answer_rate = short_answer_rate
        self.min_turns, self.max_turns = min_turns, max_turns
        self.model = model

    async def generate(self, request: GenerationRequest) -> TeacherReply:
        scene = _scene(request.context)
        key = f"{self.seed}:{request.context.image_id}:{request.response_type}:{request.sample_index}:{request.instruction}"
        rng = random.Random(key)
        if request.response_type == "conversation":
            turns = self._conversation(scene, rng)
        elif request.response_type == "detail":
            turns = [(request.instruction or rng.choice(DETAIL_INSTRUCTIONS), _describe(scene, rng))]
        elif request.response_type == "complex_reasoning":
            turns = [self._first(_REASONING, scene, rng)]
        else:
            raise TeacherError("unknown_response_type", repr(request.response_type))
        return TeacherReply(turns=turns, model=self.model, usage=Usage(), raw=None)

    def _conversation(self, scene: Scene, rng: random.Random) -> list[Turn]:
        turns: list[Turn] = []
        target = rng.randint(self.min_turns, self.max_turns)
        for _ in range(4 * target):  # bounded: duplicates and inapplicable turns are redrawn
            if len(turns) == target:
                break
            if rng.random() < self.short_answer_rate:
                turn = _short(scene, rng)
            else:
                turn = rng.choice(_LONG_TURNS)(scene, rng)
            if turn is not None and all(_stem(turn[0]) != _stem(q) for q, _ in turns):
                turns.append(turn)
        return turns

    @staticmethod
    def _first(
        makers: tuple[Callable[[Scene, random.Random], Turn | None], ...], scene: Scene, rng: random.Random
    ) -> Turn:
        for maker in rng.sample(makers, len(makers)):
            turn = maker(scene, rng)
            if turn is not None:
                return turn
        raise TeacherError("no_applicable_question", f"image {scene.image_id}")
