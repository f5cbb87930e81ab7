"""The demo's text ceiling: the warm-up LLM alone, given perfect scene cells for held-out images.

Builds the demo's world and data (``conf/demo/full.yaml``, or ``quick.yaml`` with
``--quick``, plus Hydra overrides of the demo's settings) in ``--data``, warms the LLM up as
the demo does, then asks every held-out question (canonical and paraphrased wordings) with the test
images' true cells in the image's place, greedy, at most 4 tokens. It isolates the LLM from
the pixels (docs/demo_history.md, "The text ceiling"). Prints accuracy per type and one JSON line.

    python benchmarks/demo_text_ceiling.py --data /tmp/ceiling llm.steps=1500

``--predictions FILE`` writes every question with its answer, the prediction and the image's
nine cells (JSON Lines), to see which object a wrong answer was about.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from llava_lite.config import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data import encode_conversation, expand_image_slots, normalize_conversation
from llava_lite.demo.data import build_data
from llava_lite.demo.evaluate import normalize_answer
from llava_lite.demo.run import warm_up_llm
from llava_lite.demo.settings import demo_settings
from llava_lite.demo.text import embed_documents
from llava_lite.demo.vision import LOOKS, cell_targets
from llava_lite.symbolic import load_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder for the world, data and LLM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the sizes and warm-up of --quick")
    parser.add_argument("overrides", nargs="*", help="the demo's settings, e.g. llm.steps=1500")
    parser.add_argument(
        "--predictions", type=Path, help="write each question and prediction here (JSON Lines)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = demo_settings([f"seed={args.seed}", *args.overrides], quick=args.quick)
    settings = demo.llm
    data = build_data(demo, args.data)
    start = time.perf_counter()
    result = warm_up_llm(demo, data, args.data)
    warmup_seconds = time.perf_counter() - start
    model = LlamaForCausalLM.from_pretrained(result.path).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    world = data.world
    test_cells = {
        c.file_name: cell_targets(c) for c in load_coco(world.captions("test"), world.instances("test"))
    }
    predictions: list[dict[str, object]] = []
    right: dict[str, int] = defaultdict(int)
    asked: dict[str, int] = defaultdict(int)
    for wording in ("canonical", "paraphrased"):
        for record in data.held_out if wording == "canonical" else data.paraphrased:
            messages = normalize_conversation(record["conversations"], IMAGE_TOKEN, has_image=True)
            encoded = encode_conversation(messages, tokenizer, settings.template, IMAGE_TOKEN)
            prompt = encoded.input_ids[: next(i for i, t in enumerate(encoded.labels) if t != IGNORE_INDEX)]
            scene = test_cells[record["image"]]
            ids, _ = expand_image_slots(prompt, prompt, image_id, len(scene), 1)
            answer: list[int] = []
            with torch.no_grad():
                for _ in range(4):
                    x = torch.tensor([ids + answer])  # [1, T]
                    embeds = embed_documents(model, result.scene, x, torch.tensor([scene]), image_id)
                    token = int(model(inputs_embeds=embeds).logits[0, -1].argmax())
                    if token == tokenizer.eos_token_id:
                        break
                    answer.append(token)
            key = f"{wording}/{record['question_type']}"
            predicted = tokenizer.decode(answer, skip_special_tokens=True)
            asked[key] += 1
            right[key] += normalize_answer(predicted) == normalize_answer(record["answer"])
            predictions.append({
                "id": record["id"], "question_type": record["question_type"], "wording": wording,
                "question": record["conversations"][0]["value"], "answer": record["answer"],
                "predicted": predicted, "cells": [LOOKS[c] for c in scene],
            })  # fmt: skip
    if args.predictions:
        args.predictions.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    scores = {k: round(100 * right[k] / asked[k], 1) for k in sorted(asked)}
    for wording in ("canonical", "paraphrased"):
        keys = [k for k in asked if k.startswith(wording)]
        scores[f"{wording}/all"] = round(100 * sum(right[k] for k in keys) / sum(asked[k] for k in keys), 1)
    for k, v in scores.items():
        print(f"{k:<24}{v:>6.1f}%")
    print(json.dumps({"settings": dataclasses.asdict(settings), "threads": args.threads,
                      "warmup_seconds": round(warmup_seconds, 1), "accuracy": scores}))  # fmt: skip


if __name__ == "__main__":
    main()
