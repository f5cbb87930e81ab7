"""Several images and short clips in the synthetic world: LLaVA-OneVision's sample kinds, offline.

Three closed-form tasks, each answered with one word, so a held-out answer is right or wrong:

| task | sample | question | answers (chance) |
| --- | --- | --- | --- |
| ``more_circles`` | two images | Which image has more circles? | first, second (1/2) |
| ``red_in_both`` | two images | Is there a red object in both images? | yes, no (1/2) |
| ``motion`` | a clip of frames | Which way does the square move? | left, right, up, down (1/4) |

Objects are drawn with the world's renderer and colours (``llava_lite.synthetic.render``).
:func:`build_sequence_tasks` writes the images, the clips (folders of PNG frames, which
``llava_lite.data.video`` reads like a video file) and LLaVA-format records; every sample
comes from its own random stream seeded by ``(seed, split, index)``, so splits never share one.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava_lite.data.collate import LlavaCollator
from llava_lite.modeling.llava import VISUAL_INPUTS
from llava_lite.synthetic.render import render_scene
from llava_lite.synthetic.scene import COLORS, SHAPES, Scene, SceneObject

TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "more_circles": ("<image> <image>\nWhich image has more circles?", ("first", "second")),
    "red_in_both": ("<image> <image>\nIs there a red object in both images?", ("yes", "no")),
    "motion": ("<video>\nWhich way does the square move?", ("left", "right", "up", "down")),
}
MORE_CIRCLES_COUNTS = (1, 2, 3)
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def chance(task: str) -> float:
    """The accuracy of guessing uniformly among a task's answers."""
    return 1 / len(TASKS[task][1])


def _objects(rng: random.Random, size: int, kinds: Sequence[tuple[str, str]]) -> tuple[SceneObject, ...]:
    """Objects of the given (shape, colour) in distinct cells of a 2 x 2 grid, a cell each."""
    cell = size / 2
    side = cell * 0.8
    cells = rng.sample([(r, c) for r in range(2) for c in range(2)], len(kinds))
    out = []
    for (shape, color), (row, col) in zip(kinds, cells, strict=True):
        x = col * cell + rng.uniform(0, cell - side)
        y = row * cell + rng.uniform(0, cell - side)
        out.append(SceneObject(shape, color, "large", (row, col), (x, y, side, side)))
    return tuple(out)


def _image(rng: random.Random, size: int, kinds: Sequence[tuple[str, str]]) -> Image.Image:
    return render_scene(Scene(0, size, size, _objects(rng, size, kinds)))


def _more_circles(rng: random.Random, size: int) -> tuple[list[Image.Image], str]:
    """Two images with different numbers of circles (1 to 3), other shapes in some free cells."""
    counts = rng.sample(MORE_CIRCLES_COUNTS, 2)
    images = []
    for n in counts:
        others = [rng.choice([s for s in SHAPES if s != "circle"]) for _ in range(rng.randint(0, 4 - n))]
        kinds = [("circle", rng.choice(list(COLORS))) for _ in range(n)]
        kinds += [(shape, rng.choice(list(COLORS))) for shape in others]
        images.append(_image(rng, size, kinds))
    return images, "first" if counts[0] > counts[1] else "second"


def _red_in_both(rng: random.Random, size: int) -> tuple[list[Image.Image], str]:
    both = rng.random() < 0.5
    has_red = [True, True] if both else rng.choice([[True, False], [False, True], [False, False]])
    images = []
    for red in has_red:
        colors = [rng.choice([c for c in COLORS if c != "red"]) for _ in range(rng.randint(1, 2))]
        if red:
            colors[0] = "red"
        images.append(_image(rng, size, [(rng.choice(SHAPES), c) for c in colors]))
    return images, "yes" if both else "no"


def _start(rng: random.Random, room: int, travel: int, direction: int) -> int:
    """A start coordinate in ``[0, room]`` from which ``travel`` pixels in ``direction`` stay inside."""
    if direction > 0:
        return rng.randint(0, room - travel)
    if direction < 0:
        return rng.randint(travel, room)
    return rng.randint(0, room)


