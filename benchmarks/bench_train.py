"""Training step of llava_lite vs transformers' LlavaForConditionalGeneration, identical weights and batches.

For each size (``small``; ``medium``, where matmuls dominate; ``vocab32k``, the small model
with a 32K vocabulary) and each stage (1: projector only; 2: projector + LLM, vision frozen),
builds a random LlavaModel, exports it with ``export_to_hf_llava`` and loads the export with
transformers, checks both give the same loss on the same right-padded batch, then times
training steps (forward, backward, AdamW step over the trainable parameters only),
alternating ours and theirs in this one process. Both sides freeze the same parts and skip
the KV cache (``use_cache=False``); ours computes logits only at trained positions
(``LlavaModel.loss_terms``), theirs at every position. Also reports peak memory per step,
model FLOPs utilisation of the medium stage-2 step against this machine's measured fp32 matmul
peak, and data-loader samples/s with 0 and 2 workers. Prints a table; the last line is JSON.

``anyres32k`` (stage 2 only) is ``vocab32k`` made LLaVA-NeXT-like: a 336 px / 14 px tower (576
tokens a view), AnyRes over LLaVA-NeXT's pinpoints, row ``i``'s image of size
``ANYRES_IMAGES[i % 4]`` (3 or 5 views, 1,512 to 2,830 image tokens); transformers' side is
``LlavaNextForConditionalGeneration`` (the export's class for AnyRes), given each image's tiles
padded to the batch's most as it expects.

``onevision32k`` (stage 2 only) is ``vocab32k`` read the LLaVA-OneVision way: a 384 px / 14 px
tower (729 tokens a view), OneVision's 1x1 to 6x6 pinpoints with ``anyres_max_9``, and rows of
mixed kinds (``ONEVISION_ROWS``): one image (1,944 or 2,929 tokens), three images as base views
(3 x 730), and a video of 8 frames pooled to 14 x 14 (1,569); transformers' side is
``LlavaOnevisionForConditionalGeneration`` (the export's class).

    python benchmarks/bench_train.py                        # CPU, all four sizes
    python benchmarks/bench_train.py --sizes small --repeats 3
    python benchmarks/bench_train.py --sizes anyres32k --no-loader   # the AnyRes row alone
    python benchmarks/bench_train.py --sizes onevision32k --no-loader   # the OneVision row alone
    python benchmarks/bench_train.py --device cuda --dtype bfloat16 --sizes medium 7b_wide
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import SIZES, build, interleaved, machine, matmul_peak_flops, peak_memory
from PIL import Image
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
)

from llava_lite.config import IGNORE_INDEX
from llava_lite.data import LlavaDataModule, LlavaProcessor
from llava_lite.image_grid import LLAVA_NEXT_PINPOINTS, ONEVISION_PINPOINTS
from llava_lite.modeling import LlavaModel, export_to_hf_llava
from llava_lite.modeling.llava import VISUAL_INPUTS, LossTerms
from llava_lite.training import apply_stage, build_adamw, param_groups

# (prompt tokens, answer tokens) ranges per stage: short captions in stage 1, long answers in 2.
LENGTHS = {1: ((6, 12), (8, 32)), 2: ((16, 64), (32, 160))}
STAGE_NAMES = {1: "pretrain", 2: "finetune"}
# AnyRes sizes: (base size, build overrides), stage 2 only.
ANYRES_SIZES = {
    "anyres32k": ("vocab32k", {"image_size": 336, "patch_size": 14, "pinpoints": LLAVA_NEXT_PINPOINTS}),
    "onevision32k": (
        "vocab32k",
        {"image_size": 384, "patch_size": 14, "pinpoints": ONEVISION_PINPOINTS, "onevision": True},
    ),
}
# Row i of a OneVision batch is ONEVISION_ROWS[i % 4]: ("images", [(height, width), ...]) or ("video", frames).
ONEVISION_ROWS = (
    ("images", [(300, 480)]),
    ("images", [(300, 480), (480, 640), (384, 384)]),
    ("video", 8),
    ("images", [(480, 640)]),
)
# Row i's image (height, width) under AnyRes: 1,512 / 1,948 / 2,340 / 2,830 tokens from 3 / 5 / 5 / 5 views.
ANYRES_IMAGES = ((300, 480), (720, 1280), (480, 640), (600, 640))


def _visual_block(
    model: LlavaModel, i: int, anyres_sizes: list[tuple[int, int]]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Row ``i``'s image (or video) slots and what fills them: ``{"images": [(size, tiled)], "frames": n}``."""
    grid = model.image_grid
    if model.video_token_id is not None:  # OneVision rows of mixed kinds
        kind, what = ONEVISION_ROWS[i % len(ONEVISION_ROWS)]
        if kind == "video":
            return torch.full((grid.video_tokens(what),), model.video_token_id), {
                "images": [],
                "frames": what,
            }
        tiled = len(what) == 1
        counts = [grid.num_tokens(h, w, tiled) for h, w in what]
        return torch.full((sum(counts),), model.image_token_id), {"images": [(s, tiled) for s in what]}
    if anyres_sizes:
        size = anyres_sizes[i]
        return torch.full((grid.num_tokens(*size),), model.image_token_id), {"images": [(size, True)]}
    return torch.full((grid.base_tokens,), model.image_token_id), {"images": [(None, True)]}


