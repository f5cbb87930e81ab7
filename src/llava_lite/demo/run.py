"""The whole LLaVA recipe on the synthetic world, offline: ``run_demo(out_dir, settings)``.

A sequence of named steps, each a function a notebook can call on its own:

1. ``build_data``: the world, the offline teacher's instruction data, stage-1 caption pairs,
   drills and held-out questions (``demo.data``);
2. ``pretrain_tower`` and ``warm_up_llm``: the tiny "pretrained" parts LLaVA starts from,
   a CLIP trained on the world's images and captions and a Llama warmed up on its text;
3. ``train_stage``: stage 1 (projector only) and stage 2 (projector + LLM, vision frozen)
   through ``llava_lite.training.train`` with the shipped ``demo_pretrain`` /
   ``demo_finetune`` experiments;
4. ``evaluate_held_out`` and ``check_chats``: held-out accuracy in the demo's own wording and
   in wordings no training text uses, and chats about held-out images whose every closed-form
   claim is checked against the annotations;
5. ``write_report``: ``metrics.csv`` (and ``metrics_paraphrased.csv``), ``summary.json``,
   ``loss_curves.png``, ``accuracy.png``, ``sample*.png`` and ``chats.jsonl``.

The settings are ``conf/demo.yaml`` (``demo/full.yaml``, ``demo/quick.yaml``): see
``demo.settings.demo_settings``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llava_lite.demo.data import DemoData, build_data
from llava_lite.demo.evaluate import evaluate_closed_form
from llava_lite.demo.preference import chat_pairs, train_dpo
from llava_lite.demo.report import (
    answer_measures,
    plot_accuracy,
    plot_losses,
    sample_chat,
    summary_table,
    write_metrics_csv,
)
from llava_lite.demo.settings import DemoSettings, StageSettings, demo_settings
from llava_lite.demo.text import LLMWarmupResult, warmup_llm
from llava_lite.demo.vision import VisionPretrainResult, cell_targets, pretrain_vision
from llava_lite.io import write_jsonl_atomic
from llava_lite.synthetic import load_scenes

Progress = Callable[..., None]


class Clock:
    """Wall time per named step, and a progress printer that shows elapsed time."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}
        self.echo = echo

    def say(self, message: str) -> None:
        self.echo(f"[{time.perf_counter() - self.start:7.1f}s] {message}")

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        self.say(f"{name} ...")
        t = time.perf_counter()
        result = fn()
        self.times[name] = time.perf_counter() - t
        self.say(f"{name} done in {self.times[name]:.1f}s")
        return result

    def every(self, n: int, fn: Progress) -> Progress:
        """``fn`` on the first step and every ``n``-th."""

        def call(step: int, *values: float) -> None:
            if step == 1 or step % n == 0:
                fn(step, *values)

        return call


def pretrain_tower(
    settings: DemoSettings, data: DemoData, out_dir: Path, progress: Progress | None = None
) -> VisionPretrainResult:
    """The tiny CLIP, saved as ``out_dir / "pretrained" / "clip"``."""
    return pretrain_vision(
        data.world, out_dir / "pretrained" / "clip", settings.vision, settings.seed, progress
    )


def warm_up_llm(
    settings: DemoSettings, data: DemoData, out_dir: Path, progress: Progress | None = None
) -> LLMWarmupResult:
    """The tiny Llama, saved as ``out_dir / "pretrained" / "llm"``."""
    scenes = {c.file_name: cell_targets(c) for c in data.train_contexts}
    return warmup_llm(
        data.instruct, data.captions, data.drills, scenes, out_dir / "pretrained" / "llm",
        settings.llm, settings.seed, progress,
    )  # fmt: skip


def stage_overrides(
    settings: DemoSettings, stage: str, data: DemoData, parts: dict[str, Path], out_dir: Path
) -> list[str]:
    """Hydra overrides of the shipped ``demo_pretrain`` (``stage1``) or ``demo_finetune``
    (``stage2``) experiment: the demo's data files, schedule and ``parts`` (the ``vision`` and
    ``llm`` folders; for stage 2 also the stage-1 ``projector`` file)."""
    s = settings
    schedule: StageSettings = getattr(s, stage)
    files = [data.stage1_file] if stage == "stage1" else data.stage2_files
    overrides = [
        f"experiment={'demo_pretrain' if stage == 'stage1' else 'demo_finetune'}",
        f"model.vision.name_or_path='{parts['vision']}'",
        f"model.vision.select_layer={s.vision.feature_layer}",
        f"model.llm.name_or_path='{parts['llm']}'",
        "data.train_files=[" + ",".join(f"'{f}'" for f in files) + "]",
        f"data.image_root='{data.world.image_root}'",
        f"data.batch_size={schedule.batch_size}",
        f"module.optimizer.lr={schedule.lr}",
        f"trainer.max_steps={schedule.steps}",
        f"paths.output_dir='{out_dir / stage}'",
        f"seed={s.seed}",
    ]
    if stage == "stage2":
        overrides += [
            f"model.conv_template={s.llm.template}",
            f"model.init_projector_from='{parts['projector']}'",
        ]
    return overrides


