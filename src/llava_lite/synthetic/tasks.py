"""Training and evaluation records from a built world, in LLaVA's JSON format.

* Stage-1 caption data, like LCS-558K / CC3M-595K ``chat.json``: one image and one caption
  per record, the human turn only ``<image>`` (the ``plain`` template ignores it anyway).
* Drills: closed-form questions about each training image, written from its captions and boxes.
* Held-out closed-form questions (``colour``, ``shape``, ``count``, ``position``) from a
  split's ground truth, each with ``question_type``, ``answer`` and ``choices`` so chance
  is known (1 / number of choices).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

from llava_lite.config import IMAGE_TOKEN
from llava_lite.generation.validation import to_conversations
from llava_lite.symbolic import SymbolicContext
from llava_lite.synthetic.context import ContextInsufficient, parse_context
from llava_lite.synthetic.questions import QUESTION_TYPES, SHORT_ANSWER_PROMPT, WORDINGS, closed_question
from llava_lite.synthetic.world import WorldPaths, load_scenes


def caption_records(
    paths: WorldPaths, split: str = "train", captions_per_image: int = 1, seed: int = 0
) -> list[dict[str, Any]]:
    """Image-caption pairs for stage 1; ``captions_per_image`` of the five, picked at random per image."""
    if not 1 <= captions_per_image <= 5:
        raise ValueError(f"captions_per_image={captions_per_image}; the world has 5 per image")
    data = json.loads(paths.captions(split).read_text())
    by_image: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[int(ann["image_id"])].append(str(ann["caption"]))
    records = []
    for im in data["images"]:
        image_id = int(im["id"])
        rng = random.Random(f"{seed}:stage1:{image_id}")
        for k, caption in enumerate(rng.sample(by_image[image_id], captions_per_image)):
            records.append(
                {
                    "id": f"{image_id:07d}_cap{k}",
                    "image": im["file_name"],
                    "conversations": [
                        {"from": "human", "value": IMAGE_TOKEN},
                        {"from": "gpt", "value": caption},
                    ],
                }
            )
    return records


def eval_questions(
    paths: WorldPaths,
    split: str = "test",
    seed: int = 0,
    types: tuple[str, ...] = QUESTION_TYPES,
    wording: str = "canonical",
) -> list[dict[str, Any]]:
    """One closed-form question of each type per image of ``split`` (held out from training).

    ``wording="canonical"`` asks in the first wording of the teacher's pool (the demo's own
    words); ``"paraphrased"`` asks about the same objects in wordings drawn from the
    ``held_out`` pool, which no training text uses (``synthetic.questions.WORDINGS``). Any
    other pool added to ``WORDINGS`` may be named too, and is drawn from the same way
    (``benchmarks/demo_wordings.py`` adds one for a blind check).
    """
    pools = {"canonical": "train", "paraphrased": "held_out"}
    pools |= {name: name for name in WORDINGS if name not in pools.values()}
    if wording not in pools:
        raise ValueError(f"wording={wording!r}; valid: {list(pools)}")
    pool = pools[wording]
    suffix = {"canonical": "", "paraphrased": "_para"}.get(wording, f"_{wording}")
    records = []
    files = {
        int(im["id"]): im["file_name"] for im in json.loads(paths.instances(split).read_text())["images"]
    }
    for scene in load_scenes(paths, split):
        rng = random.Random(f"{seed}:eval:{scene.image_id}")
        wording_rng = random.Random(f"{seed}:wording:{scene.image_id}") if suffix else None
        for qtype in types:
            cq = None
            for _ in range(8):  # a position question needs an object with a unique look
                cq = closed_question(qtype, scene, rng, pool, wording_rng)
                if cq is not None:
                    break
            if cq is None:
                continue
            records.append(
                {
                    "id": f"{scene.image_id:07d}_{qtype}{suffix}",
                    "image": files[scene.image_id],
                    "conversations": [
                        {"from": "human", "value": f"{IMAGE_TOKEN}\n{cq.question}\n{SHORT_ANSWER_PROMPT}"},
                        {"from": "gpt", "value": cq.answer},
                    ],
                    "question_type": qtype,
                    "answer": cq.answer,
                    "choices": list(cq.choices),
                }
            )
    return records


def chance_by_type(records: list[dict[str, Any]]) -> dict[str, float]:
    """Expected accuracy of uniform guessing among each question's choices, per question type."""
    sums: dict[str, list[float]] = defaultdict(list)
    for r in records:
        sums[r["question_type"]].append(1.0 / len(r["choices"]))
    return {t: sum(v) / len(v) for t, v in sums.items()}


def drill_records(
    contexts: list[SymbolicContext], turns: int, mix: dict[str, float], seed: int, pool: str
) -> list[dict[str, Any]]:
    """Per training image, one conversation of up to ``turns`` different closed-form questions
    (types drawn by ``mix``, wordings from the ``pool`` of ``questions.WORDINGS``) about the
    scene its captions and boxes give, as a teacher would read it: the offline counterpart of
    the academic VQA data in LLaVA-1.5's mix."""
    rng = random.Random(f"{seed}:drills")
    types, weights = list(mix), list(mix.values())
    records = []
    for context in contexts:
        try:
            scene = parse_context(context)
        except ContextInsufficient as e:
            raise ValueError(f"drills: {e}") from e
        asked: list[tuple[str, str]] = []
        for _ in range(4 * turns):  # bounded: repeats and inapplicable questions are redrawn
            if len(asked) == turns:
                break
            q = closed_question(rng.choices(types, weights)[0], scene, rng, pool, wording_rng=rng)
            if q is not None and all(q.question != a for a, _ in asked):
                asked.append((q.question, q.answer))
        pairs = [(f"{question}\n{SHORT_ANSWER_PROMPT}", answer) for question, answer in asked]
        records.append(
            {
                "id": f"drill_{context.image_id}",
                "image": context.file_name,
                "conversations": to_conversations(pairs),
            }
        )
    return records