def make_batch(model: LlavaModel, stage: int, batch: int, seed: int, device: str) -> dict[str, torch.Tensor]:
    """A right-padded batch: prompt, image block, answer per row; only answer tokens are trained.
    AnyRes: row ``i``'s image is ``ANYRES_IMAGES[i % 4]``, ``pixel_values`` its tiles ``[N_tiles, 3, H, W]``;
    OneVision: row ``i`` is ``ONEVISION_ROWS[i % 4]``."""
    gen = torch.Generator().manual_seed(seed)
    (p_lo, p_hi), (a_lo, a_hi) = LENGTHS[stage]
    grid = model.image_grid
    sizes = [ANYRES_IMAGES[i % len(ANYRES_IMAGES)] for i in range(batch)] if grid.anyres else []
    rows, images, frames = [], [], []
    for i in range(batch):
        prompt = torch.randint(
            10, 1000, (int(torch.randint(p_lo, p_hi, (1,), generator=gen)),), generator=gen
        )
        answer = torch.randint(
            10, 1000, (int(torch.randint(a_lo, a_hi, (1,), generator=gen)),), generator=gen
        )
        block, visual = _visual_block(model, i, sizes)
        images += visual["images"]
        frames += [visual["frames"]] if "frames" in visual else []
        ids = torch.cat([prompt[:2], block, prompt[2:], answer])
        labels = torch.cat([torch.full((ids.numel() - answer.numel(),), IGNORE_INDEX), answer])
        rows.append((ids, labels))
    longest = max(r[0].numel() for r in rows)
    input_ids = torch.full((batch, longest), int(model.tokenizer.pad_token_id))  # [B, T]
    labels = torch.full((batch, longest), IGNORE_INDEX)  # [B, T]
    mask = torch.zeros((batch, longest), dtype=torch.long)  # [B, T]
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : ids.numel()], labels[i, : ids.numel()], mask[i, : ids.numel()] = ids, lab, 1
    size = model.vision_tower.image_size
    views = sum(grid.num_tiles(*s, tiled=t) for s, t in images) if grid.anyres else len(images)
    out = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": mask,
        "pixel_values": torch.randn(views, 3, size, size, generator=gen),  # [N_tiles, 3, H, W]
    }
    if grid.anyres:
        out["image_sizes"] = torch.tensor([s for s, _ in images])  # [N, 2] (height, width)
        out["image_tiled"] = torch.tensor([t for _, t in images])  # [N]
    if frames:
        out["pixel_values_videos"] = torch.randn(sum(frames), 3, size, size, generator=gen)  # [F, 3, H, W]
        out["video_frames"] = torch.tensor(frames)  # [V]
    dtype = model.llm.get_input_embeddings().weight.dtype
    return {k: v.to(device, dtype) if k.startswith("pixel_values") else v.to(device) for k, v in out.items()}


