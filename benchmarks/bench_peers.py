"""Stage-2 training against TRL's ``SFTTrainer``: same llava-hf model, samples, order, optimiser and batch.

Both sides train one llava-hf folder (``LlavaForConditionalGeneration``: the ``vocab32k`` model of
``common.SIZES``, a CLIP-like tower, 196 image tokens, a 4-layer Llama with a 32K vocabulary, random
weights exported by ``export_to_hf_llava``) on the same single-turn LLaVA records, in file order:

- **ours**: ``llava_lite.training.train(cfg)``, the ``llava-lite-train`` path (``LlavaLitModule``,
  ``LlavaDataModule``, Lightning), ``experiment=finetune module.init_from=<folder>``: the folder is read
  by ``load_pretrained``, the projector and LLM train, the tower is frozen, the loss is the token mean
  over the answer tokens of each optimiser step. ``--packing`` packs each batch into rows
  (``data.packing``); off by default, as slower here: these samples differ little in length (15% of a
  padded batch is padding, ``padding_share``), and on a CPU a packed row attends over its
  whole length under a block-diagonal mask (no variable-length kernel): by a FLOP count, four samples
  in one row cost more attention than their padding costs at this width. Both sides then train the
  same batches.
- **trl**: TRL's ``SFTTrainer`` on ``LlavaForConditionalGeneration.from_pretrained(<folder>)`` (tower
  frozen by ``requires_grad_(False)`` before the trainer is built: ``SFTConfig`` has no option for
  it; the same parameters train on both sides, checked) with a conversational
  prompt-completion dataset (``images``, ``prompt``, ``completion``) through TRL's own
  ``DataCollatorForVisionLanguageModeling``. Its settings, and why:

  - ``completion_only_loss=True`` (TRL's default for prompt-completion data): only the answer and its
    ``</s>`` are trained, as LLaVA's labels. ``assistant_only_loss`` would need a chat template with
    ``{% generation %}`` markers, which LLaVA's Vicuna template has not and for which TRL has no
    training template (``get_training_chat_template``).
  - ``chat_template_path``: the exported chat template with ``{{ bos_token + ' ' }}`` in front. TRL's
    collator tokenises with ``add_special_tokens=False``, so without it every sample would lose LLaVA's
    BOS; ``<s> A chat`` tokenises as BOS then ``▁A`` (the tokenizer's Metaspace pre-tokeniser), the ids
    ours gives, where ``<s>A`` would give ``A``.
  - ``packing=False``, ``padding_free=False``: TRL 1.16 refuses both for vision datasets
    (``sft_trainer.py``: "Packing is not supported for vision datasets", "Padding-free training is yet
    not supported for vision datasets"), so padded batches are its fastest VLM path.
  - ``activation_checkpointing=False`` (``gradient_checkpointing`` defaults to true in ``SFTConfig``):
    recomputing activations is slower; ours does not checkpoint either.
  - ``bf16=False``, ``use_cpu=True``: float32, as ours (``trainer=cpu``, ``32-true``); bf16 matmuls are
    far slower than fp32 on most CPUs.
  - ``optim`` left at its default (``adamw_torch_fused``: torch's fused AdamW, which has a CPU kernel);
    lr, betas, eps, weight decay 0, gradient clipping at 1.0 and a cosine schedule without warmup equal
    ours (``module.warmup_ratio=0``: in a short run LLaVA's 3% warmup would be a step at lr 0).
  - ``per_device_train_batch_size`` / ``gradient_accumulation_steps`` = ours' ``data.batch_size`` /
    ``global_batch_size``; ``train_sampling_strategy="sequential"`` and ours' ``data.shuffle=false``,
    so each optimiser step trains the same samples on both sides.
  - ``dataloader_num_workers=0`` (and ours ``data.num_workers=0``): with two cores, loader workers take
    cores from the step's matmuls.
  - ``max_length=None`` (no truncation: every sample fits), ``logging_steps=1`` (to read each step's
    loss), ``save_strategy="no"``, ``report_to=[]``, ``disable_tqdm=True`` (ours: no checkpointing,
    logger or progress bar either).

The runs alternate (ours, trl, ours, trl, ...), each in its own subprocess, so the two see the same
machine load and each has a process of its own to measure. Per run, from the child itself:

- **non-pad tokens/s**: the real tokens (image slots included, padding excluded: the batch's
  ``attention_mask`` sum, ``real_tokens`` for packed rows; TRL's own count, the same sum) of optimiser
  steps 2..N over the wall time from the end of step 1 to the end of step N (data loading, forward,
  backward, clipping, AdamW; step 1 is warm-up);
- **peak memory**: ``VmHWM`` from ``/proc/self/status``. ``train_peak`` is its growth during training
  (reset through ``/proc/self/clear_refs`` after ``malloc_trim`` when training starts, model loaded),
  the headline, as ``bench_train.py`` measures; ``process_peak`` is the child's whole peak, imports and
  model loading included;
- **loss** of every optimiser step as each side logs it (ours ``train/loss``, TRL's ``loss``).

Before the runs, the first micro-batch is built by both data paths from the same records and compared
(token ids, trained labels, pixel values): ``batches_identical``. With identical batches and weights
the step-1 losses agree to float32 rounding; later steps drift apart only by rounding.

Length mix: LLaVA-Instruct-158K's three kinds, single-turn (TRL's prompt-completion trains one
answer), kind weights as the dataset's counts (conversation 58K, detail 23K, complex reasoning 77K),
question / answer lengths in tokens log-normal around rough guesses (15 / 50, 12 / 130, 25 / 120;
not measured): samples of about 360 tokens (196 image slots, the Vicuna system prompt and roles, ~20
question and ~100 answer tokens), 28% of them trained, near full scale's share (576 image tokens +
~250 text tokens); a padded batch is about 15% padding. Words come from the tiny tokenizer's corpus; images are 224 px
PNG files (the tower's size, so transformers' resize and crop and our padding leave them as they are).

    python benchmarks/bench_peers.py --threads 2               # 20 steps x 2 runs a side, a few minutes
    python benchmarks/bench_peers.py --threads 2 --steps 2 --repeats 1   # quick check
    python benchmarks/bench_peers.py --threads 2 --packing     # ours packs each batch into rows
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULT = "BENCH_PEERS_RESULT "  # prefix of the child's result line on stdout
SIDES = ("ours", "trl")
MODEL_DIR, IMAGES_DIR, RECORDS, TRL_TEMPLATE = "model", "images", "records.jsonl", "chat_template_bos.jinja"
# LLaVA-Instruct-158K kinds: (records in the dataset, median question tokens, median answer tokens, sigma)
KINDS: dict[str, tuple[int, int, int, float]] = {
    "conversation": (58_000, 15, 50, 0.5),
    "detail": (23_000, 12, 130, 0.3),
    "complex_reasoning": (77_000, 25, 120, 0.4),
}
IMAGE_SIZE = 224  # the vocab32k tower's input size


# ---- memory of this process (stdlib only: the TRL child must not import llava_lite) ------------
def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024  # type: ignore[union-attr]


def _reset_peak() -> int:
    """Resident bytes now, after handing freed memory back and making the peak the current size."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


