"""Stage-2 non-pad tokens/s: naive padded batches vs length-grouped batches vs packed rows.

The same samples are trained three ways, one optimiser step of each in turn, in one process:

- ``naive``: random batches of ``--batch`` samples, right-padded to their longest sample;
- ``grouped``: LLaVA's ``group_by_modality_length`` (``ModalityLengthGroupedSampler``), padded;
- ``packed``: the naive random batches, packed whole into rows of ``--budget`` tokens
  (``PackingCollator``: per-sample positions, no cross-sample attention).

Each mode has its own copy of the same model and AdamW; a step is forward, backward and the
optimiser step (projector + LLM trained, vision frozen). Throughput counts only real tokens;
each step counts with the fastest of ``--repeats`` interleaved runs, since the machine may be
shared, and peak memory comes from one more pass.
``max_rel_loss_diff`` compares, on the packed batches, the packed loss with the padded loss of
the same samples; ``peak_mem_ratio`` is packed / grouped (largest step of each).

Length mix (``--lengths-from`` replaces it): LLaVA-1.5's 665K stage-2 mixture, components and
sample counts as listed in the LLaVA-1.5 paper (Liu et al., "Improved Baselines with Visual
Instruction Tuning", 2023, data table): LLaVA-Instruct 158K, ShareGPT 40K (text only), VQAv2
83K, GQA 72K, OKVQA 9K, OCR-VQA 80K, A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K. Text
lengths (Llama tokens, without the 576 image tokens) are rough log-normal guesses per
component, not measured: VQA-style sets merge several short question/answer turns per image
(median ~100), captions ~50, region sets ~200, LLaVA-Instruct ~250, ShareGPT ~900 (cut at 2048).
On the CPU everything is scaled by ``--scale`` (default 1/8: a 64-token image block and a
256-token budget instead of 576 and 2,048) so a run takes a minute or two.

``--anyres``: the same text lengths, but every image is read the LLaVA-NeXT way (AnyRes over
LLaVA-NeXT's pinpoints scaled to the tower's tile), so its tokens vary with its size: each
image's (height, width) has a log-uniform aspect ratio in [1/2, 2] and a long side of 400 to
1,024 px, kept when LLaVA-NeXT's geometry (336 px tiles, 576 tokens a view) makes 1,500 to
2,900 tokens of it, then scaled to the tower (about 170 to 340 tokens at 1/8); rows hold
LLaVA-NeXT's 4,096 tokens (512 at 1/8). ``grouped`` counts each image's own tokens (as
``LlavaDataset.modality_lengths`` does); ``grouped_text`` groups by the text alone, as LLaVA's
sampler does (it never sees an image's size), and ``packed_vs_grouped_text`` compares with it.

    python benchmarks/bench_packing.py
    python benchmarks/bench_packing.py --anyres
    python benchmarks/bench_packing.py --lengths-from llava_v1_5_mix665k.json --samples 512
    python benchmarks/bench_packing.py --device cuda --scale 1 --size 7b_wide --dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import time
from typing import Any

import torch
from common import SIZES, build, machine, peak_memory

from llava_lite.config import IGNORE_INDEX
from llava_lite.data import LlavaCollator, LlavaProcessor, ModalityLengthGroupedSampler, read_records
from llava_lite.data.packing import PackingCollator
from llava_lite.image_grid import LLAVA_NEXT_PINPOINTS, ImageGrid
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.llm import check_packed_attention
from llava_lite.training import apply_stage, build_adamw, param_groups

# component: (samples in the 665K mix, has image, median text tokens, log-normal sigma)
MIX: dict[str, tuple[int, bool, int, float]] = {
    "llava_instruct": (158_000, True, 250, 0.5),
    "sharegpt": (40_000, False, 900, 0.7),
    "vqav2": (83_000, True, 110, 0.4),
    "gqa": (72_000, True, 110, 0.4),
    "okvqa": (9_000, True, 60, 0.4),
    "ocrvqa": (80_000, True, 100, 0.4),
    "aokvqa": (66_000, True, 80, 0.4),
    "textcaps": (22_000, True, 50, 0.3),
    "refcoco": (48_000, True, 200, 0.5),
    "vg": (86_000, True, 200, 0.5),
}
FULL_IMAGE_TOKENS, FULL_BUDGET = 576, 2048
# --anyres: LLaVA-NeXT's geometry at full scale, its image-token range and its model_max_length.
NEXT_GRID = ImageGrid(336, 24, 576, LLAVA_NEXT_PINPOINTS)
NEXT_TOKENS, NEXT_BUDGET = (1500, 2900), 4096


def anyres_image(rng: random.Random, tile: int) -> tuple[int, int]:
    """An image (height, width) LLaVA-NeXT makes ``NEXT_TOKENS`` tokens of, scaled to ``tile`` pixels a view."""
    while True:
        aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))  # width / height
        long = rng.uniform(400, 1024)
        h, w = (long, long * aspect) if aspect < 1 else (long / aspect, long)
        if NEXT_TOKENS[0] <= NEXT_GRID.num_tokens(round(h), round(w)) <= NEXT_TOKENS[1]:
            return max(1, round(h * tile / 336)), max(1, round(w * tile / 336))


def mix_samples(model: LlavaModel, n: int, scale: float, budget: int, seed: int) -> list[dict[str, Any]]:
    """``n`` synthetic samples with the mix's lengths; the last ~40% of each text is the trained answer."""
    rng = random.Random(seed)
    names = list(MIX)
    weights = [MIX[k][0] for k in names]
    out = []
    for i in range(n):
        name = rng.choices(names, weights)[0]
        _, has_image, median, sigma = MIX[name]
        size = anyres_image(rng, model.image_grid.tile) if has_image and model.image_grid.anyres else None
        block = (model.image_grid.num_tokens(*size) if size else model.num_image_tokens) if has_image else 0
        text = max(4, round(rng.lognormvariate(math.log(median * scale), sigma)))
        text = min(text, budget - block)
        ids = torch.randint(10, 1000, (text,), generator=torch.Generator().manual_seed(seed * 100_003 + i))
        labels = ids.clone()
        labels[: text - max(1, int(0.4 * text))] = IGNORE_INDEX
        if has_image:
            slots = torch.full((block,), model.image_token_id)
            ids = torch.cat([ids[:2], slots, ids[2:]])
            labels = torch.cat([labels[:2], torch.full_like(slots, IGNORE_INDEX), labels[2:]])
        sample = {"input_ids": ids, "labels": labels, "id": f"{name}{i}", "_image": has_image}
        out.append({**sample, "image_sizes": [size]} if size else sample)
    return out