def train_stage(
    settings: DemoSettings, stage: str, data: DemoData, parts: dict[str, Path], out_dir: Path
) -> dict[str, Any]:
    """Stage 1 or 2 through ``train(cfg)``; its run lands in ``out_dir / stage``."""
    from llava_lite.training import compose_config, train  # Lightning: only when a stage runs

    return train(compose_config(stage_overrides(settings, stage, data, parts, out_dir)))


def evaluate_held_out(
    settings: DemoSettings, data: DemoData, model: Any, processor: Any, out_dir: Path
) -> dict[str, dict[str, dict[str, float]]]:
    """Greedy answers to the held-out questions, scored per type: ``{"canonical": ...,
    "paraphrased": ...}``; the answers land in ``out_dir / "eval"``."""
    return {
        name: evaluate_closed_form(
            model, processor, records, data.world.image_root,
            out_dir / "eval" / f"answers_{name}.jsonl", settings.eval.batch_size,
        )[0]
        for name, records in (("canonical", data.held_out), ("paraphrased", data.paraphrased))
    }  # fmt: skip


def check_chats(
    settings: DemoSettings, data: DemoData, model: Any, processor: Any, out_dir: Path
) -> list[dict[str, Any]]:
    """Chats about held-out images drawn by the seed, every claim checked; the first
    ``eval.chat_images`` are drawn as ``sample*.png``. All land in ``chats.jsonl``."""
    s = settings.eval
    scenes = {scene.image_id: scene for scene in load_scenes(data.world, "test")}
    images = sorted({(int(r["id"][:7]), r["image"]) for r in data.held_out})
    chosen = random.Random(f"{settings.seed}:chats").sample(
        images, min(max(s.chat_images, s.checked_chats), len(images))
    )
    chats = [
        sample_chat(
            model, processor, data.world, image, scenes[image_id], settings.seed,
            out_dir / f"sample{k or ''}.png" if k < s.chat_images else None,
        )
        for k, (image_id, image) in enumerate(chosen)
    ]  # fmt: skip
    write_jsonl_atomic(out_dir / "chats.jsonl", chats)
    return chats


def _csv_losses(stage_dir: Path) -> list[tuple[int, float]]:
    path = stage_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def write_report(
    settings: DemoSettings,
    data: DemoData,
    vision: VisionPretrainResult,
    llm: LLMWarmupResult,
    stages: dict[str, dict[str, Any]],
    scores: dict[str, dict[str, dict[str, float]]],
    chats: list[dict[str, Any]],
    out_dir: Path,
) -> dict[str, Any]:
    """Plots, metrics CSVs and ``summary.json``; returns the summary (without timings)."""
    losses = {
        "CLIP image-caption": [(st, g) for st, g, _ in vision.losses],
        "CLIP region": [(st, r) for st, _, r in vision.losses],
        "LLM warm-up": llm.losses,
        "stage 1": _csv_losses(out_dir / "stage1"),
        "stage 2": _csv_losses(out_dir / "stage2"),
    }
    plot_losses(losses, out_dir / "loss_curves.png")
    plot_accuracy(scores, out_dir / "accuracy.png")
    write_metrics_csv(scores["canonical"], out_dir / "metrics.csv")
    write_metrics_csv(scores["paraphrased"], out_dir / "metrics_paraphrased.csv")
    w = settings.world
    shown = chats[: settings.eval.chat_images]
    return {
        "run_dir": str(out_dir),
        "settings": dataclasses.asdict(settings),
        "data": {
            "train_images": w.n_train, "test_images": w.n_test, "instruction_samples": len(data.instruct),
            "drills": len(data.drills), "stage1_pairs": w.n_train * w.captions_per_image,
            "eval_questions": len(data.held_out), "llm_warmup_documents": llm.documents,
        },
        "final_loss": {name: (v[-1][1] if v else None) for name, v in losses.items()},
        "vision_cell_accuracy": {"what": vision.object_accuracy, "where": vision.position_accuracy},
        "accuracy": scores["canonical"],
        "accuracy_paraphrased": scores["paraphrased"],
        "stage_steps": {name: stage["global_step"] for name, stage in stages.items()},
        "skipped_records": {name: dict(stage["bad_samples"]) for name, stage in stages.items()},
        "chats": shown,
        "chat_claims": {
            "chats": len(chats), "claims": sum(c["claims"] for c in chats),
            "right": sum(c["claims_right"] for c in chats),
        },
        "predictions_files": [str(out_dir / "eval" / f"answers_{n}.jsonl") for n in scores],
    }  # fmt: skip


