"""Five varied captions per image, the way COCO annotators describe one picture five times.

Together they carry colour, shape, size, count and position. The first two always list
every object as "<size> <colour> <shape> <in/on/at> the <position>", which is how colour
and size reach a text-only teacher: COCO categories name only the shape, and the boxes
say where each shape is, so a teacher links a caption's "red circle in the top left"
to the circle box in the top-left cell. The other three vary the angle (counts, colours,
one spatial relation) like real captions do.
"""

from __future__ import annotations

import random
from collections import Counter

from llava_lite.synthetic.language import (
    article,
    capitalize,
    count_phrase,
    join_and,
    located,
    number_word,
    plural,
)
from llava_lite.synthetic.scene import Scene, SceneObject

_LIST_INTROS = (
    "{n} {objects} on a dark background: {items}.",
    "A picture of {n} {objects}: {items}.",
    "An image showing {items}.",
    "This picture contains {items}.",
    "There is {items}.",
)
_SINGLE_INTROS = (
    "A single {item} on a dark background.",
    "An image with only {item}.",
    "There is just {item}.",
)


def _item(obj: SceneObject) -> str:
    return f"{article(obj.noun())} {located(obj.position)}"


def _reading_order(objects: tuple[SceneObject, ...]) -> list[SceneObject]:
    return sorted(objects, key=lambda o: o.cell)


def _list_caption(rng: random.Random, scene: Scene, shuffled: bool) -> str:
    objs = _reading_order(scene.objects)
    if shuffled:
        rng.shuffle(objs)
    if len(objs) == 1:
        return rng.choice(_SINGLE_INTROS).format(item=_item(objs[0]))
    template = rng.choice(_LIST_INTROS)
    objects = rng.choice(("shapes", "objects"))
    return capitalize(
        template.format(n=number_word(len(objs)), objects=objects, items=join_and([_item(o) for o in objs]))
    )


def _count_caption(rng: random.Random, scene: Scene) -> str:
    n = len(scene.objects)
    by_shape = Counter(o.shape for o in scene.objects)
    shapes = join_and([count_phrase(k, s) if k > 1 else article(s) for s, k in sorted(by_shape.items())])
    if n == 1:
        return f"There is only one object in the image, {article(scene.objects[0].noun(size=False))}."
    return rng.choice(
        (
            f"There are {number_word(n)} objects: {shapes}.",
            f"{capitalize(number_word(n))} shapes in total: {shapes}.",
            f"The image has {shapes}, {number_word(n)} objects altogether.",
        )
    )


def _color_caption(rng: random.Random, scene: Scene) -> str:
    groups = Counter(o.noun(size=False) for o in rng.sample(list(scene.objects), len(scene.objects)))
    nouns = [count_phrase(k, noun) if k > 1 else article(noun) for noun, k in groups.items()]
    colors = sorted({o.color for o in scene.objects})
    return rng.choice(
        (
            f"{capitalize(join_and(nouns))} on a plain dark background.",
            f"Simple {plural('shape', len(scene.objects))} colored {join_and(colors)}.",
            f"A dark image with {join_and(nouns)}.",
        )
    )


def _relation_caption(rng: random.Random, scene: Scene) -> str:
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        return f"{capitalize(article(obj.noun(size=False)))} sits alone {located(obj.position)} of the image."
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a.noun(size=False) != b.noun(size=False)]
    if not pairs:  # every object is the same coloured shape
        obj = scene.objects[0]
        return f"{capitalize(count_phrase(len(scene.objects), obj.noun(size=False)))} and nothing else."
    a, b = rng.choice(pairs)
    (ra, ca), (rb, cb) = a.cell, b.cell
    if ca != cb and (ra == rb or rng.random() < 0.5):
        relation = "to the left of" if ca < cb else "to the right of"
    else:
        relation = "above" if ra < rb else "below"
    return f"The {a.noun(size=False)} is {relation} the {b.noun(size=False)}."


def scene_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Five captions for one scene, deterministic given ``rng``'s state."""
    return [
        _list_caption(rng, scene, shuffled=False),
        _count_caption(rng, scene),
        _list_caption(rng, scene, shuffled=True),
        _color_caption(rng, scene),
        _relation_caption(rng, scene),
    ]