def file_samples(
    model: LlavaModel, path: str, n: int, budget: int, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``n`` records of a LLaVA JSON/JSONL file through this model's processor (tokens of its
    tokenizer; images replaced by blank tensors, since only lengths matter), and how many records
    were rejected on the way (over-long or malformed; reported, not hidden)."""
    processor = LlavaProcessor.from_model(model, model_max_length=budget)
    size = model.vision_tower.image_size
    records = [r for r in read_records(path) if r.record is not None]
    random.Random(seed).shuffle(records)
    out, rejected = [], 0
    for raw in records:
        try:
            sample = processor.process_record(
                raw.record, torch.zeros(3, size, size) if raw.has_image else None
            )
        except ValueError:  # BadSampleError included: too long, malformed
            rejected += 1
            continue
        out.append({**sample, "_image": raw.has_image})
        if len(out) == n:
            break
    return out, rejected


def with_pixels(samples: list[dict[str, Any]], grid: ImageGrid) -> list[dict[str, Any]]:
    """Random pixels: ``[3, H, W]`` per image, or AnyRes's tiles ``[n_tiles, 3, H, W]``."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for s in samples:
        shape = (grid.num_tiles(*s["image_sizes"][0]),) if "image_sizes" in s else ()
        pixels = torch.randn(*shape, 3, grid.tile, grid.tile, generator=gen) if s["_image"] else None
        out.append({**s, "pixel_values": pixels})
    return out