def preference_stage(
    settings: DemoSettings,
    data: DemoData,
    model: Any,
    processor: Any,
    stage2: dict[str, Any],
    scores: dict[str, dict[str, dict[str, float]]],
    chats: list[dict[str, Any]],
    out_dir: Path,
    clock: Clock,
) -> dict[str, Any]:
    """Stage 3 (``--with-dpo``): pairs, DPO, then the same held-out questions and chats again
    (their answers under ``out_dir / "dpo"``); returns the pairs' summary and before / after."""
    from llava_lite.data import LlavaProcessor
    from llava_lite.modeling import LlavaModel

    pairs = clock.step(
        "stage 3: pairs of its own answers, judged offline",
        lambda: chat_pairs(settings, data, model, processor, out_dir),
    )
    clock.say(f"  {pairs['pairs']} pairs from {pairs['sampled']} questions; no pair: {pairs['no_pair']}")
    stage3 = clock.step("stage 3: DPO", lambda: train_dpo(settings, data, Path(stage2["model_dir"]), out_dir))
    tuned = LlavaModel.from_pretrained(stage3["model_dir"])
    tuned_processor = LlavaProcessor.from_model(tuned)
    after_dir = out_dir / "dpo"
    scores_after = clock.step(
        "held-out evaluation after DPO",
        lambda: evaluate_held_out(settings, data, tuned, tuned_processor, after_dir),
    )
    chats_after = clock.step(
        "chats after DPO", lambda: check_chats(settings, data, tuned, tuned_processor, after_dir)
    )
    return {
        "pairs": pairs,
        "steps": stage3["global_step"],
        "final_loss": _csv_losses(out_dir / "stage3")[-1:],
        "before": answer_measures(scores, chats),
        "after": answer_measures(scores_after, chats_after),
    }


def run_demo(
    out_dir: str | Path, settings: DemoSettings | None = None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every step into ``out_dir``; returns the summary also written to ``summary.json``."""
    from llava_lite.data import LlavaProcessor  # heavy imports: only when the demo runs
    from llava_lite.modeling import LlavaModel

    s = settings or demo_settings()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(echo)
    clock.say(f"run folder: {out}  (torch threads: {torch.get_num_threads()})")

    data = clock.step("world and data (offline teacher)", lambda: build_data(s, out))
    clock.say(
        f"data: {len(data.instruct)} instruction samples {data.generation['samples']}, rejected "
        f"{data.generation['rejects']}, teacher errors {data.generation['teacher_errors']}; "
        f"{s.world.n_train} stage-1 images x {s.world.captions_per_image} captions; "
        f"{len(data.held_out)} held-out questions on {s.world.n_test} test images"
    )
    vision_log = clock.every(50, lambda step, g, r: clock.say(
        f"  CLIP step {step}/{s.vision.steps}: image-caption loss {g:.3f}, region loss {r:.3f}"))  # fmt: skip
    vision = clock.step("vision pretraining (CLIP-style)", lambda: pretrain_tower(s, data, out, vision_log))
    clock.say(
        f"  held-out cells with an object: what {100 * vision.object_accuracy:.1f}%, "
        f"where {100 * vision.position_accuracy:.1f}%"
    )
    llm_log = clock.every(
        100, lambda step, loss: clock.say(f"  LLM step {step}/{s.llm.steps}: loss {loss:.3f}")
    )
    llm = clock.step(
        "LLM warm-up (text: scene cells in the image's place)", lambda: warm_up_llm(s, data, out, llm_log)
    )
    parts = {"vision": vision.path, "llm": llm.path}
    stages = {
        "stage1": clock.step(
            "stage 1: projector alignment", lambda: train_stage(s, "stage1", data, parts, out)
        )
    }
    parts["projector"] = Path(stages["stage1"]["projector_path"])
    stages["stage2"] = clock.step(
        "stage 2: instruction tuning", lambda: train_stage(s, "stage2", data, parts, out)
    )
    for name, stage in stages.items():
        if stage["bad_samples"]:  # data.overlong=skip: counted and logged, never dropped silently
            clock.say(f"{name} skipped records: {dict(stage['bad_samples'])}")

    model = LlavaModel.from_pretrained(stages["stage2"]["model_dir"])
    processor = LlavaProcessor.from_model(model)
    scores = clock.step(
        "held-out evaluation (canonical and paraphrased wording)",
        lambda: evaluate_held_out(s, data, model, processor, out),
    )
    chats = clock.step(
        "chats about random held-out images", lambda: check_chats(s, data, model, processor, out)
    )
    for chat in chats[: s.eval.chat_images]:
        clock.say(f"chat about {chat['image']} ({chat['claims_right']}/{chat['claims']} claims right):")
        for q, a in chat["turns"]:
            echo(f"    USER: {q}\n    ASSISTANT: {a}")
        for problem in chat["problems"]:
            echo(f"    wrong: {problem}")

    summary = write_report(s, data, vision, llm, stages, scores, chats, out)
    if s.dpo.enabled:
        summary["dpo"] = preference_stage(
            s, data, model, processor, stages["stage2"], scores, chats, out, clock
        )
    summary |= {"seconds": clock.times, "total_seconds": time.perf_counter() - clock.start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    echo(summary_table(summary))
    echo(f"run folder: {out}")
    return summary
