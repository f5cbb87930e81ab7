#!/usr/bin/env bash
# GPU check, about 9 minutes on one GPU (written for an H100/H200-class card; NOT YET RUN ON A GPU).
#
# 1. bench_train.py in bf16 on the medium config and on a model of 7B-class width with 4 layers
#    (7b_wide): step time, peak memory and MFU (against the bf16 matmul peak measured in the
#    same run), llava_lite vs transformers' LlavaForConditionalGeneration.
# 2. bench_packing.py at full LLaVA-1.5 scale (576 image tokens, 2,048-token rows) on 7b_wide:
#    non-pad tokens/s, peak memory, padded (naive / grouped) vs packed.
# 3. AnyRes (LLaVA-NeXT): bench_packing.py --anyres at full scale (1,500-2,900 image tokens an
#    image, 4,096-token samples, rows of 8,192): whether a kernel that skips masked blocks
#    (flash-attention's varlen path, ATTN=flash_attention_2) turns packing's saved padding into
#    speed, which the CPU's dense masks cannot (benchmarks/README.md, "AnyRes rows").
# 4. Packed and unpacked losses must agree in bf16: max_rel_loss_diff <= 2e-2 (bf16 has 8 bits of
#    mantissa; the packed and padded kernels add in different orders). float32 on the CPU is
#    held to 1e-5 by the test suite.
# 5. DeepSpeed ZeRO-2 and ZeRO-3 (needs llava_lite[deepspeed]; skipped, and said so, without it):
#    one optimiser step of the tiny model over 3 accumulated micro-batches of unequal trained
#    tokens, fp32; its gradient must be that of (summed token losses) / (step tokens) within 1e-3,
#    which fails by a factor of 3 if Lightning and DeepSpeed both divide by the accumulation
#    (training.module.loss_scale). Lightning runs DeepSpeed on CUDA only; tests/unit/test_loss_scale.py
#    runs this step on a CPU with Lightning's CUDA checks lifted, where deepspeed is installed.
#
#   bash benchmarks/gpu_check.sh                 # ATTN=flash_attention_2 bash ... if installed
set -euo pipefail
cd "$(dirname "$0")"
ATTN="${ATTN:-sdpa}"
ONE_ROW=""
[[ "$ATTN" == flash_attention_* ]] && ONE_ROW="--one-row"  # varlen keeps samples apart in one row only
OUT="${OUT:-$(mktemp -d)}"
python -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh needs a CUDA GPU'"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

timeout 170 python bench_train.py --device cuda --dtype bfloat16 --sizes medium 7b_wide --repeats 5 \
    --no-loader | tee "$OUT/train.txt"
timeout 110 python bench_packing.py --device cuda --dtype bfloat16 --attn "$ATTN" --size 7b_wide \
    --scale 1 --samples 256 --batch 16 $ONE_ROW | tee "$OUT/packing.txt"
timeout 150 python bench_packing.py --device cuda --dtype bfloat16 --attn "$ATTN" --size 7b_wide \
    --scale 1 --samples 128 --batch 16 --anyres --row-factor 2 $ONE_ROW | tee "$OUT/packing_anyres.txt"

# One DeepSpeed step a process: DeepSpeed keeps its process groups for the life of a process.
cat > "$OUT/deepspeed_step.py" <<'PY'
import json
import sys

import lightning as L
import torch

from llava_lite.config import LlavaConfig
from llava_lite.training import LlavaLitModule

stage, sizes = int(sys.argv[1]), (2, 5, 9)  # trained tokens of each micro-batch
device = sys.argv[2] if len(sys.argv) > 2 else "cuda"  # tests/unit/test_loss_scale.py runs it on a CPU
try:
    from deepspeed.utils import safe_get_full_grad
    from lightning.pytorch.strategies import DeepSpeedStrategy
except ImportError as err:
    print(json.dumps({"stage": stage, "skipped": f"deepspeed is not installed ({err})"}))
    sys.exit(0)
gen = torch.Generator().manual_seed(0)
batches = []
for trained in sizes:
    ids = torch.randint(5, 100, (1, 12), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, 12 - trained :] = ids[:, 12 - trained :]
    batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "step_trained_tokens": sum(sizes)})


