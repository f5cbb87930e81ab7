#!/usr/bin/env bash
# GPU check, about 8 minutes on one GPU (written for an H100/H200-class card; NOT YET RUN ON A GPU).
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
sys.exit(0 if diff <= 2e-2 else 1)
PY
