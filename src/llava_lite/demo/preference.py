"""The demo's optional stage 3: DPO on pairs of the stage-2 model's own answers (``--with-dpo``).

1. ``chat_pairs``: on training images drawn by the seed, the stage-2 model answers each of the
   demo chat's questions (a description, then one question of each closed-form type)
   ``dpo.samples`` times at ``dpo.temperature``; the offline judge scores every answer by the
   share of its claims the annotations support; the best and the worst answer of a question
   make a pair when their scores differ by ``dpo.margin`` (``llava_lite.preference``).
2. ``train_dpo``: the shipped ``demo_dpo`` experiment from the stage-2 model folder.

Held-out images are never sampled, so the chats checked after the stage are about images the
DPO data never saw.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from llava_lite.demo.data import DemoData
from llava_lite.demo.report import chat_script
from llava_lite.demo.settings import DemoSettings
from llava_lite.inference.answers import Question
from llava_lite.synthetic import OfflineJudge
from llava_lite.synthetic.world import WorldPaths, load_scenes


def chat_questions_on_training_images(settings: DemoSettings, data: DemoData) -> list[Question]:
    """The demo chat's questions, one turn each, about ``dpo.images`` training images."""
    scenes = load_scenes(data.world, "train")
    rng = random.Random(f"{settings.seed}:dpo")
    chosen = rng.sample(scenes, min(settings.dpo.images, len(scenes)))
    questions = []
    for scene in chosen:
        image = WorldPaths.file_name("train", scene.image_id)
        script = chat_script(scene, random.Random(f"{settings.seed}:dpo:{image}"))
        questions += [Question(f"{scene.image_id}-{turn}", text, image) for turn, text in enumerate(script)]
    return questions


def chat_pairs(
    settings: DemoSettings, data: DemoData, model: Any, processor: Any, out_dir: Path
) -> dict[str, Any]:
    """Sample, judge offline and pair into ``out_dir / "pairs"``; returns the run's summary."""
    from llava_lite.preference import make_pairs  # sampling and the pairs run: only with --with-dpo

    s = settings.dpo
    questions = chat_questions_on_training_images(settings, data)
    judge = OfflineJudge(
        scenes={WorldPaths.file_name("train", c.image_id): c for c in load_scenes(data.world, "train")}
    )
    summary = make_pairs(
        model, processor, questions, judge, out_dir / "pairs",
        k=s.samples, temperature=s.temperature, margin=s.margin, max_new_tokens=s.max_new_tokens,
        batch_size=settings.eval.batch_size, seed=settings.seed, image_root=data.world.image_root,
    )  # fmt: skip
    return summary.to_dict()


def stage3_overrides(settings: DemoSettings, data: DemoData, model_dir: Path, out_dir: Path) -> list[str]:
    """Hydra overrides of the shipped ``demo_dpo`` experiment."""
    s = settings.dpo
    return [
        "experiment=demo_dpo",
        f"module.init_from='{model_dir}'",
        f"data.train_files=['{out_dir / 'pairs' / 'pairs.jsonl'}']",
        f"data.image_root='{data.world.image_root}'",
        f"data.batch_size={s.batch_size}",
        f"module.optimizer.lr={s.lr}",
        f"module.preference.beta={s.beta}",
        f"module.preference.sft_weight={s.sft_weight}",
        f"trainer.max_steps={s.steps}",
        f"paths.output_dir='{out_dir / 'stage3'}'",
        f"seed={settings.seed}",
    ]


def train_dpo(settings: DemoSettings, data: DemoData, model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Stage 3 through ``train(cfg)``; its run lands in ``out_dir / "stage3"``."""
    from llava_lite.training import compose_config, train

    return train(compose_config(stage3_overrides(settings, data, model_dir, out_dir)))