def build() -> LlavaLitModule:
    torch.manual_seed(0)
    module = LlavaLitModule(model=LlavaConfig.from_name("tiny").to_dict(), stage="finetune")
    module.model.projector.requires_grad_(False)  # text-only batches: the LLM's gradients
    return module


class Grads(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Lightning calls this every micro-batch under DeepSpeed; the step's gradient is there
        # after the accumulation boundary's backward, before engine.step().
        if trainer.strategy.deepspeed_engine.is_gradient_accumulation_boundary():
            self.grads = {n: safe_get_full_grad(p).float().cpu() for n, p in pl_module.named_parameters()
                          if p.requires_grad}


grads = Grads()
strategy = DeepSpeedStrategy(stage=stage, logging_batch_size_per_gpu=1)
trainer = L.Trainer(accelerator="gpu" if device == "cuda" else device, devices=1, strategy=strategy,
                    precision="32-true", accumulate_grad_batches=len(sizes), max_steps=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[grads])
trainer.fit(build(), torch.utils.data.DataLoader(batches, batch_size=None))
reference = build().to(device)
loss_sum = sum(reference._loss_terms({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})[0]
               for b in batches)
(loss_sum / sum(sizes)).backward()
want = {n: p.grad.float().cpu() for n, p in reference.named_parameters() if p.requires_grad}
assert set(want) == set(grads.grads), "the DeepSpeed run trained other parameters"
num = sum(float((grads.grads[n] - g).norm() ** 2) for n, g in want.items()) ** 0.5
den = sum(float(g.norm() ** 2) for g in want.values()) ** 0.5
norm_ratio = sum(float(g.norm() ** 2) for g in grads.grads.values()) ** 0.5 / den
print(json.dumps({"stage": stage, "rel_grad_diff": num / den, "grad_norm_ratio": norm_ratio}))
PY
for stage in 2 3; do
    timeout 75 python "$OUT/deepspeed_step.py" "$stage" >"$OUT/zero$stage.txt" 2>"$OUT/zero$stage.err" ||
        echo "{\"stage\": $stage, \"error\": \"exit $? (stderr in $OUT/zero$stage.err)\"}" >>"$OUT/zero$stage.txt"
    tail -n 1 "$OUT/zero$stage.txt"
done

python - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
train = json.loads((out / "train.txt").read_text().strip().splitlines()[-1])
packing = json.loads((out / "packing.txt").read_text().strip().splitlines()[-1])
anyres = json.loads((out / "packing_anyres.txt").read_text().strip().splitlines()[-1])
for r in train["runs"]:
    print(f"train {r['size']:>8} stage {r['stage']}: {r['step_s_ours']:.3f} s vs hf {r['step_s_hf']:.3f} s, "
          f"MFU {r['mfu_ours']:.1%} vs {r['mfu_hf']:.1%}, peak {r['peak_mem_mb_ours']:.0f} vs {r['peak_mem_mb_hf']:.0f} MB")
for mode, r in packing["modes"].items():
    print(f"packing {mode:>8}: {r['tokens_per_s']:.0f} tok/s, {r['useful_fraction']:.1%} useful, peak {r['peak_mem_mb']:.0f} MB")
for mode, r in anyres["modes"].items():
    print(f"anyres packing {mode:>12}: {r['tokens_per_s']:.0f} tok/s, {r['useful_fraction']:.1%} useful")
diff = max(packing["max_rel_loss_diff"], anyres["max_rel_loss_diff"])
print(f"packed vs unpacked bf16 loss: max relative difference {diff:.2e} (tolerance 2e-2)")
zero_ok = True
for stage in (2, 3):
    r = json.loads((out / f"zero{stage}.txt").read_text().strip().splitlines()[-1])
    if "skipped" in r:
        print(f"deepspeed ZeRO-{stage}: skipped, {r['skipped']}")
    elif "error" in r:
        zero_ok = False
        print(f"deepspeed ZeRO-{stage}: FAILED, {r['error']}")
    else:
        zero_ok &= r["rel_grad_diff"] <= 1e-3
        print(f"deepspeed ZeRO-{stage}: step gradient vs token mean: relative difference {r['rel_grad_diff']:.1e}, "
              f"norm ratio {r['grad_norm_ratio']:.4f} (tolerance 1e-3; 1/3 if the loss were divided twice)")
sys.exit(0 if diff <= 2e-2 and zero_ok else 1)
PY