def _motion(rng: random.Random, size: int, frames: int) -> tuple[list[Image.Image], str]:
    direction = rng.choice(list(_STEP))
    dx, dy = _STEP[direction]
    side = size // 4
    step = (size - side) // max(frames - 1, 1)
    travel = step * (frames - 1)
    # Start where the whole path stays inside the frame; across the motion, anywhere.
    x0, y0 = (_start(rng, size - side, travel, d) for d in (dx, dy))
    color = rng.choice(list(COLORS))
    clip = []
    for k in range(frames):
        x, y = x0 + dx * step * k, y0 + dy * step * k
        box = (float(x), float(y), float(side), float(side))
        scene = Scene(0, size, size, (SceneObject("square", color, "large", (0, 0), box),))
        clip.append(render_scene(scene))
    return clip, direction


def build_sequence_tasks(
    out_dir: str | Path,
    split: str,
    per_task: int,
    image_size: int = 32,
    frames: int = 4,
    seed: int = 0,
    tasks: Sequence[str] = tuple(TASKS),
) -> Path:
    """Write ``per_task`` samples of each task to ``out_dir/{split}.jsonl`` (LLaVA records with
    ``task`` and ``answer`` fields), images under ``out_dir/images`` and clips under
    ``out_dir/clips``; returns the records file. ``data.image_root`` is ``out_dir``."""
    root = Path(out_dir)
    if image_size < 16 or frames < 2:
        raise ValueError(f"image_size={image_size}, frames={frames}: use at least 16 px and 2 frames")
    records = []
    for task in tasks:
        question, _ = TASKS[task]
        for index in range(per_task):
            rng = random.Random(f"{seed}:{split}:{task}:{index}")
            name = f"{split}/{task}_{index:05d}"
            record: dict[str, Any] = {"id": f"{split}_{task}_{index}", "task": task}
            if task == "motion":
                clip, answer = _motion(rng, image_size, frames)
                folder = root / "clips" / name
                folder.mkdir(parents=True, exist_ok=True)
                for k, frame in enumerate(clip):
                    frame.save(folder / f"frame_{k + 1}.png")
                record["video"] = f"clips/{name}"
            else:
                images, answer = (_more_circles if task == "more_circles" else _red_in_both)(rng, image_size)
                (root / "images" / split).mkdir(parents=True, exist_ok=True)
                record["image"] = []
                for k, image in enumerate(images):
                    image.save(root / "images" / f"{name}_{k}.png")
                    record["image"].append(f"images/{name}_{k}.png")
            record["answer"] = answer
            record["conversations"] = [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer.capitalize() + "."},
            ]
            records.append(record)
    path = root / f"{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def answer_word(text: str, task: str) -> str | None:
    """The task answer a generated reply opens with (training answers are ``"First."`` etc.), or
    None. The start, not any word: the tiny tokenizer decodes without spaces, so a reply that
    runs on after its answer is one long word."""
    start = text.strip().lower()
    return next((w for w in TASKS[task][1] if re.match(rf"{w}(?![a-z])", start)), None)  # "no", not "not"


def score(records: Sequence[dict[str, Any]], replies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task: accuracy, its chance, how many samples and how often each answer was given."""
    out: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        pairs = [(r, reply) for r, reply in zip(records, replies, strict=True) if r["task"] == task]
        if not pairs:
            continue
        said = [answer_word(reply, task) for _, reply in pairs]
        right = sum(word == r["answer"] for (r, _), word in zip(pairs, said, strict=True))
        out[task] = {
            "accuracy": right / len(pairs),
            "chance": chance(task),
            "count": len(pairs),
            # how often each answer was given: a model that always says one word shows here
            "answered": {word: said.count(word) / len(said) for word in (*TASKS[task][1], None)},
        }
    return out


@torch.no_grad()
def replies(
    model: Any, processor: Any, records: Sequence[dict[str, Any]], root: str | Path, batch_size: int = 32
) -> list[str]:
    """The model's greedy reply to each record's question, with its images or clip (left-padded batches)."""
    collator = LlavaCollator(
        processor.pad_token_id,
        padding_side="left",
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
    )
    out: list[str] = []
    model.eval()
    for start in range(0, len(records), batch_size):
        prompts = []
        for r in records[start : start + batch_size]:
            question = r["conversations"][0]["value"]
            if "video" in r:
                video = str(Path(root) / r["video"])
                prompts.append(processor.prompt(question.replace("<video>\n", ""), video=video))
            else:
                prompts.append(processor.prompt(question, [str(Path(root) / p) for p in r["image"]]))
        batch = collator(prompts)
        new = model.generate(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=8,  # the tiny tokenizer spells "First." in six tokens
            **{k: batch[k] for k in VISUAL_INPUTS if batch[k] is not None},
        )
        out += [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out