class Meter:
    """What one run measures: step ends, tokens and losses per optimiser step, peak memory.

    Both sides call it from their framework's own hooks, so the same quantities are taken at the
    same points: ``start`` when training starts, ``tokens`` per micro-batch, ``step_end`` after each
    optimiser step, ``loss`` with each step's logged loss."""

    def __init__(self) -> None:
        self.setup_peak = 0
        self.base = 0
        self.ends: list[float] = []
        self.step_tokens: list[int] = []
        self.losses: list[float] = []
        self.trainable_params = 0
        self.positions = 0  # token positions of the batches, padding included
        self._tokens = 0

    def start(self, model: Any) -> None:
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.setup_peak = _status_bytes("VmHWM")
        self.base = _reset_peak()

    def tokens(self, n: int) -> None:
        self._tokens += n

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.step_tokens.append(self._tokens)
        self._tokens = 0

    def loss(self, value: float) -> None:
        self.losses.append(float(value))

    def result(self, **extra: Any) -> dict[str, Any]:
        import torch

        end_peak = _status_bytes("VmHWM")
        timed = self.ends[-1] - self.ends[0] if len(self.ends) > 1 else float("nan")
        timed_tokens = sum(self.step_tokens[1:])
        return {
            "steps": len(self.ends),
            "step_tokens": self.step_tokens,
            "losses": self.losses,
            "timed_s": timed,
            "tokens_per_s": timed_tokens / timed if timed > 0 else float("nan"),
            "train_peak_mb": (end_peak - self.base) / 2**20,
            "process_peak_mb": max(end_peak, self.setup_peak) / 2**20,
            "threads": torch.get_num_threads(),
            "trainable_params": self.trainable_params,
            "padding_share": 1 - sum(self.step_tokens) / self.positions if self.positions else None,
            **extra,
        }


