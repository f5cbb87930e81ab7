"""A finished demo run's model asked the held-out questions in wordings neither pool uses.

The demo scores its held-out questions twice: in its own wording and in the ``held_out``
pool that no training text uses (``synthetic.questions.WORDINGS``). Both pools were written
while the recipe was tuned, so the second is not a blind test either. This asks the same
held-out objects once more, in ``UNSEEN``: wordings written for this check, in neither pool
and in no training text, with other verbs and sentence shapes ("Which hue is ...", "Could you
count the objects?", "{Ref}: left, center or right?"). The drills' ``varied`` pool was
written after ``UNSEEN`` had been read, so ``FRESH`` asks once more, in wordings written before
any result of that pool was seen and in no pool ("Identify the colour of ...", "Give the
horizontal position of ..."). Prints accuracy per type for the four wordings and one JSON line.

    python benchmarks/demo_wordings.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from llava_lite.data import LlavaProcessor
from llava_lite.demo.evaluate import evaluate_closed_form
from llava_lite.demo.report import TYPE_ORDER
from llava_lite.modeling import LlavaModel
from llava_lite.synthetic.questions import WORDINGS
from llava_lite.synthetic.tasks import eval_questions
from llava_lite.synthetic.world import WorldPaths

UNSEEN: dict[str, tuple[str, ...]] = {
    "colour": (
        "Which hue is {ref}?",
        "Could you identify the colour of {ref}?",
        "{Ref}: what colour?",
        "What colour has {ref} got?",
        "I'd like to know the color of {ref}.",
        "What color is {ref} shown in?",
    ),
    "shape": (
        "What is the form of {ref}?",
        "Could you identify the shape of {ref}?",
        "{Ref}: what shape?",
        "What geometric shape is {ref}?",
        "I'd like to know the shape of {ref}.",
        "What shape does {ref} appear as?",
    ),
    "count": (
        "How many shapes are drawn here?",
        "Could you count the objects?",
        "Number of objects in the picture?",
        "I'd like to know how many objects there are.",
        "How many items are in this image?",
    ),
    "position_x": (
        "Could you tell whether {ref} is on the left, in the center or on the right?",
        "{Ref}: left, center or right?",
        "Is {ref} to the left, in the center or to the right?",
        "On which side is {ref}: left, center or right?",
    ),
    "position_y": (
        "Could you tell whether {ref} is at the top, in the middle or at the bottom?",
        "{Ref}: top, middle or bottom?",
        "In which row do you find {ref}: top, middle or bottom?",
        "Is {ref} up at the top, in the middle or down at the bottom?",
    ),
}

FRESH: dict[str, tuple[str, ...]] = {
    "colour": (
        "What is the color of {ref} in this image?",
        "Identify the colour of {ref}.",
        "Which color is used for {ref}?",
        "What colour is {ref} painted?",
        "Give the colour of {ref}.",
    ),
    "shape": (
        "What shape does {ref} have in this image?",
        "Identify the shape of {ref}.",
        "What type of shape is {ref}?",
        "Give the shape of {ref}.",
        "What is {ref} shaped like?",
    ),
    "count": (
        "How many objects can be seen?",
        "Give the number of objects.",
        "How many objects appear in this image?",
        "What is the total number of shapes?",
        "Count how many objects are shown.",
    ),
    "position_x": (
        "Is {ref} in the left, center or right part of the image?",
        "Where horizontally is {ref}: left, center or right?",
        "Give the horizontal position of {ref}: left, center or right.",
    ),
    "position_y": (
        "Is {ref} in the top, middle or bottom part of the image?",
        "Where vertically is {ref}: top, middle or bottom?",
        "Give the vertical position of {ref}: top, middle or bottom.",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished llava-lite-demo run folder")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (it picked the held-out objects)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pooled = {w for p in WORDINGS.values() for ws in p.values() for w in ws}
    for name, extra in (("UNSEEN", UNSEEN), ("FRESH", FRESH)):
        if overlap := {w for ws in extra.values() for w in ws} & pooled:
            raise SystemExit(f"{name} shares wordings with the demo's pools: {sorted(overlap)}")
    WORDINGS["unseen"], WORDINGS["fresh"] = UNSEEN, FRESH  # more pools, for this process only
    model = LlavaModel.from_pretrained(args.run_dir / "stage2" / "model")
    processor = LlavaProcessor.from_model(model)
    world = WorldPaths(args.run_dir / "world")
    scores = {}
    for wording in ("canonical", "paraphrased", "unseen", "fresh"):
        records = eval_questions(world, "test", seed=args.seed, wording=wording)
        answers = args.run_dir / "eval" / f"answers_{wording}.jsonl"
        if wording in ("unseen", "fresh"):
            answers.unlink(missing_ok=True)  # answers are resumed from an existing file
        scores[wording] = evaluate_closed_form(model, processor, records, world.image_root, answers, 50)[0]
    print(f"{'question type':<15}" + "".join(f"{w:>13}" for w in scores))
    for t in TYPE_ORDER:
        row = "".join(f"{scores[w][t]['accuracy']:>12.1f}%" for w in scores)
        print(f"{'overall' if t == 'all' else t:<15}{row}")
    print(json.dumps({w: {t: round(v["accuracy"], 1) for t, v in s.items()} for w, s in scores.items()}))


if __name__ == "__main__":
    main()
