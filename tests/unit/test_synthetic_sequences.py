"""The synthetic world's two-image questions and clips: answers true to the pixels, records the
data pipeline reads, and scoring that counts a reply by the answer it opens with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaDataset, LlavaProcessor
from llava_lite.modeling import LlavaModel
from llava_lite.synthetic.scene import COLORS
from llava_lite.synthetic.sequences import TASKS, answer_word, build_sequence_tasks, chance, score


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("sequences")
    path = build_sequence_tasks(root, "train", 40, seed=3)
    return root, [json.loads(line) for line in path.read_text().splitlines()]


def _red_pixels(path: Path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    return int((np.abs(rgb - np.array(COLORS["red"])).max(axis=-1) < 30).sum())


def _centre(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    ys, xs = np.nonzero(rgb.max(axis=-1) > 80)  # the square on the dark background
    return np.array([xs.mean(), ys.mean()])


def test_answers_are_true_to_the_pixels(world) -> None:
    root, records = world
    assert [r["task"] for r in records] == [t for t in TASKS for _ in range(40)]
    for r in records:
        assert r["conversations"][1]["value"] == r["answer"].capitalize() + "."
        if r["task"] == "red_in_both":
            both = all(_red_pixels(root / p) > 10 for p in r["image"])
            assert r["answer"] == ("yes" if both else "no"), r["id"]
        if r["task"] == "motion":
            frames = sorted((root / r["video"]).iterdir(), key=lambda p: int(p.stem.split("_")[1]))
            dx, dy = _centre(frames[-1]) - _centre(frames[0])
            seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
            assert r["answer"] == seen, r["id"]
    for task in TASKS:  # every answer occurs, none dominates
        answers = [r["answer"] for r in records if r["task"] == task]
        assert set(answers) == set(TASKS[task][1])
        assert max(answers.count(a) for a in set(answers)) / len(answers) < 0.5 + 0.5 * chance(task)


def test_records_load_with_their_images_and_clips(world) -> None:
    root, records = world
    model = LlavaModel(LlavaConfig.from_name("tiny_onevision"))
    processor = LlavaProcessor.from_model(model)
    dataset = LlavaDataset(str(root / "train.jsonl"), processor, image_root=str(root), on_bad_sample="raise")
    assert len(dataset) == len(records)
    pair, clip = dataset[0], dataset[len(records) - 1]
    assert pair["image_tiled"] == [False, False] and pair["pixel_values"].shape[0] == 2
    assert clip["video_frames"] == [4] and clip["pixel_values"] is None


def test_a_reply_counts_by_the_answer_it_opens_with() -> None:
    assert answer_word("First.", "more_circles") == "first"
    assert answer_word(" Second.USER:again", "more_circles") == "second"  # ran on, no spaces
    assert answer_word("Firs", "more_circles") is None  # cut short: not an answer
    assert answer_word("Not sure. no", "red_in_both") is None
    records = [{"task": "motion", "answer": a} for a in ("left", "up", "down", "right")]
    result = score(records, ["Left.", "Up.", "Up.", "right"])["motion"]
    assert result["accuracy"] == 0.75 and result["chance"] == 0.25 and result["count"] == 4
    assert result["answered"] == {"left": 0.25, "right": 0.25, "up": 0.5, "down": 0.0, None: 0.0}
