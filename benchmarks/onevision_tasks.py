"""Several images and video, end to end: a short stage 2 of the tiny OneVision model on the
synthetic world's two-image questions and frame sequences, scored on held-out samples.

For each seed: build ``--per-task`` training samples of each task and ``--test-per-task``
held-out ones (``llava_lite.synthetic.sequences``: which image has more circles, is the red
object in both images, which way the square moves), train ``experiment=tiny_onevision_finetune``
(random tiny SigLIP tower, trained too, and a tiny Llama) for ``--epochs``, answer the held-out
questions greedily and print each task's accuracy beside chance. The last line is JSON.

    python benchmarks/onevision_tasks.py --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llava_lite.data import LlavaProcessor
from llava_lite.modeling import load_pretrained
from llava_lite.synthetic.sequences import TASKS, build_sequence_tasks, replies, score
from llava_lite.training import compose_config, train


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = work / f"seed{seed}"
    train_file = build_sequence_tasks(data, "train", args.per_task, frames=args.frames, seed=seed)
    test_file = build_sequence_tasks(data, "test", args.test_per_task, frames=args.frames, seed=seed)
    start = time.perf_counter()
    out = train(
        compose_config(
            [
                "experiment=tiny_onevision_finetune",
                f"data.train_files={train_file}",
                f"data.image_root={data}",
                f"paths.root_dir={work}",
                f"run_name=seed{seed}",
                f"seed={seed}",
                f"trainer.max_epochs={args.epochs}",
                f"data.batch_size={args.batch}",
                f"module.optimizer.lr={args.lr}",
                f"module.optimizer.component_lr.vision_tower={args.lr / 10}",
                f"model.video.num_frames={args.frames}",
                "callbacks.progress_bar=null",
                "data.on_bad_sample=raise",
            ]
        )
    )
    train_s = time.perf_counter() - start
    model = load_pretrained(out["model_dir"])
    processor = LlavaProcessor.from_model(model)
    records = [json.loads(line) for line in test_file.read_text().splitlines()]
    said = replies(model, processor, records, data)
    examples = {
        task: [(r["answer"], text) for r, text in zip(records, said, strict=True) if r["task"] == task][:4]
        for task in TASKS
    }
    return {
        "seed": seed,
        "steps": out["global_step"],
        "train_s": train_s,
        "scores": score(records, said),
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-task", type=int, default=8000)
    parser.add_argument("--test-per-task", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(seed, args, Path(tmp)) for seed in args.seeds]
    print(
        f"{'task':>13} {'chance':>7} "
        + " ".join(f"{'seed ' + str(r['seed']):>8}" for r in runs)
        + f" {'min':>6}"
    )
    summary: dict[str, Any] = {"threads": torch.get_num_threads(), "args": vars(args), "runs": runs}
    for task in TASKS:
        accs = [r["scores"][task]["accuracy"] for r in runs]
        print(
            f"{task:>13} {runs[0]['scores'][task]['chance']:>7.0%} "
            + " ".join(f"{a:>8.0%}" for a in accs)
            + f" {min(accs):>6.0%}"
        )
        summary[task] = {
            "min": min(accs),
            "mean": statistics.mean(accs),
            "chance": runs[0]["scores"][task]["chance"],
        }
    print(
        f"train time per seed: {statistics.mean(r['train_s'] for r in runs):.0f} s, {runs[0]['steps']} steps"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
