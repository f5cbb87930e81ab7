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

from llava_lite.synthetic import language
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
    return f"{language.article(obj.noun())} {language.located(obj.position)}"


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
    return language.capitalize(
        template.format(
            n=language.number_word(len(objs)),
            objects=objects,
            items=language.join_and([_item(o) for o in objs]),
        )
    )


def _count_caption(rng: random.Random, scene: Scene) -> str:
    n = len(scene.objects)
    by_shape = Counter(o.shape for o in scene.objects)
    shapes = language.join_and(
        [language.count_phrase(k, s) if k > 1 else language.article(s) for s, k in sorted(by_shape.items())]
    )
    if n == 1:
        return (
            f"There is only one object in the image, {language.article(scene.objects[0].noun(size=False))}."
        )
    return rng.choice(
        (
            f"There are {language.number_word(n)} objects: {shapes}.",
            f"{language.capitalize(language.number_word(n))} shapes in total: {shapes}.",
            f"The image has {shapes}, {language.number_word(n)} objects altogether.",
        )
    )


def _color_caption(rng: random.Random, scene: Scene) -> str:
    groups = Counter(o.noun(size=False) for o in rng.sample(list(scene.objects), len(scene.objects)))
    nouns = [
        language.count_phrase(k, noun) if k > 1 else language.article(noun) for noun, k in groups.items()
    ]
    colors = sorted({o.color for o in scene.objects})
    return rng.choice(
        (
            f"{language.capitalize(language.join_and(nouns))} on a plain dark background.",
            f"Simple {language.plural('shape', len(scene.objects))} colored {language.join_and(colors)}.",
            f"A dark image with {language.join_and(nouns)}.",
        )
    )


def _relation_caption(rng: random.Random, scene: Scene) -> str:
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        return f"{language.capitalize(language.article(obj.noun(size=False)))} sits alone {language.located(obj.position)} of the image."
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a.noun(size=False) != b.noun(size=False)]
    if not pairs:  # every object is the same coloured shape
        obj = scene.objects[0]
        return f"{language.capitalize(language.count_phrase(len(scene.objects), obj.noun(size=False)))} and nothing else."
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
