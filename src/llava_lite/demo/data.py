"""The demo's first step: the world and every data file the recipe reads.

* the world: shape images with COCO-format captions and boxes (``synthetic.build_world``);
* instruction data: the offline rule teacher reads each training image's captions and boxes,
  as a Claude teacher would, through the library's generation pipeline;
* stage-1 caption pairs, and *drills*: closed-form questions written by rule from each
  training image's captions and boxes (the offline counterpart of LLaVA-1.5's VQA data);
* stage 2's mix: the teacher's data with, for a share of the images, the description opening
  one of the image's conversations (as LLaVA-1.5 joins an image's samples), and the drills;
* held-out questions on the test split, in the demo's own wording and in wordings no
  training text uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_lite.config import IMAGE_TOKEN
from llava_lite.demo.settings import DemoSettings
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.generation.settings import settings_from
from llava_lite.io import read_json, write_json_atomic
from llava_lite.symbolic import SymbolicContext, load_coco
from llava_lite.synthetic import WorldPaths, build_world
from llava_lite.synthetic.tasks import caption_records, drill_records, eval_questions
from llava_lite.synthetic.teacher import OfflineTeacher


@dataclass
class DemoData:
    world: WorldPaths
    train_contexts: list[SymbolicContext]  # what a teacher reads of each training image
    instruct: list[dict[str, Any]]  # the teacher's records
    captions: list[dict[str, Any]]  # the stage-1 caption pairs, as written to stage1_file
    stage1_file: Path
    stage2_files: list[Path]  # the teacher's data (some descriptions first) and the drills
    drills: list[dict[str, Any]]
    held_out: list[dict[str, Any]]  # closed-form questions on the test split, canonical wording
    paraphrased: list[dict[str, Any]]  # the same questions in held-out wordings
    generation: dict[str, dict[str, int]]  # samples, rejects and teacher errors by kind


def teacher_pipeline(world: WorldPaths, output_dir: Path, settings: DemoSettings) -> GenerationPipeline:
    """The generation pipeline with the offline teacher over the world's training split
    (``.run()`` writes ``output_dir / "instruct.json"``)."""
    gen_settings = settings_from(
        {
            "captions_file": str(world.captions("train")),
            "instances_file": str(world.instances("train")),
            "image_root": str(world.image_root),
            "output_dir": str(output_dir),
            "samples_per_type": settings.teacher.samples_per_type,
            "budget_usd": None,
            "seed": settings.seed,
        }
    )
    teacher = OfflineTeacher(seed=settings.seed, short_answer_rate=settings.teacher.short_answer_rate)
    return GenerationPipeline(gen_settings, teacher)


def described_first(records: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """The teacher's records with, for ``share`` of the images, the detailed description put
    before the image's shorter conversation as its first turn; the standalone description
    stays. Only conversations of at most four turns are joined, so the record fits the model's
    length."""
    details: dict[str, dict[str, Any]] = {}
    conversations: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["response_type"] == "detail":
            details.setdefault(str(r["image"]), r)
        elif r["response_type"] == "conversation":
            conversations.setdefault(str(r["image"]), []).append(r)
    rng = random.Random(f"{seed}:described_first")
    joined: dict[str, dict[str, Any]] = {}  # conversation id -> the joined record
    for image in sorted(conversations):
        if image not in details or rng.random() >= share:
            continue
        shortest = min(conversations[image], key=lambda r: len(r["conversations"]))
        if len(shortest["conversations"]) > 8:
            continue
        description = details[image]["conversations"]  # [human (with <image>), gpt]
        rest = [dict(m) for m in shortest["conversations"]]
        rest[0]["value"] = rest[0]["value"].replace(IMAGE_TOKEN, "").strip()
        joined[shortest["id"]] = {
            **shortest,
            "id": f"{shortest['id']}_described",
            "conversations": description + rest,
        }
    return [joined.get(r["id"], r) for r in records]


def build_data(settings: DemoSettings, out_dir: Path) -> DemoData:
    """Build the world in ``out_dir / "world"`` and write every data file to ``out_dir / "data"``."""
    s, w = settings, settings.world
    world = build_world(out_dir / "world", w.n_train, w.n_val, w.n_test, w.image_size, s.seed)
    data_dir = out_dir / "data"
    gen = teacher_pipeline(world, data_dir / "instruct", s).run()
    instruct_file = data_dir / "instruct" / "instruct.json"
    instruct = read_json(instruct_file, list, "the teacher's instruction data")
    contexts = load_coco(world.captions("train"), world.instances("train"))
    drills = drill_records(contexts, s.llm.drill_turns, s.llm.drill_mix, s.seed, s.llm.drill_pool)
    stage2_file = instruct_file
    if s.stage2.described_first > 0:
        stage2_file = data_dir / "instruct_stage2.json"
        write_json_atomic(stage2_file, described_first(instruct, s.stage2.described_first, s.seed))
    held_out = eval_questions(world, "test", s.seed)
    paraphrased = eval_questions(world, "test", s.seed, wording="paraphrased")
    captions = caption_records(world, "train", w.captions_per_image, s.seed)
    files = {
        "stage1_captions.json": captions,
        "drills.json": drills,
        "eval_test.json": held_out,
        "eval_test_paraphrased.json": paraphrased,
    }
    for name, records in files.items():
        write_json_atomic(data_dir / name, records)
    return DemoData(
        world=world,
        train_contexts=contexts,
        instruct=instruct,
        captions=captions,
        stage1_file=data_dir / "stage1_captions.json",
        stage2_files=[stage2_file, data_dir / "drills.json"],
        drills=drills,
        held_out=held_out,
        paraphrased=paraphrased,
        generation={
            "samples": dict(gen.samples),
            "rejects": dict(gen.rejects),
            "teacher_errors": dict(gen.teacher_errors),
        },
    )
