"""How the demo's chat claims depend on the order of the turns, on a finished demo run.

Loads the exported stage-2 model of ``RUN_DIR`` (``llava-lite-demo --out RUN_DIR``) and, for
``--images`` held-out test images drawn by ``--seed``, asks the demo's chat (a detailed
description and a count, colour, shape and where question) three ways: the description
first, as the demo does; the description last; and every question in a conversation of its
own. Every closed-form claim is checked against the annotations (``synthetic.checker``).
Prints right / checked for the descriptions and for the questions, per order, and one JSON line.

    python benchmarks/demo_chat_orders.py RUN_DIR --images 12
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from llava_lite.data import LlavaProcessor
from llava_lite.demo.report import CHAT_DECODING, chat_script
from llava_lite.inference import ChatSession
from llava_lite.modeling import LlavaModel
from llava_lite.synthetic import load_scenes
from llava_lite.synthetic.checker import check_turns
from llava_lite.synthetic.world import WorldPaths

ORDERS = ("description first", "description last", "one conversation per question")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished llava-lite-demo run folder")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = LlavaModel.from_pretrained(args.run_dir / "stage2" / "model")
    processor = LlavaProcessor.from_model(model)
    world = WorldPaths(args.run_dir / "world")
    scenes = load_scenes(world, "test")
    # [right, checked] for descriptions and for questions, per order
    tally = {order: {"description": [0, 0], "questions": [0, 0]} for order in ORDERS}
    for scene in random.Random(args.seed).sample(scenes, min(args.images, len(scenes))):
        image = world.image_root / world.file_name("test", scene.image_id)
        describe, *questions = chat_script(scene, random.Random(f"{args.seed}:{scene.image_id}"))
        for order in ORDERS:
            if order == "one conversation per question":
                turns = [
                    (q, ChatSession(model, processor, image, CHAT_DECODING).ask(q))
                    for q in (describe, *questions)
                ]
            else:
                chat = ChatSession(model, processor, image, CHAT_DECODING)
                asked = (describe, *questions) if order == "description first" else (*questions, describe)
                turns = [(q, chat.ask(q)) for q in asked]
            description = [t for t in turns if t[0] == describe]
            rest = [t for t in turns if t[0] != describe]
            for part, result in (
                ("description", check_turns(description, scene, description=True)),
                ("questions", check_turns(rest, scene)),
            ):
                tally[order][part][0] += result.checked - len(result.problems)
                tally[order][part][1] += result.checked
    for order, parts in tally.items():
        print(f"{order:<32}" + "  ".join(f"{part} {r}/{n}" for part, (r, n) in parts.items()))
    summary = {"run_dir": str(args.run_dir), "images": args.images, "threads": args.threads}
    print(json.dumps({**summary, "claims": tally}))


if __name__ == "__main__":
    main()