def hf_batch(model: LlavaModel, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as transformers takes it: LlavaNext / LlavaOnevision want each image's tiles
    padded to the batch's most, ``[N, max_tiles, 3, H, W]`` (they drop the padding again by
    ``image_sizes``); OneVision wants images per sample (``batch_num_images``) and each video's
    frames ``[V, F, 3, H, W]``."""
    if "image_sizes" not in b:
        return b
    grid = model.image_grid
    tiled = b["image_tiled"].tolist()
    tiles = [grid.num_tiles(h, w, t) for (h, w), t in zip(b["image_sizes"].tolist(), tiled, strict=True)]
    padded = torch.nn.utils.rnn.pad_sequence(list(b["pixel_values"].split(tiles)), batch_first=True)
    out = {k: v for k, v in b.items() if k not in ("image_tiled", "pixel_values_videos", "video_frames")}
    out["pixel_values"] = padded
    if model.video_token_id is not None:
        per_row = [
            len(visual["images"])
            for visual in (_visual_block(model, i, [])[1] for i in range(len(b["input_ids"])))
        ]
        out["batch_num_images"] = torch.tensor([n for n in per_row if n])
        if "pixel_values_videos" in b:
            frames = b["video_frames"].tolist()
            assert len(set(frames)) == 1, "transformers takes videos of one frame count"
            out["pixel_values_videos"] = b["pixel_values_videos"].view(
                len(frames), frames[0], *b["pixel_values_videos"].shape[1:]
            )
    return out


def freeze_hf(model: PreTrainedModel, stage: int) -> None:
    """The same trainable parts as ``apply_stage``: the projector (and AnyRes's image newline),
    plus the LLM in stage 2."""
    for name, p in model.named_parameters():
        projector = "multi_modal_projector" in name or "image_newline" in name
        p.requires_grad_(projector or (stage == 2 and "vision_tower" not in name))


def our_terms(model: LlavaModel, b: dict[str, torch.Tensor]) -> LossTerms:
    return model.loss_terms(
        b["input_ids"],
        b["labels"],
        attention_mask=b["attention_mask"],
        **{k: b.get(k) for k in VISUAL_INPUTS},
    )


def our_step(model: LlavaModel, opt: torch.optim.Optimizer, b: dict[str, torch.Tensor]) -> None:
    terms = our_terms(model, b)
    (terms.loss_sum / terms.num_tokens).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def hf_step(model: PreTrainedModel, opt: torch.optim.Optimizer, b: dict[str, torch.Tensor]) -> None:
    model(**b, use_cache=False).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def model_flops(model: LlavaModel, b: dict[str, torch.Tensor], stage: int) -> float:
    """Necessary FLOPs of one step: LLM and attention over all positions, the head at trained ones,
    the frozen tower forward only; backward = 2x forward for trained weights, 1x for activations only."""
    llm = model.llm
    cfg = llm.config
    n_body = sum(
        p.numel() for n, p in llm.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    rows, length = b["input_ids"].shape
    tokens = rows * length
    trained = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
    fwd_llm = 2 * n_body * tokens + 4 * cfg.num_hidden_layers * cfg.hidden_size * rows * length**2
    fwd_head = 2 * cfg.hidden_size * cfg.vocab_size * trained
    n_vis = sum(p.numel() for p in model.vision_tower.parameters())
    n_proj = sum(p.numel() for p in model.projector.parameters())
    views = b["pixel_values"].shape[0] + (
        b["pixel_values_videos"].shape[0] if "pixel_values_videos" in b else 0
    )
    patches = views * model.num_image_tokens
    backward = 2 if stage == 2 else 1  # stage 1: the frozen LLM still passes activation gradients
    return (1 + backward) * (fwd_llm + fwd_head) + 2 * n_vis * patches + 6 * n_proj * patches


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
    )


def bench_one(size: str, stage: int, args: argparse.Namespace) -> dict[str, Any]:
    base, overrides = ANYRES_SIZES.get(size, (size, {}))
    ours = build(base, args.dtype, **overrides).to(args.device)
    hf_class = (
        LlavaOnevisionForConditionalGeneration
        if ours.video_token_id is not None
        else LlavaNextForConditionalGeneration
        if ours.image_grid.anyres
        else LlavaForConditionalGeneration
    )
    with tempfile.TemporaryDirectory() as folder:
        export_to_hf_llava(ours, folder)
        theirs = hf_class.from_pretrained(folder, dtype=getattr(torch, args.dtype))
    theirs.to(args.device).train()
    apply_stage(ours.components(), STAGE_NAMES[stage])
    freeze_hf(theirs, stage)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} and sum(
        p.numel() for p in ours.parameters() if p.requires_grad
    ) == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    b = make_batch(ours, stage, args.batch, seed=stage, device=args.device)
    hb = hf_batch(ours, b)
    with torch.no_grad():
        ours_loss = our_terms(ours, b)
        loss_diff = abs(
            float(ours_loss.loss_sum / ours_loss.num_tokens) - float(theirs(**hb, use_cache=False).loss)
        )
    frozen_graph = ours.vision_tower(b["pixel_values"][:1]).requires_grad  # grad mode on, as in training
    our_terms(ours, b).loss_sum.backward()
    frozen_with_grad = sum(p.numel() for p in ours.parameters() if not p.requires_grad and p.grad is not None)
    ours.zero_grad(set_to_none=True)
    opt_ours = build_adamw(param_groups(ours.components(), 1e-5), 1e-5)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-5)
    steps = {"ours": lambda: our_step(ours, opt_ours, b), "hf": lambda: hf_step(theirs, opt_theirs, hb)}
    med = interleaved(steps, args.device, args.repeats)  # the warm-up call creates the optimiser state
    # the smaller of two calls: allocator leftovers only ever add to the resident-set growth
    mem = {name: min(peak_memory(fn, args.device) for _ in range(2)) for name, fn in steps.items()}
    result = {
        "size": size,
        "stage": stage,
        "batch": args.batch,
        "seq_len": int(b["input_ids"].shape[1]),
        "image_tokens": (b["input_ids"] == ours.image_token_id).sum(1).tolist(),
        "views": int(b["pixel_values"].shape[0])
        + (int(b["pixel_values_videos"].shape[0]) if "pixel_values_videos" in b else 0),
        "video_tokens": 0
        if ours.video_token_id is None
        else int((b["input_ids"] == ours.video_token_id).sum()),
        "trained_tokens": int(ours_loss.num_tokens),
        "loss_abs_diff": loss_diff,
        "step_s_ours": med["ours"],
        "step_s_hf": med["hf"],
        "speedup_vs_hf": med["hf"] / med["ours"],
        "peak_mem_mb_ours": mem["ours"] / 2**20,
        "peak_mem_mb_hf": mem["hf"] / 2**20,
        "peak_mem_ratio_vs_hf": mem["ours"] / mem["hf"] if mem["hf"] > 0 else float("nan"),
        "trainable_params": sum(p.numel() for p in ours.parameters() if p.requires_grad),
        "frozen_params_with_grad": frozen_with_grad,
        "optimizer_state_mb_ours": optimizer_state_bytes(opt_ours) / 2**20,
        "optimizer_state_mb_hf": optimizer_state_bytes(opt_theirs) / 2**20,
        "frozen_tower_builds_graph": frozen_graph,
        "_flops": model_flops(ours, b, stage),
    }
    return result


def loader_samples_per_s(workers: int, n: int = 64) -> float:
    """Samples/s of the training DataLoader (PNG decode, CLIP preprocessing, tokenising, collating)."""
    model = build("small")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = []
        for i in range(n):
            Image.new("RGB", (320, 240), (i * 3 % 255, 80, 160)).save(root / f"{i}.png")
            conv = [
                {"from": "human", "value": "<image>\nDescribe the picture in detail."},
                {"from": "gpt", "value": "A plain coloured picture with nothing else in it. " * (1 + i % 4)},
            ]
            lines.append(json.dumps({"id": str(i), "image": f"{i}.png", "conversations": conv}))
        (root / "d.jsonl").write_text("\n".join(lines) + "\n")
        dm = LlavaDataModule(str(root / "d.jsonl"), image_root=str(root), batch_size=8, num_workers=workers)
        dm.attach_processor(LlavaProcessor.from_model(model))
        dm.setup("fit")
        start = time.perf_counter()
        seen = sum(len(dm.observe_batch(batch)["ids"]) for batch in dm.train_dataloader())
        return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["small", "medium", "vocab32k", "anyres32k"],
        choices=sorted(SIZES) + sorted(ANYRES_SIZES),
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-loader", action="store_true", help="skip the data-loader measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    peak = matmul_peak_flops(args.device, dtype)
    rows = [
        bench_one(size, stage, args)
        for size in args.sizes
        for stage in ((2,) if size in ANYRES_SIZES else (1, 2))
    ]
    peak = max(peak, matmul_peak_flops(args.device, dtype))  # before and after: the less loaded one
    print(
        f"{'size':>9} {'stage':>5} {'T':>5} {'ours s':>8} {'hf s':>8} {'speedup':>8} "
        f"{'mem ours MB':>12} {'mem hf MB':>10} {'mem ratio':>9} {'loss diff':>9}"
    )
    for r in rows:
        print(
            f"{r['size']:>9} {r['stage']:>5} {r['seq_len']:>5} {r['step_s_ours']:>8.3f} {r['step_s_hf']:>8.3f} "
            f"{r['speedup_vs_hf']:>8.2f} {r['peak_mem_mb_ours']:>12.1f} {r['peak_mem_mb_hf']:>10.1f} "
            f"{r['peak_mem_ratio_vs_hf']:>9.2f} {r['loss_abs_diff']:>9.1e}"
        )
    summary: dict[str, Any] = {
        **machine(),
        "device": args.device,
        "dtype": args.dtype,
        "matmul_peak_gflops": peak / 1e9,
    }
    plain = [s for s in args.sizes if s in SIZES]
    headline = next((s for s in ("vocab32k", "medium", "small", "large") if s in plain), args.sizes[0])
    by = {(r["size"], r["stage"]): r for r in rows}
    for r in rows:
        flops = r.pop("_flops")
        r["mfu_ours"], r["mfu_hf"] = flops / r["step_s_ours"] / peak, flops / r["step_s_hf"] / peak
    summary["headline_size"] = headline
    if (headline, 1) in by:
        summary["stage1_speedup_vs_hf"] = by[(headline, 1)]["speedup_vs_hf"]
    summary["stage2_speedup_vs_hf"] = by[(headline, 2)]["speedup_vs_hf"]
    summary["peak_mem_ratio_vs_hf"] = by[(headline, 2)]["peak_mem_ratio_vs_hf"]
    if ("anyres32k", 2) in by:
        summary["anyres_stage2_speedup_vs_hf"] = by[("anyres32k", 2)]["speedup_vs_hf"]
        summary["anyres_peak_mem_ratio_vs_hf"] = by[("anyres32k", 2)]["peak_mem_ratio_vs_hf"]
        summary["anyres_loss_abs_diff"] = by[("anyres32k", 2)]["loss_abs_diff"]
    if ("onevision32k", 2) in by:
        summary["onevision_stage2_speedup_vs_hf"] = by[("onevision32k", 2)]["speedup_vs_hf"]
        summary["onevision_peak_mem_ratio_vs_hf"] = by[("onevision32k", 2)]["peak_mem_ratio_vs_hf"]
        summary["onevision_loss_abs_diff"] = by[("onevision32k", 2)]["loss_abs_diff"]
    mfu_size = "medium" if "medium" in args.sizes else headline
    summary["mfu_stage2_ours"] = by[(mfu_size, 2)]["mfu_ours"]
    summary["mfu_stage2_hf"] = by[(mfu_size, 2)]["mfu_hf"]
    summary["mfu_size"] = mfu_size
    if not args.no_loader:
        summary["loader_samples_per_s"] = {w: loader_samples_per_s(w) for w in (0, 2)}
        small2 = by.get(("small", 2))
        if small2:
            summary["train_samples_per_s_small_stage2"] = args.batch / small2["step_s_ours"]
    summary["runs"] = rows
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
