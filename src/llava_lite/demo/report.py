"""What the demo shows: the summary table, metrics CSV, loss-curve plot and a sample chat."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from PIL import Image

from llava_lite.config import IMAGE_TOKEN
from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.synthetic.questions import DETAIL_INSTRUCTIONS
from llava_lite.synthetic.world import WorldPaths

TYPE_ORDER = ("colour", "shape", "count", "position", "all")


def write_metrics_csv(scores: dict[str, dict[str, float]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question_type", "count", "correct", "accuracy_pct", "chance_pct"])
        for t in TYPE_ORDER:
            if t in scores:
                r = scores[t]
                w.writerow([t, r["count"], r["correct"], f"{r['accuracy']:.2f}", f"{r['chance']:.2f}"])


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per training step (vision pretraining, LLM warm-up, stage 1, stage 2)."""
    panels = [
        ("vision pretraining", ["CLIP image-caption", "CLIP region"]),
        ("LLM warm-up", ["LLM warm-up"]),
        ("stage 1 (projector)", ["stage 1"]),
        ("stage 2 (projector + LLM)", ["stage 2"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            if curves.get(name):
                steps, values = zip(*curves[name], strict=True)
                ax.plot(steps, values, label=name, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if len(names) > 1:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_conversation(
    model: Any, processor: Any, world: WorldPaths, eval_records: list[dict[str, Any]], k: int, path: Path
) -> dict[str, Any]:
    """Chat about the k-th held-out image (a description, then its closed-form questions); save a PNG."""
    images = list(dict.fromkeys(r["image"] for r in eval_records))
    image = images[k % len(images)]
    # The closed-form question without its short-answer instruction: the chat asks freely.
    questions = [
        r["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip().split("\n")[0]
        for r in eval_records
        if r["image"] == image
    ][:3]
    questions.insert(0, DETAIL_INSTRUCTIONS[k % len(DETAIL_INSTRUCTIONS)])  # first, as in the training data
    session = ChatSession(model, processor, world.image_root / image, DecodingSettings(max_new_tokens=96))
    turns = [(q, session.ask(q)) for q in questions]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 2]})
    left.imshow(Image.open(world.image_root / image).convert("RGB"), interpolation="nearest")
    left.set_title(image, fontsize=8)
    left.axis("off")
    text = "\n\n".join(
        textwrap.fill(f"USER: {q}", 90) + "\n" + textwrap.fill(f"ASSISTANT: {a}", 90) for q, a in turns
    )
    right.text(0, 1, text, va="top", ha="left", wrap=True, fontsize=8, family="monospace")
    right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"image": image, "turns": turns, "png": str(path)}


def summary_table(summary: dict[str, Any]) -> str:
    """The end-of-run table: data sizes, time per step, final losses, accuracy vs chance."""
    d, lines = summary["data"], []
    lines.append("=" * 64)
    lines.append("llava_lite demo: summary")
    lines.append("-" * 64)
    lines.append(
        f"data       {d['train_images']} train images, {d['instruction_samples']} instruction samples, "
        f"{d['stage1_pairs']} caption pairs, {d['eval_questions']} held-out questions ({d['test_images']} images)"
    )
    lines.append("time       " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items()))
    lines.append(f"           total {summary['total_seconds']:.0f}s")
    lines.append(
        "final loss " + ", ".join(f"{k} {v:.3f}" for k, v in summary["final_loss"].items() if v is not None)
    )
    lines.append("-" * 64)
    lines.append(f"{'question type':<15}{'n':>6}{'accuracy':>12}{'chance':>10}")
    for t in TYPE_ORDER:
        if t in summary["accuracy"]:
            r = summary["accuracy"][t]
            name = "overall" if t == "all" else t
            lines.append(f"{name:<15}{r['count']:>6}{r['accuracy']:>11.1f}%{r['chance']:>9.1f}%")
    lines.append("=" * 64)
    return "\n".join(lines)