# ---- data ---------------------------------------------------------------------------------------
def _words(tokenizer: Any) -> list[tuple[str, int]]:
    """Plain lower-case words of the tiny tokenizer's corpus with their token counts."""
    from importlib import resources

    corpus = resources.files("llava_lite.modeling").joinpath("tiny_corpus.txt").read_text()
    words = sorted({w for w in re.findall(r"\b[a-z]+\b", corpus) if len(w) > 1})
    return [(w, len(tokenizer(" " + w, add_special_tokens=False).input_ids)) for w in words]


def _text(rng: random.Random, words: list[tuple[str, int]], tokens: int) -> str:
    """Words from ``words`` until about ``tokens`` tokens, as a sentence."""
    out: list[str] = []
    count = 0
    while count < tokens:
        word, n = rng.choice(words)
        out.append(word)
        count += n
    return " ".join(out).capitalize() + "."


def write_data(folder: Path, n: int, tokenizer: Any, seed: int) -> None:
    """``n`` single-turn LLaVA records (``records.jsonl``) with a 224 px PNG each (``images/``)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    words = _words(tokenizer)
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        kind = rng.choices(names, weights)[0]
        _, q_median, a_median, sigma = KINDS[kind]
        q_tokens = max(3, round(rng.lognormvariate(math.log(q_median), sigma)))
        a_tokens = max(3, round(rng.lognormvariate(math.log(a_median), sigma)))
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.randrange(IMAGE_SIZE - 40), rng.randrange(IMAGE_SIZE - 40)
            box = (x, y, x + rng.randrange(20, 40), y + rng.randrange(20, 40))
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / IMAGES_DIR / f"{i}.png")
        conversations = [
            {"from": "human", "value": "<image>\n" + _text(rng, words, q_tokens)[:-1] + "?"},
            {"from": "gpt", "value": _text(rng, words, a_tokens)},
        ]
        lines.append(json.dumps({"id": f"{kind}{i}", "image": f"{i}.png", "conversations": conversations}))
    (folder / RECORDS).write_text("\n".join(lines) + "\n")


def trl_rows(folder: Path) -> list[dict[str, Any]]:
    """The records as a TRL conversational prompt-completion dataset with one image each."""
    rows = []
    for line in (folder / RECORDS).read_text().splitlines():
        record = json.loads(line)
        question, answer = (c["value"] for c in record["conversations"])
        text = question.removeprefix("<image>\n")
        rows.append(
            {
                "images": [str(folder / IMAGES_DIR / record["image"])],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            }
        )
    return rows


def trl_dataset(folder: Path) -> Any:
    """``trl_rows`` as a ``datasets.Dataset``, images decoded from their files on access."""
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from datasets import List as ListFeature

    return Dataset.from_list(trl_rows(folder)).cast_column("images", ListFeature(ImageFeature()))


def prepare(folder: Path, samples: int, seed: int) -> dict[str, Any]:
    """The llava-hf folder both sides load, the records, and TRL's chat template with LLaVA's BOS."""
    from common import build
    from transformers import AutoProcessor

    from llava_lite.modeling import export_to_hf_llava

    model = build("vocab32k")
    export_to_hf_llava(model, folder / MODEL_DIR)
    write_data(folder, samples, model.tokenizer, seed)
    template = AutoProcessor.from_pretrained(folder / MODEL_DIR).chat_template
    # "<s> A chat": the tokenizer's BOS, then the first word as it tokenises at the start of a text
    (folder / TRL_TEMPLATE).write_text("{{ bos_token + ' ' }}" + template)
    return {"image_tokens": model.num_image_tokens, "vocab_size": model.llm.config.vocab_size}


def compare_batches(folder: Path, batch: int) -> dict[str, Any]:
    """Both data paths' first micro-batch of the same records: equal ids, trained labels and pixels?"""
    import torch
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from llava_lite.data import LlavaDataModule, LlavaProcessor
    from llava_lite.modeling.load import load_pretrained

    model = load_pretrained(folder / MODEL_DIR)
    dm = LlavaDataModule(
        str(folder / RECORDS), image_root=str(folder / IMAGES_DIR), batch_size=batch, shuffle=False
    )
    dm.attach_processor(LlavaProcessor.from_model(model))
    ours = next(iter(dm.train_dataloader()))
    processor = AutoProcessor.from_pretrained(folder / MODEL_DIR)
    processor.chat_template = (folder / TRL_TEMPLATE).read_text()  # as chat_template_path sets it
    dataset = trl_dataset(folder)
    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    theirs = collator([dataset[i] for i in range(batch)])
    rows = []
    for i in range(batch):
        mine, their = ours["attention_mask"][i].bool(), theirs["attention_mask"][i].bool()
        rows.append(
            {
                "ids": torch.equal(ours["input_ids"][i][mine], theirs["input_ids"][i][their]),
                "labels": torch.equal(ours["labels"][i][mine], theirs["labels"][i][their]),
                "tokens": int(mine.sum()),
                "trained": int((ours["labels"][i] != -100).sum()),
            }
        )
    pixel_diff = float((ours["pixel_values"] - theirs["pixel_values"]).abs().max())
    same = all(r["ids"] and r["labels"] for r in rows) and pixel_diff < 1e-5
    return {"batches_identical": same, "rows": rows, "pixel_max_abs_diff": pixel_diff}


