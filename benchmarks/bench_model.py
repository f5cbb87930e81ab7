"""Throughput of LlavaModel vs transformers' LlavaForConditionalGeneration, identical weights.

Builds a random model from a config (no downloads), exports it with ``export_to_hf_llava``,
loads the export with transformers, checks logits agree, then times a training-style forward
(with labels, full logits) and greedy generation for both in the same process, calls
alternating. Reports tokens/s and the ratio ours / transformers (1.0 = same speed).

    python benchmarks/bench_model.py                    # CPU, small model
    python benchmarks/bench_model.py --device cuda --dtype bfloat16 --size large
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from common import SIZES, build, interleaved, machine
from transformers import LlavaForConditionalGeneration

from llava_lite.modeling import export_to_hf_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ours = build(args.size, args.dtype).eval()
    with tempfile.TemporaryDirectory() as folder:
        export_to_hf_llava(ours, folder)
        theirs = LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=getattr(torch, args.dtype)
        ).eval()
    ours.to(args.device)
    theirs.to(args.device)

    gen = torch.Generator().manual_seed(0)
    text = torch.randint(
        10, ours.image_token_id, (args.batch, args.text_tokens), generator=gen
    )  # [B, T_text]
    image = torch.full((args.batch, ours.num_image_tokens), ours.image_token_id)
    input_ids = torch.cat([text[:, :1], image, text[:, 1:]], dim=1).to(args.device)  # [B, T]
    size = ours.vision_tower.image_size
    pixels = torch.randn(args.batch, 3, size, size, generator=gen).to(args.device, getattr(torch, args.dtype))
    mask = torch.ones_like(input_ids)

    with torch.inference_mode():
        diff = (
            (ours(input_ids, pixels).logits - theirs(input_ids=input_ids, pixel_values=pixels).logits)
            .abs()
            .max()
        )
        results: dict[str, float | str | int | None] = {
            **machine(),
            "device": args.device,
            "dtype": args.dtype,
            "size": args.size,
            "batch": args.batch,
            "seq_len": int(input_ids.shape[1]),
            "max_abs_logit_diff": float(diff),
        }
        fwd = interleaved(
            {
                "ours": lambda: ours(input_ids, pixels, labels=input_ids),
                "hf": lambda: theirs(input_ids=input_ids, pixel_values=pixels, labels=input_ids),
            },
            args.device,
            args.repeats,
        )
        gen_kwargs = {"max_new_tokens": args.new_tokens, "do_sample": False, "eos_token_id": -1}
        gen = interleaved(
            {
                "ours": lambda: ours.generate(input_ids, pixels, attention_mask=mask, **gen_kwargs),
                "hf": lambda: theirs.generate(
                    input_ids=input_ids,
                    pixel_values=pixels,
                    attention_mask=mask,
                    pad_token_id=ours.tokenizer.pad_token_id,
                    **gen_kwargs,
                ),
            },
            args.device,
            args.repeats,
        )
        fwd_ours, fwd_theirs, gen_ours, gen_theirs = fwd["ours"], fwd["hf"], gen["ours"], gen["hf"]
    tokens = args.batch * input_ids.shape[1]
    new = args.batch * args.new_tokens
    results.update(
        forward_tok_s_ours=tokens / fwd_ours,
        forward_tok_s_hf=tokens / fwd_theirs,
        forward_ratio=fwd_theirs / fwd_ours,
        generate_tok_s_ours=new / gen_ours,
        generate_tok_s_hf=new / gen_theirs,
        generate_ratio=gen_theirs / gen_ours,
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