def batches_for(
    mode: str, samples: list[dict[str, Any]], batch: int, seed: int, image_token_id: int
) -> list[list[int]]:
    if mode.startswith("grouped"):
        lengths = [s["input_ids"].numel() for s in samples]
        if mode == "grouped_text":  # LLaVA's own lengths: the text only, whatever the image costs
            lengths = [
                n - int((s["input_ids"] == image_token_id).sum())
                for n, s in zip(lengths, samples, strict=True)
            ]
        sampler = ModalityLengthGroupedSampler(lengths, [s["_image"] for s in samples], batch, seed=seed)
        return [b for b in sampler.global_batches() if b]
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--scale", type=float, default=1 / 8)
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each step; the fastest counts")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths-from", default=None, help="a LLaVA JSON/JSONL file to take samples from")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one-row", action="store_true", help="packed batches as one row (flash-attention)")
    parser.add_argument(
        "--anyres", action="store_true", help="LLaVA-NeXT AnyRes images (tokens vary per image)"
    )
    parser.add_argument(
        "--row-factor",
        type=int,
        default=1,
        help="packed rows hold this many times the sample limit (data.packing.max_tokens_per_row)",
    )
    args = parser.parse_args()
    if args.anyres and args.lengths_from:
        parser.error("--anyres takes its lengths from the built-in mix, not --lengths-from")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = round((NEXT_BUDGET if args.anyres else FULL_BUDGET) * args.scale)
    patch = SIZES[args.size]["patch_size"]
    image_px = patch * round(math.sqrt(FULL_IMAGE_TOKENS * args.scale))  # about 576 x scale image tokens
    # AnyRes: LLaVA-NeXT's pinpoints in tiles of image_px instead of 336 px.
    pinpoints = tuple((h // 336 * image_px, w // 336 * image_px) for h, w in LLAVA_NEXT_PINPOINTS)
    overrides = {"image_size": image_px, **({"pinpoints": pinpoints} if args.anyres else {})}
    base = build(args.size, args.dtype, attn=args.attn, **overrides).to(args.device)
    apply_stage(base.components(), "finetune")
    check_packed_attention(base.llm, f"--attn {args.attn} packing", rows_per_batch=1 if args.one_row else 2)
    rejected = 0
    if args.lengths_from:
        samples, rejected = file_samples(base, args.lengths_from, args.samples, budget, args.seed)
    else:
        samples = mix_samples(base, args.samples, args.scale, budget, args.seed)
    samples = with_pixels(samples, base.image_grid)
    pad_id = int(base.tokenizer.pad_token_id)
    collate = {
        "naive": LlavaCollator(pad_id, image_token_id=base.image_token_id),
        "grouped": LlavaCollator(pad_id, image_token_id=base.image_token_id),
        **(
            {"grouped_text": LlavaCollator(pad_id, image_token_id=base.image_token_id)} if args.anyres else {}
        ),
        "packed": PackingCollator(
            pad_id, budget * args.row_factor, base.image_token_id, one_row=args.one_row
        ),
    }
    modes = list(collate)
    plans = {m: batches_for(m, samples, args.batch, args.seed, base.image_token_id) for m in modes}
    batches = {m: [collate[m]([samples[i] for i in b]) for b in plans[m]] for m in modes}
    models = {m: copy.deepcopy(base) for m in modes}
    opts = {m: build_adamw(param_groups(models[m].components(), 1e-5), 1e-5) for m in modes}

    dtype = base.llm.get_input_embeddings().weight.dtype

    def to_dev(b: dict[str, Any]) -> dict[str, Any]:
        keys = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values", "image_sizes")
        out = {k: b[k].to(args.device) for k in keys if b.get(k) is not None}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(dtype)
        return out

    def step(m: str, b: dict[str, Any]) -> None:
        terms = models[m].loss_terms(**to_dev(b))
        (terms.loss_sum / terms.num_tokens).backward()
        opts[m].step()
        opts[m].zero_grad(set_to_none=True)

    rel_diffs = []
    with torch.no_grad():
        for b in plans["packed"][:4]:
            group = [samples[i] for i in b]
            packed, padded = (
                models["packed"].loss_terms(**to_dev(c(group))) for c in (collate["packed"], collate["naive"])
            )
            lp, lu = float(packed.loss_sum / packed.num_tokens), float(padded.loss_sum / padded.num_tokens)
            rel_diffs.append(abs(lp - lu) / abs(lu))
    for m in modes:
        step(m, batches[m][0])  # warm-up (optimiser state)
    # Per step the faster of --repeats interleaved runs (this machine may be shared), then one
    # more pass for peak memory, which must not slow the timed runs.
    seconds = {m: 0.0 for m in modes}
    for k in range(max(len(v) for v in batches.values())):
        best = {m: math.inf for m in modes}
        for _ in range(args.repeats):
            for m in modes:  # interleaved: every mode sees the same machine load
                if k < len(batches[m]):
                    start = time.perf_counter()
                    step(m, batches[m][k])
                    best[m] = min(best[m], time.perf_counter() - start)
        for m in modes:
            seconds[m] += best[m] if k < len(batches[m]) else 0.0
    peaks = {m: max(peak_memory(lambda m=m, b=b: step(m, b), args.device) for b in batches[m]) for m in modes}
    real = sum(s["input_ids"].numel() for s in samples)
    rows = {}
    for m in modes:
        slots = sum(b["input_ids"].numel() for b in batches[m])
        rows[m] = {
            "steps": len(batches[m]),
            "rows_per_step": statistics.mean(b["input_ids"].shape[0] for b in batches[m]),
            "row_tokens": statistics.mean(b["input_ids"].shape[1] for b in batches[m]),
            "useful_fraction": real / slots,
            "tokens_per_s": real / seconds[m],
            "peak_mem_mb": peaks[m] / 2**20,
        }
    print(f"{'mode':>12} {'steps':>5} {'rows':>5} {'T':>6} {'useful':>7} {'tok/s':>9} {'peak MB':>8}")
    for m, r in rows.items():
        print(
            f"{m:>12} {r['steps']:>5} {r['rows_per_step']:>5.1f} {r['row_tokens']:>6.0f} "
            f"{r['useful_fraction']:>7.1%} {r['tokens_per_s']:>9.0f} {r['peak_mem_mb']:>8.1f}"
        )
    tps = {m: rows[m]["tokens_per_s"] for m in modes}
    blocks = [int((s["input_ids"] == base.image_token_id).sum()) for s in samples if s["_image"]]
    summary = {
        **machine(),
        "device": args.device,
        "size": args.size,
        "attn": args.attn,
        "one_row": args.one_row,
        "lengths": args.lengths_from
        or f"llava_v1_5_mix665k-like{', AnyRes' if args.anyres else ''}, scale {args.scale:g}",
        "samples": len(samples),
        "records_rejected": rejected,
        "batch": args.batch,
        "budget": budget,
        "image_tokens": [min(blocks, default=0), max(blocks, default=0)]
        if args.anyres
        else base.num_image_tokens,
        "packed_vs_grouped": tps["packed"] / tps["grouped"],
        "packed_vs_naive": tps["packed"] / tps["naive"],
        "grouped_vs_naive": tps["grouped"] / tps["naive"],
        **({"packed_vs_grouped_text": tps["packed"] / tps["grouped_text"]} if "grouped_text" in tps else {}),
        "max_rel_loss_diff": max(rel_diffs),
        "peak_mem_ratio": peaks["packed"] / peaks["grouped"] if peaks["grouped"] else float("nan"),
        "modes": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