# ---- the two sides (each in its own process) -----------------------------------------------------
def run_ours(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """llava_lite's ``train(cfg)`` with a Lightning callback feeding the meter."""
    import lightning as L

    from llava_lite.training import compose_config, train

    meter = Meter()

    class Measure(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            meter.start(pl_module)

        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            mask = batch.get("attention_mask")
            meter.tokens(int(mask.sum()) if mask is not None else int(batch["real_tokens"]))
            meter.positions += batch["input_ids"].numel()

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
                meter.step_end()
                meter.loss(float(trainer.callback_metrics["train/loss"]))

    overrides = [
        "experiment=finetune",
        "trainer=cpu",
        f"module.init_from={folder / MODEL_DIR}",
        f"module.optimizer.lr={args.lr}",
        "module.warmup_ratio=0.0",
        f"data.train_files={folder / RECORDS}",
        f"data.image_root={folder / IMAGES_DIR}",
        f"data.batch_size={args.batch}",
        f"global_batch_size={args.batch * args.accumulation}",
        "data.num_workers=0",
        "data.shuffle=false",
        f"data.packing.enabled={str(args.packing).lower()}",
        f"data.packing.max_tokens_per_row={args.row_tokens}",
        f"trainer.max_steps={args.steps}",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        "+trainer.enable_model_summary=false",
        "callbacks=none",
        "logger=none",
        "export_model=false",
        f"paths.output_dir={folder / 'run_ours'}",
    ]
    result = train(compose_config(overrides), callbacks=[Measure()])
    return meter.result(global_step=result["global_step"], accumulation=result["accumulate_grad_batches"])


def run_trl(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """TRL's ``SFTTrainer`` (settings in the module docstring) with a callback feeding the meter."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    meter = Meter()
    holder: dict[str, Any] = {}

    class Measure(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.start(kwargs["model"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen = holder["trainer"]._total_train_tokens  # TRL's count: attention_mask sums
            meter.tokens(seen - holder.get("seen", 0))
            holder["seen"] = seen
            meter.step_end()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                meter.loss(logs["loss"])

    model = LlavaForConditionalGeneration.from_pretrained(folder / MODEL_DIR, dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)
    config = SFTConfig(
        output_dir=str(folder / "run_trl"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.accumulation,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        completion_only_loss=True,
        chat_template_path=str(folder / TRL_TEMPLATE),
        max_length=None,
        packing=False,
        padding_free=False,
        activation_checkpointing=False,
        bf16=False,
        use_cpu=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=trl_dataset(folder),
        processing_class=AutoProcessor.from_pretrained(folder / MODEL_DIR),
        callbacks=[Measure()],
    )
    holder["trainer"] = trainer
    trainer.train()
    return meter.result(global_step=trainer.state.global_step)


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    result = (run_ours if args.child == "ours" else run_trl)(args, folder)
    print(RESULT + json.dumps(result), flush=True)


# ---- the parent: prepare, check, alternate, report ----------------------------------------------
def run_child(side: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", side, "--dir", str(folder)]
    for key in ("steps", "batch", "accumulation", "lr", "row_tokens", "threads"):
        value = getattr(args, key)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    cmd += ["--packing"] if args.packing else []
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise RuntimeError(f"the {side} run failed (exit {done.returncode})")
    return {**json.loads(lines[-1][len(RESULT) :]), "run_s": time.perf_counter() - start}


def summarise(runs: dict[str, list[dict[str, Any]]], check: dict[str, Any], args: argparse.Namespace) -> None:
    import lightning
    import torch
    import transformers
    import trl

    med = {
        side: {
            key: statistics.median(r[key] for r in rs)
            for key in ("tokens_per_s", "train_peak_mb", "process_peak_mb", "timed_s", "run_s")
        }
        for side, rs in runs.items()
    }
    first = {side: rs[0] for side, rs in runs.items()}
    ours_losses, trl_losses = first["ours"]["losses"], first["trl"]["losses"]
    diffs = [abs(a - b) for a, b in zip(ours_losses, trl_losses, strict=False)]
    tokens = {side: sum(r["step_tokens"]) for side, r in first.items()}
    same_steps = first["ours"]["step_tokens"] == first["trl"]["step_tokens"]
    print(
        f"{'side':>5} {'steps':>5} {'tokens/s':>9} {'train peak MB':>13} {'process peak MB':>15} "
        f"{'loss step 1':>11} {'loss step N':>11} {'threads':>7}"
    )
    for side in SIDES:
        r = first[side]
        print(
            f"{side:>5} {r['steps']:>5} {med[side]['tokens_per_s']:>9.0f} {med[side]['train_peak_mb']:>13.0f} "
            f"{med[side]['process_peak_mb']:>15.0f} {r['losses'][0]:>11.6f} {r['losses'][-1]:>11.6f} "
            f"{r['threads']:>7}"
        )
    print(
        f"batches identical: {check['batches_identical']} (pixels max abs diff {check['pixel_max_abs_diff']:.1e}); "
        f"non-pad tokens: ours {tokens['ours']}, trl {tokens['trl']} (equal every step: {same_steps}); "
        f"loss abs diff step 1 {diffs[0]:.1e}, step N {diffs[-1]:.1e}, max {max(diffs):.1e}"
    )
    if not (check["batches_identical"] and same_steps and diffs[0] < 1e-4):
        print("WARNING: the two sides did not train the same batches; the comparison is not like for like")
    summary: dict[str, Any] = {
        "bench": "peers",
        "model": "vocab32k",
        "stage": 2,
        "steps": args.steps,
        "batch": args.batch,
        "accumulation": args.accumulation,
        "global_batch": args.batch * args.accumulation,
        "repeats": args.repeats,
        "lr": args.lr,
        "ours_packing": args.packing,
        "torch_threads": {side: first[side]["threads"] for side in SIDES},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "lightning": lightning.__version__,
        "batches_identical": check["batches_identical"],
        "steps_trained": {side: first[side]["steps"] for side in SIDES},
        "non_pad_tokens": tokens,
        "padding_share": first["ours"]["padding_share"],
        "step_tokens_equal": same_steps,
        "trainable_params": {side: first[side]["trainable_params"] for side in SIDES},
        "run_s": {side: med[side]["run_s"] for side in SIDES},
        "tokens_per_s_ours": med["ours"]["tokens_per_s"],
        "tokens_per_s_trl": med["trl"]["tokens_per_s"],
        "speedup_vs_trl": med["ours"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
        "train_peak_mb_ours": med["ours"]["train_peak_mb"],
        "train_peak_mb_trl": med["trl"]["train_peak_mb"],
        "peak_mem_ratio_vs_trl": med["ours"]["train_peak_mb"] / med["trl"]["train_peak_mb"],
        "process_peak_mb_ours": med["ours"]["process_peak_mb"],
        "process_peak_mb_trl": med["trl"]["process_peak_mb"],
        "process_peak_ratio_vs_trl": med["ours"]["process_peak_mb"] / med["trl"]["process_peak_mb"],
        "loss_step1_ours": ours_losses[0],
        "loss_step1_trl": trl_losses[0],
        "loss_step1_abs_diff": diffs[0],
        "loss_last_ours": ours_losses[-1],
        "loss_last_trl": trl_losses[-1],
        "loss_last_abs_diff": diffs[-1],
        "loss_max_abs_diff": max(diffs),
        "tokens_per_s_runs": {side: [r["tokens_per_s"] for r in rs] for side, rs in runs.items()},
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps a run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs a side, alternating")
    parser.add_argument("--batch", type=int, default=4, help="samples a micro-batch")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches an optimiser step")
    parser.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (LLaVA-1.5 stage 2)")
    parser.add_argument("--packing", action="store_true", help="ours packs each batch into rows")
    parser.add_argument("--row-tokens", type=int, default=2048, help="ours' packed row length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the records")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is not timed)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.steps * args.batch * args.accumulation, args.seed)
        check = compare_batches(folder, args.batch)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for _ in range(args.repeats):
            for side in SIDES:
                runs[side].append(run_child(side, folder, args))
        summarise(runs, check, args)


if __name__ == "__main__":
    main()
