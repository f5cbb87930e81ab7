"""What the demo shows: the summary table, metrics CSV, loss-curve plot and a sample chat."""

from __future__ import annotations

import csv
import random
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
from PIL import Image

from llava_lite.inference import ChatSession, DecodingSettings
from llava_lite.synthetic.checker import check_turns
from llava_lite.synthetic.questions import DETAIL_INSTRUCTIONS, chat_questions
from llava_lite.synthetic.scene import Scene
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


# The shown chats' decoding: greedy, long enough for a description.
CHAT_DECODING = DecodingSettings(max_new_tokens=96)


def chat_script(scene: Scene, rng: random.Random) -> list[str]:
    """The demo's chat about ``scene``: a detailed-description instruction, then free-form
    questions of each closed-form type (``synthetic.questions.chat_questions``)."""
    return [rng.choice(DETAIL_INSTRUCTIONS), *chat_questions(scene, rng)]


def sample_chat(
    model: Any, processor: Any, world: WorldPaths, image: str, scene: Scene, seed: int, path: Path | None
) -> dict[str, Any]:
    """Chat about one held-out image: a description, then free-form questions of each type.

    Every closed-form claim in the answers (colour, shape, count, position, and each object a
    description names) is checked against the image's annotations (``synthetic.checker``);
    returns the turns, the number of claims checked and right, the problems, and writes a PNG
    of the chat to ``path`` unless it is None.
    """
    questions = chat_script(scene, random.Random(f"{seed}:chat:{image}"))
    session = ChatSession(model, processor, world.image_root / image, CHAT_DECODING)
    turns = [(q, session.ask(q)) for q in questions]
    described = check_turns(turns[:1], scene, description=True)
    answered = check_turns(turns[1:], scene)
    checked = described.checked + answered.checked
    problems = described.problems + answered.problems
    result = {
        "image": image, "turns": turns, "claims": checked, "claims_right": checked - len(problems),
        "problems": problems, "png": str(path) if path else None,
    }  # fmt: skip
    if path is None:
        return result
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 2]})
    left.imshow(Image.open(world.image_root / image).convert("RGB"), interpolation="nearest")
    left.set_title(f"{image} (held out)", fontsize=8)
    left.axis("off")
    text = "\n\n".join(
        textwrap.fill(f"USER: {q}", 90) + "\n" + textwrap.fill(f"ASSISTANT: {a}", 90) for q, a in turns
    )
    text += f"\n\nclaims checked against the annotations: {checked - len(problems)}/{checked} right"
    right.text(0, 1, text, va="top", ha="left", wrap=True, fontsize=8, family="monospace")
    right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return result


def plot_accuracy(scores: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Held-out accuracy per question type, one bar per wording set, beside chance."""
    types = [t for t in TYPE_ORDER if all(t in by_type for by_type in scores.values())]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / (len(scores) + 1)
    for k, (name, by_type) in enumerate(scores.items()):
        xs = [i + k * width for i in range(len(types))]
        bars = ax.bar(xs, [by_type[t]["accuracy"] for t in types], width, label=f"{name} wording")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    first = next(iter(scores.values()))
    xs = [i + len(scores) * width for i in range(len(types))]
    ax.bar(xs, [first[t]["chance"] for t in types], width, label="chance", color="lightgray")
    ax.set_xticks([i + width * len(scores) / 2 for i in range(len(types))])
    ax.set_xticklabels(["overall" if t == "all" else t for t in types])
    ax.set_ylim(0, 105)
    ax.set_ylabel("held-out accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    lines.append(f"{'question type':<15}{'n':>6}{'accuracy':>12}{'paraphrased':>13}{'chance':>10}")
    para = summary.get("accuracy_paraphrased", {})
    for t in TYPE_ORDER:
        if t in summary["accuracy"]:
            r = summary["accuracy"][t]
            name = "overall" if t == "all" else t
            other = f"{para[t]['accuracy']:>12.1f}%" if t in para else f"{'-':>13}"
            lines.append(f"{name:<15}{r['count']:>6}{r['accuracy']:>11.1f}%{other}{r['chance']:>9.1f}%")
    chats = summary.get("chats", [])
    if chats:
        right, claims = sum(c["claims_right"] for c in chats), sum(c["claims"] for c in chats)
        lines.append("-" * 64)
        lines.append(
            f"chats      {len(chats)} shown, random held-out images: {right}/{claims} claims right "
            f"({100 * right / max(claims, 1):.0f}%), checked against the annotations"
        )
    if (every := summary.get("chat_claims")) and every["chats"] > len(chats):
        lines.append(
            f"           {every['chats']} random held-out chats, the shown ones included: "
            f"{every['right']}/{every['claims']} claims right ({100 * every['right'] / max(every['claims'], 1):.0f}%)"
        )
    if dpo := summary.get("dpo"):
        lines.append("-" * 64)
        lines.append(
            f"stage 3    DPO on {dpo['pairs']['pairs']} pairs of its own answers, {dpo['steps']} steps"
        )
        lines.append(f"{'':<11}{'claims right':>14}{'held-out':>10}{'paraphrased':>13}{'words/answer':>14}")
        for name in ("before", "after"):
            m = dpo[name]
            lines.append(
                f"{name:<11}{m['claims_right']:>5}/{m['claims']:<4}({m['claims_right_pct']:4.1f}%)"
                f"{m['accuracy']:>9.1f}%{m['accuracy_paraphrased']:>12.1f}%{m['words_per_answer']:>14.1f}"
            )
    lines.append("=" * 64)
    return "\n".join(lines)


def answer_measures(
    scores: dict[str, dict[str, dict[str, float]]], chats: list[dict[str, Any]]
) -> dict[str, float]:
    """What preference tuning is judged by: chat claims right, held-out accuracy (both wordings)
    and answer length, since DPO is known to lengthen answers."""
    right, claims = sum(c["claims_right"] for c in chats), sum(c["claims"] for c in chats)
    answers = [a for c in chats for _, a in c["turns"]]
    return {
        "claims_right": right,
        "claims": claims,
        "claims_right_pct": 100 * right / max(claims, 1),
        "accuracy": scores["canonical"]["all"]["accuracy"],
        "accuracy_paraphrased": scores["paraphrased"]["all"]["accuracy"],
        "words_per_answer": sum(len(a.split()) for a in answers) / max(len(answers), 1),
        "words_per_description": sum(len(c["turns"][0][1].split()) for c in chats) / max(len(chats), 1),
    }
