"""End to end, several images and video: a short stage 2 of the tiny OneVision model on the
synthetic world's two-image questions and frame sequences answers held-out ones well above chance.

The same run as ``benchmarks/onevision_tasks.py`` for seed 0 (its figures for three seeds are in
benchmarks/README.md); the margins asked here are below the worst of those seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_lite.data import LlavaProcessor
from llava_lite.modeling import load_pretrained
from llava_lite.synthetic.sequences import build_sequence_tasks, replies, score
from llava_lite.training import compose_config, train

# Accuracy each task must reach on held-out samples (chance: 50%, 50%, 25%).
FLOORS = {"more_circles": 0.75, "red_in_both": 0.85, "motion": 0.5}


@pytest.mark.slow
def test_stage_two_answers_two_image_and_video_questions_above_chance(tmp_path: Path) -> None:
    train_file = build_sequence_tasks(tmp_path / "data", "train", 8000, seed=0)
    test_file = build_sequence_tasks(tmp_path / "data", "test", 100, seed=0)
    out = train(
        compose_config(
            [
                "experiment=tiny_onevision_finetune",
                f"data.train_files={train_file}",
                f"data.image_root={tmp_path / 'data'}",
                f"paths.root_dir={tmp_path}",
                "data.batch_size=16",
                "module.optimizer.component_lr.vision_tower=1e-4",
                "model.video.num_frames=4",
                "callbacks.progress_bar=null",
                "data.on_bad_sample=raise",
            ]
        )
    )
    assert out["global_step"] == 1500 and out["bad_samples"] == {}
    model = load_pretrained(out["model_dir"])
    records = [json.loads(line) for line in test_file.read_text().splitlines()]
    scores = score(records, replies(model, LlavaProcessor.from_model(model), records, tmp_path / "data"))
    print({task: f"{s['accuracy']:.0%} (chance {s['chance']:.0%})" for task, s in scores.items()})
    for task, floor in FLOORS.items():
        assert scores[task]["accuracy"] >= floor, (task, scores[task])
