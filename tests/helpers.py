"""Builders shared by several test modules (``from helpers import ...``; ``tests/`` is on
``sys.path`` through ``tests/conftest.py``)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw

from llava_lite.config import LlavaConfig
from llava_lite.modeling import LlavaModel

# A CLIP-style vision tower of 16 patches (32 px images, 8 px patches).
TINY_VISION_ARCH: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
# A Llama-style LLM with grouped-query attention.
TINY_TEXT_ARCH: dict[str, Any] = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def tiny_llava(
    projector: str = "mlp2x_gelu",
    conv_template: str | None = None,
    **vision: Any,
) -> LlavaModel:
    """A random CLIP + Llama :class:`LlavaModel` of the tiny archs above, seeded, in eval mode;
    ``projector`` is the projector type (variants included, e.g. ``mlp2x_gelu+patch_positions``),
    ``vision`` adds VisionConfig fields, ``conv_template`` (when given) replaces the default."""
    torch.manual_seed(0)
    data: dict[str, Any] = {
        "vision": {"arch": TINY_VISION_ARCH, **vision},
        "projector": {"type": projector},
        "llm": {"model_type": "llama", "arch": TINY_TEXT_ARCH},
    }
    if conv_template is not None:
        data["conv_template"] = conv_template
    return LlavaModel(LlavaConfig.from_dict(data)).eval()


def write_llava_bench_files(root: Path) -> None:
    """A three-question LLaVA-Bench (one per category) about ``001.jpg``, its context and the
    reference answers, as ``questions.jsonl``, ``context.jsonl`` and ``answers_gpt4.jsonl``."""
    rows = {
        "questions.jsonl": [
            {"question_id": i, "image": "001.jpg", "text": f"Question {i}?", "category": c}
            for i, c in enumerate(("conv", "detail", "complex"))
        ],
        "context.jsonl": [{"image": "001.jpg", "caption": "A plain blue square."}],
        "answers_gpt4.jsonl": [{"question_id": i, "text": f"reference {i}"} for i in range(3)],
    }
    for name, lines in rows.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in lines))


COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def write_dataset(root: Path, n: int, sizes: Sequence[tuple[int, int]] = ((32, 32),)) -> Path:
    """``n`` one-turn records about a coloured rectangle, plus their images: 32 px, or record
    ``i`` at ``sizes[i % len(sizes)]`` (height, width)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    with (root / "train.jsonl").open("w") as f:
        for i in range(n):
            color = names[i % len(names)]
            h, w = sizes[i % len(sizes)]
            image = Image.new("RGB", (w, h), (255, 255, 255))
            box = [2 + i % 7, 3, 22 + i % 5, 28] if (h, w) == (32, 32) else [w // 5, h // 5, w - 2, h - 2]
            ImageDraw.Draw(image).rectangle(box, fill=COLORS[color])
            image.save(root / "images" / f"{i:03d}.png")
            record = {
                "id": f"rec{i}",
                "image": f"{i:03d}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                    {"from": "gpt", "value": f"The shape is {color}."},
                ],
            }
            f.write(json.dumps(record) + "\n")
    return root


PALETTE = [(20 + 70 * (i % 4), 20 + 70 * (i // 4 % 4), 20 + 70 * (i // 16 % 4)) for i in range(64)]
COLOUR_TOLERANCE = 20  # per channel; mpeg4 at these sizes shifts solid colours by a few levels


def make_video(
    path: Path,
    n_frames: int,
    width: int = 48,
    height: int = 32,
    rate: int = 10,
    codec: str = "mpeg4",
    options: dict[str, str] | None = None,
) -> Path:
    """A clip whose frame i is PALETTE[i]; ``options`` go to the muxer (e.g. movflags)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        container.start_encoding()  # writes the header even for zero frames
        for i in range(n_frames):
            rgb = np.full((height, width, 3), PALETTE[i], np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def read_losses(output_dir: str | Path, logger_name: str = "csv") -> dict[int, float]:
    """``{step: train/loss}`` from the CSV logger."""
    with (Path(output_dir) / logger_name / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


class CrashAt(L.Callback):
    """Simulates a crash at the start of step ``at`` (after the step-``at`` checkpoint)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


class KillAt(L.Callback):
    """``kill -9`` of one rank at the start of step ``at`` (after the step-``at`` checkpoint):
    no exception, no cleanup, as when a node dies. For runs launched as commands
    (``+callbacks.kill._target_=helpers.KillAt`` with ``tests/`` on ``PYTHONPATH``)."""

    def __init__(self, at: int, rank: int = 1) -> None:
        self.at = at
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers and rendezvous the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
