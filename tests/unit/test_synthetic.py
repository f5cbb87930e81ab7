"""The synthetic world: deterministic, valid COCO, disjoint splits, truthful captions and tasks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_lite.modeling.tokenizer import default_corpus
from llava_lite.symbolic import load_coco
from llava_lite.synthetic import COLORS, SHAPES, SPLITS, build_world, load_scenes
from llava_lite.synthetic.checker import check_turns
from llava_lite.synthetic.context import ContextInsufficient, parse_context
from llava_lite.synthetic.questions import WORDINGS
from llava_lite.synthetic.render import visible_areas
from llava_lite.synthetic.scene import SIZES as OBJECT_SIZES
from llava_lite.synthetic.scene import Scene, SceneObject
from llava_lite.synthetic.tasks import caption_records, chance_by_type, eval_questions

SIZES = {"n_train": 40, "n_val": 8, "n_test": 16, "image_size": 96}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return build_world(tmp_path_factory.mktemp("world"), seed=3, **SIZES)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_world_is_deterministic_from_seed(world, tmp_path: Path) -> None:
    again = build_world(tmp_path / "again", seed=3, **SIZES)
    other = build_world(tmp_path / "other", seed=4, **SIZES)
    assert _digest(again.root) == _digest(world.root)
    assert _digest(other.root) != _digest(world.root)


def test_an_image_does_not_depend_on_other_split_sizes(world, tmp_path: Path) -> None:
    bigger = build_world(tmp_path / "bigger", seed=3, **{**SIZES, "n_val": 20})
    name = "test/2000005.png"
    assert (bigger.image_root / name).read_bytes() == (world.image_root / name).read_bytes()


@pytest.mark.parametrize("split", SPLITS)
def test_annotations_are_valid_coco(world, split: str) -> None:
    inst = json.loads(world.instances(split).read_text())
    caps = json.loads(world.captions(split).read_text())
    images = {im["id"]: im for im in inst["images"]}
    assert len(images) == len(inst["images"]) == SIZES[f"n_{split}"]
    assert [im["id"] for im in caps["images"]] == [im["id"] for im in inst["images"]]
    assert [c["name"] for c in inst["categories"]] == list(SHAPES)
    cat_ids = {c["id"] for c in inst["categories"]}
    ann_ids = [a["id"] for a in inst["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    per_image: dict[int, int] = {}
    for a in inst["annotations"]:
        assert a["image_id"] in images and a["category_id"] in cat_ids
        assert a["iscrowd"] == 0 and a["area"] > 0
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert a["attributes"]["color"] in COLORS
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert set(per_image) == set(images) and all(1 <= n <= 4 for n in per_image.values())
    cap_counts: dict[int, int] = {}
    for c in caps["annotations"]:
        cap_counts[c["image_id"]] = cap_counts.get(c["image_id"], 0) + 1
    assert set(cap_counts.values()) == {5}
    for im in inst["images"]:
        with Image.open(world.image_root / im["file_name"]) as pil:
            assert pil.size == (im["width"], im["height"]) and pil.mode == "RGB"


def test_splits_are_disjoint(world) -> None:
    ids, files = [], []
    for split in SPLITS:
        inst = json.loads(world.instances(split).read_text())
        ids += [im["id"] for im in inst["images"]]
        files += [im["file_name"] for im in inst["images"]]
    assert len(ids) == len(set(ids)) and len(files) == len(set(files))


def test_every_object_is_visible_and_drawn_in_its_colour(world) -> None:
    for scene in load_scenes(world, "train"):
        assert all(frac >= 0.75 for _, frac in visible_areas(scene))
        pixels = np.asarray(Image.open(world.image_root / f"train/{scene.image_id:07d}.png"))
        for obj in scene.objects:
            cx, cy = (int(v) for v in obj.center)
            if obj.shape == "triangle":  # the centre of a box is inside every shape but the apex region
                cy += int(obj.bbox[3] / 4)
            drawn = [
                o
                for o in scene.objects
                if o.bbox[0] <= cx < o.bbox[0] + o.bbox[2] and o.bbox[1] <= cy < o.bbox[1] + o.bbox[3]
            ]
            if drawn[-1] is obj:  # not occluded at its centre
                assert np.abs(pixels[cy, cx].astype(int) - COLORS[obj.color]).max() < 40


def test_world_has_the_promised_variety(tmp_path: Path) -> None:
    world = build_world(tmp_path, n_train=150, n_val=0, n_test=0, image_size=64, seed=0)
    objs = [o for s in load_scenes(world, "train") for o in s.objects]
    assert {o.color for o in objs} == set(COLORS) and {o.shape for o in objs} == set(SHAPES)
    assert {o.size for o in objs} == {"small", "large"}
    assert {len(s.objects) for s in load_scenes(world, "train")} == {1, 2, 3, 4}
    assert len({o.cell for o in objs}) == 9


def test_captions_are_true_of_the_scene(world) -> None:
    contexts = {c.image_id: c for c in load_coco(world.captions("val"), world.instances("val"))}
    for scene in load_scenes(world, "val"):
        caps = contexts[scene.image_id].captions
        joined = " ".join(caps).lower()
        for obj in scene.objects:
            assert f"{obj.noun()} " in caps[0].lower() and obj.color in joined
        result = check_turns([("", c) for c in caps], scene)
        assert result.ok, result.problems


def test_stage1_caption_records(world) -> None:
    records = caption_records(world, "train", captions_per_image=2, seed=0)
    assert len(records) == 2 * SIZES["n_train"]
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert (world.image_root / r["image"]).is_file()
        human, gpt = r["conversations"]
        assert human == {"from": "human", "value": "<image>"}
        assert gpt["from"] == "gpt" and gpt["value"] and "<image>" not in gpt["value"]
    with pytest.raises(ValueError, match="captions_per_image"):
        caption_records(world, "train", captions_per_image=6)


@pytest.mark.parametrize("wording", ["canonical", "paraphrased"])
def test_eval_questions_are_held_out_correct_and_chance_is_known(world, wording: str) -> None:
    records = eval_questions(world, "test", seed=0, wording=wording)
    test_images = {im["file_name"] for im in json.loads(world.instances("test").read_text())["images"]}
    assert {r["image"] for r in records} <= test_images
    assert {r["question_type"] for r in records} == {"colour", "shape", "count", "position"}
    scenes = {s.image_id: s for s in load_scenes(world, "test")}
    for r in records:
        assert r["answer"] in r["choices"] and r["conversations"][1]["value"] == r["answer"]
        question = r["conversations"][0]["value"]
        assert question.startswith("<image>\n") and question.count("<image>") == 1
        result = check_turns([(question.removeprefix("<image>\n"), r["answer"])], scenes[int(r["id"][:7])])
        assert result.ok and result.checked >= 1, (r, result)
    chance = chance_by_type(records)
    assert chance["colour"] == pytest.approx(1 / 6) and chance["shape"] == pytest.approx(1 / 4)
    assert chance["count"] == pytest.approx(1 / 4) and chance["position"] == pytest.approx(1 / 3)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_world(tmp_path, 1, 1, 1, image_size=16)
    with pytest.raises(ValueError, match="split sizes"):
        build_world(tmp_path, -1, 1, 1)


def test_parsed_scene_equals_ground_truth(world) -> None:
    truth = {s.image_id: s for s in load_scenes(world, "train")}
    for ctx in load_coco(world.captions("train"), world.instances("train")):
        parsed = parse_context(ctx)
        want = truth[ctx.image_id].objects
        assert [(o.shape, o.color, o.size, o.cell) for o in parsed.objects] == [
            (o.shape, o.color, o.size, o.cell) for o in want
        ]


def test_context_that_does_not_describe_every_box_is_refused(world) -> None:
    ctx = load_coco(world.captions("train"), world.instances("train"))[0]
    box = ctx.objects[0]
    wrong_shape = next(s for s in SHAPES if s != box.category)
    for bad, says in (
        (dataclasses.replace(ctx, captions=("Some shapes.",)), "no caption describes"),
        (dataclasses.replace(ctx, objects=()), "no object boxes"),
        (
            dataclasses.replace(ctx, objects=(dataclasses.replace(box, category=wrong_shape),)),
            "captions put a",
        ),
    ):
        with pytest.raises(ContextInsufficient, match=says) as err:
            parse_context(bad)
        assert f"image {ctx.image_id} ({ctx.file_name})" in str(err.value)


def test_the_library_corpus_does_not_describe_this_world() -> None:
    """The tiny tokenizers' built-in corpus is generic; the demo trains on the world's own text."""
    text = " ".join(default_corpus()).lower()
    looks = [f"{c} {s}" for c in COLORS for s in SHAPES] + [f"{z} {c}" for z in OBJECT_SIZES for c in COLORS]
    found = [phrase for phrase in looks if phrase in text]
    assert not found, f"tiny_corpus.txt describes the synthetic world: {found}"


def test_paraphrased_questions_ask_about_the_same_objects_in_other_words(world) -> None:
    canonical = eval_questions(world, "test", seed=0)
    paraphrased = eval_questions(world, "test", seed=0, wording="paraphrased")
    assert [r["answer"] for r in canonical] == [r["answer"] for r in paraphrased]
    assert [r["id"] + "_para" for r in canonical] == [r["id"] for r in paraphrased]
    asked = [
        (a["conversations"][0]["value"], b["conversations"][0]["value"])
        for a, b in zip(canonical, paraphrased, strict=True)
    ]
    assert all(a != b for a, b in asked)
    counting = {b["conversations"][0]["value"] for b in paraphrased if b["question_type"] == "count"}
    assert len(counting) >= 3  # several held-out wordings, not one fixed phrase
    with pytest.raises(ValueError, match="wording='poetic'; valid"):
        eval_questions(world, "test", wording="poetic")


def test_chat_questions_are_checked_claim_by_claim(world) -> None:
    """A truthful chat passes every claim; one wrong word in an answer is caught."""
    import random

    from llava_lite.synthetic.questions import chat_questions

    for scene in load_scenes(world, "test"):
        questions = chat_questions(scene, random.Random(scene.image_id))
        assert len(questions) >= 3 and questions[0] in WORDINGS["train"]["count"]
        n = len(scene.objects)
        truthful = [(questions[0], f"There are {n} objects.")]
        assert check_turns(truthful, scene).ok and check_turns(truthful, scene).checked == 1
        wrong = [(questions[0], f"There are {n % 4 + 1} objects.")]
        assert not check_turns(wrong, scene).ok


def _scene(*objects: tuple[str, str, str, tuple[int, int]]) -> Scene:
    return Scene(
        0, 96, 96, tuple(SceneObject(sh, co, si, cell, (0, 0, 8, 8)) for sh, co, si, cell in objects)
    )


# A large blue cross in the top left, a small yellow triangle at the top, a large orange cross at the bottom.
_THREE = _scene(
    ("cross", "blue", "large", (0, 0)),
    ("triangle", "yellow", "small", (0, 1)),
    ("cross", "orange", "large", (2, 1)),
)
_TRUE_DESCRIPTION = (
    "The image shows three simple shapes on a plain dark background. A large blue cross sits in the top left. "
    "At the top there is a small yellow triangle. At the bottom of the picture we see a large orange cross. "
    "The triangle is above the orange cross. The colors present are blue, orange and yellow. "
    "Two of them are large and one is small."
)


def test_a_true_description_passes_every_claim() -> None:
    result = check_turns([("Describe the image.", _TRUE_DESCRIPTION)], _THREE, description=True)
    # 3 objects named, the count, 4 nouns that must exist (the relation names one), 3 places,
    # the relation, the colours, the sizes
    assert result.ok, result.problems
    assert result.checked == 3 + 1 + 4 + 3 + 3


@pytest.mark.parametrize(
    ("true", "false", "caught"),
    [
        (
            "A large blue cross sits in the top left.",
            "A large blue cross sits in the top right.",
            "nothing there",
        ),
        (
            "At the top there is a small yellow triangle.",
            "In the center there is a small yellow triangle.",
            "nothing",
        ),
        ("At the bottom of the picture", "In the top left of the picture", "large blue cross there"),
        ("The triangle is above the orange cross.", "The triangle is below the orange cross.", "not so"),
        ("The triangle is above the orange cross.", "The cross is above the triangle.", "matches 2 objects"),
        ("blue, orange and yellow", "blue and yellow", "the colours are"),
        (
            "Two of them are large and one is small.",
            "One of them is large and two are small.",
            "truth 2 large",
        ),
    ],
)
def test_a_false_description_claim_is_caught(true: str, false: str, caught: str) -> None:
    assert true in _TRUE_DESCRIPTION
    result = check_turns([("Describe.", _TRUE_DESCRIPTION.replace(true, false))], _THREE, description=True)
    assert any(caught in p for p in result.problems), result.problems


def test_one_place_named_twice_is_wrong() -> None:
    scene = _scene(("cross", "green", "small", (1, 0)), ("circle", "red", "large", (2, 2)))
    right = (
        "There are two objects: a small green cross on the left and a large red circle in the bottom right."
    )
    twice = "There are two objects: a small green cross on the left and a small green cross on the left."
    question = WORDINGS["train"]["count"][0]
    assert check_turns([(question, right)], scene).ok
    result = check_turns([(question, twice)], scene)
    assert [p for p in result.problems if "names the left twice" in p], result.problems


def test_every_train_and_held_out_wording_is_checked() -> None:
    """A chat may ask in any wording of either pool: each is recognised and its answer compared."""
    for pool in WORDINGS.values():
        for frame in pool["colour"]:
            question = frame.format(ref="the triangle", Ref="The triangle")
            assert check_turns([(question, "The triangle is yellow.")], _THREE).ok, question
            assert not check_turns([(question, "The triangle is blue.")], _THREE).ok, question
        for key in ("position_x", "position_y"):
            for frame in pool[key]:
                question = frame.format(ref="the triangle", Ref="The triangle")
                wrong = "bottom" if key == "position_y" else "left"
                assert not check_turns([(question, wrong)], _THREE).ok, question


def test_eval_questions_in_an_added_pool_ask_about_the_same_objects(world, monkeypatch) -> None:
    """A pool added to WORDINGS (as benchmarks/demo_wordings.py does) is asked like the others."""
    extra = {
        key: (f"[{key}] {{ref}}?" if "{ref}" in frames[0] else f"[{key}]?",)
        for key, frames in WORDINGS["train"].items()
    }
    monkeypatch.setitem(WORDINGS, "extra", extra)
    canonical = eval_questions(world, "test", wording="canonical")
    asked = eval_questions(world, "test", wording="extra")
    assert [r["id"] for r in asked] == [r["id"] + "_extra" for r in canonical]
    assert [r["answer"] for r in asked] == [r["answer"] for r in canonical]
    assert all(r["conversations"][0]["value"].split("\n")[1].startswith("[") for r in asked)


def test_varied_pool_holds_the_train_frames_and_indirect_questions_never_a_held_out_one() -> None:
    """The drills' ``varied`` pool: the teacher's frames, the same after a lead-in, and requests."""
    for key, train in WORDINGS["train"].items():
        varied = WORDINGS["varied"][key]
        assert set(train) <= set(varied) and len(varied) == len(set(varied)) > 4 * len(train)
        assert not set(varied) & set(WORDINGS["held_out"][key])
        assert any(f.startswith("Could you tell me ") for f in varied), key
        for frame in varied:  # filled like any frame: the object named once, or none for count
            question = frame.format(ref="the red circle", Ref="The red circle")
            assert question.lower().count("the red circle") == (key != "count"), frame
