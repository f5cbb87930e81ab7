#!/usr/bin/env bash
# GPU check, at most 10 minutes on one GPU (its timeouts add up to 590 s) (written for an H100/H200-class card; NOT YET RUN ON A GPU).
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
# 6. QLoRA (needs llava_lite[qlora]; skipped, and said so, without bitsandbytes): the tiny model's
#    LLM loaded in 4-bit NF4 on the GPU (double quantisation, bf16 compute), LoRA through peft, the
#    projector in full, 10 bf16-mixed steps through Lightning on one fixed batch: the loss must be
#    finite and fall, every step's adapter gradients non-zero, the 4-bit layers on the GPU; then
#    the dequantised merged export must give the trained 4-bit model's logits within 5e-2 of the
#    largest (both in bf16, 8 bits of mantissa). tests/integration/test_train_qlora.py holds the
#    CPU's float32 run to 1e-5. `python "$OUT/qlora_step.py" cpu` runs it on a CPU in float32.
# 7. FSDP and FSDP2 (trainer=fsdp, trainer=fsdp2) on up to 2 GPUs, NCCL, bf16 (FSDP1's
#    MixedPrecision from bf16-mixed; FSDP2's param_dtype bfloat16 over float32 shards), packed rows
#    with $ATTN (one row per device under flash-attention): 6 stage-2 steps of the tiny model
#    through llava-lite-train must give a one-GPU bf16-mixed run's losses within 2e-2 (bf16), and
#    the exported model must load. tests/integration/test_train_sharded.py holds the CPU's float32
#    runs to 1e-5, with checkpoints, kill -9 and resume.
#
# The last line is one JSON object with every step's figures and "ok".
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

timeout 120 python bench_train.py --device cuda --dtype bfloat16 --sizes medium 7b_wide --repeats 3 \
    --no-loader | tee "$OUT/train.txt"
timeout 80 python bench_packing.py --device cuda --dtype bfloat16 --attn "$ATTN" --size 7b_wide \
    --scale 1 --samples 256 --batch 16 $ONE_ROW | tee "$OUT/packing.txt"
timeout 100 python bench_packing.py --device cuda --dtype bfloat16 --attn "$ATTN" --size 7b_wide \
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
    timeout 60 python "$OUT/deepspeed_step.py" "$stage" >"$OUT/zero$stage.txt" 2>"$OUT/zero$stage.err" ||
        echo "{\"stage\": $stage, \"error\": \"exit $? (stderr in $OUT/zero$stage.err)\"}" >>"$OUT/zero$stage.txt"
    tail -n 1 "$OUT/zero$stage.txt"
done

# QLoRA: a few 4-bit steps of the tiny model on the GPU, then the merged export.
cat > "$OUT/qlora_step.py" <<'PY'
import json
import sys
import tempfile

import lightning as L
import torch

from llava_lite.config import LlavaConfig
from llava_lite.modeling.load import load_pretrained
from llava_lite.training import LlavaLitModule

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
try:
    import bitsandbytes as bnb
    import peft  # noqa: F401
except ImportError as err:
    print(json.dumps({"skipped": f"bitsandbytes / peft not installed ({err})"}))
    sys.exit(0)
half = device == "cuda"  # bf16 matmuls on a CPU are hundreds of times slower: float32 there
config = LlavaConfig.from_name("tiny").to_dict()
config["llm"]["dtype"] = "bfloat16" if half else "float32"
config["llm"]["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": None}
torch.manual_seed(0)
module = LlavaLitModule(model=config, stage="finetune", optimizer={"lr": 1e-3}, warmup_ratio=0.0,
                        lora={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"})
model = module.model
gen = torch.Generator().manual_seed(0)
ids = torch.randint(10, 400, (2, 48), generator=gen)  # [B, T]
ids[:, 1 : 1 + model.num_image_tokens] = model.image_token_id
labels = ids.clone()
labels[:, : 1 + model.num_image_tokens] = -100  # [B, T]: the text after the image trains
side = model.vision_tower.image_size
batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
         "pixel_values": torch.randn(2, 3, side, side, generator=gen), "ids": ["a", "b"]}


class Record(L.Callback):
    def __init__(self) -> None:
        self.losses, self.grad_norms = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.float().norm() for n, p in pl_module.named_parameters() if ".lora_" in n and p.grad is not None]
        self.grad_norms.append(float(torch.stack(grads).norm()) if grads else 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


record = Record()
trainer = L.Trainer(accelerator="gpu" if half else device, devices=1, precision="bf16-mixed" if half else "32-true",
                    max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[record])
trainer.fit(module, torch.utils.data.DataLoader([batch] * 10, batch_size=None))
four_bit = [m for m in model.llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
on_device = all(m.weight.device.type == device and m.weight.quant_state.quant_type == "nf4" for m in four_bit)
probe = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values")}
model.eval()
with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=half):
    want = model(**probe).logits.float()  # [B, T, V]: 4-bit base + adapters
with tempfile.TemporaryDirectory() as folder:
    module.export_model(folder)  # dequantise, merge, save full precision
    merged = load_pretrained(folder).to(device).eval()
with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=half):
    got = merged(**probe).logits.float()  # [B, T, V]
losses = record.losses
print(json.dumps({
    "device": torch.cuda.get_device_name() if half else device, "compute_dtype": config["llm"]["dtype"],
    "four_bit_layers": len(four_bit), "four_bit_on_device": on_device, "losses": [round(x, 4) for x in losses],
    "finite": all(torch.isfinite(torch.tensor(losses)).tolist()), "decreasing": losses[-1] < losses[0],
    "min_adapter_grad_norm": min(record.grad_norms),
    "merged_rel_logit_diff": float((got - want).abs().max() / want.abs().max()),
}))
PY
timeout 50 python "$OUT/qlora_step.py" >"$OUT/qlora.txt" 2>"$OUT/qlora.err" ||
    echo "{\"error\": \"exit $? (stderr in $OUT/qlora.err)\"}" >>"$OUT/qlora.txt"
tail -n 1 "$OUT/qlora.txt"

# FSDP and FSDP2 through llava-lite-train, against one GPU in bf16-mixed on the same global batch.
cat > "$OUT/fsdp_step.py" <<'PY'
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd().parent / "tests"))
from helpers import read_losses, write_dataset  # noqa: E402

strategy, attn = sys.argv[1], sys.argv[2]
devices = min(2, torch.cuda.device_count())
root = Path(tempfile.mkdtemp())
write_dataset(root / "data", 12 * devices)
common = [
    "experiment=tiny_finetune", f"data.train_files={root / 'data/train.jsonl'}",
    f"data.image_root={root / 'data/images'}", f"paths.root_dir={root}", "callbacks.progress_bar=null",
    "trainer.max_steps=6", "data.packing.enabled=true", "data.packing.max_tokens_per_row=200",
    f"data.packing.one_row={str(attn.startswith('flash')).lower()}", f"model.llm.attn_implementation={attn}",
    "export_model=true",
]
runs = {
    "one": ["trainer=gpu", "trainer.devices=1", f"data.batch_size={2 * devices}"],
    strategy: [f"trainer={strategy}", f"trainer.devices={devices}", "data.batch_size=2"],
}
losses = {}
for name, extra in runs.items():
    cmd = [sys.executable, "-m", "llava_lite.cli.train", *common, *extra, f"run_name={name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode:
        print(json.dumps({"strategy": strategy, "error": f"{name}: exit {proc.returncode}: {proc.stderr[-400:]}"}))
        sys.exit(0)
    losses[name] = read_losses(root / "runs/train" / name)
from llava_lite.modeling import load_pretrained  # noqa: E402

load_pretrained(root / "runs/train" / strategy / "model")
diff = max(abs(losses[strategy][s] - v) / abs(v) for s, v in losses["one"].items())
print(json.dumps({"strategy": strategy, "devices": devices, "attn": attn, "losses": losses[strategy],
                  "max_rel_loss_diff_vs_one_gpu": diff, "exported": True}))
PY
for strategy in fsdp fsdp2; do
    timeout 60 python "$OUT/fsdp_step.py" "$strategy" "$ATTN" >"$OUT/$strategy.txt" 2>"$OUT/$strategy.err" ||
        echo "{\"strategy\": \"$strategy\", \"error\": \"exit $? (stderr in $OUT/$strategy.err)\"}" >>"$OUT/$strategy.txt"
    tail -n 1 "$OUT/$strategy.txt"
done

python - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def last(name: str) -> dict:
    """The JSON line a step printed last into $OUT/<name>.txt."""
    return json.loads((out / f"{name}.txt").read_text().strip().splitlines()[-1])


train, packing, anyres = last("train"), last("packing"), last("packing_anyres")
for r in train["runs"]:
    print(f"train {r['size']:>8} stage {r['stage']}: {r['step_s_ours']:.3f} s vs hf {r['step_s_hf']:.3f} s, "
          f"MFU {r['mfu_ours']:.1%} vs {r['mfu_hf']:.1%}, peak {r['peak_mem_mb_ours']:.0f} vs {r['peak_mem_mb_hf']:.0f} MB")
for mode, r in packing["modes"].items():
    print(f"packing {mode:>8}: {r['tokens_per_s']:.0f} tok/s, {r['useful_fraction']:.1%} useful, peak {r['peak_mem_mb']:.0f} MB")
for mode, r in anyres["modes"].items():
    print(f"anyres packing {mode:>12}: {r['tokens_per_s']:.0f} tok/s, {r['useful_fraction']:.1%} useful")
diff = max(packing["max_rel_loss_diff"], anyres["max_rel_loss_diff"])
print(f"packed vs unpacked bf16 loss: max relative difference {diff:.2e} (tolerance 2e-2)")
zero, zero_ok = {}, True
for stage in (2, 3):
    r = zero[f"zero{stage}"] = last(f"zero{stage}")
    if "skipped" in r:
        print(f"deepspeed ZeRO-{stage}: skipped, {r['skipped']}")
    elif "error" in r:
        zero_ok = False
        print(f"deepspeed ZeRO-{stage}: FAILED, {r['error']}")
    else:
        zero_ok &= r["rel_grad_diff"] <= 1e-3
        print(f"deepspeed ZeRO-{stage}: step gradient vs token mean: relative difference {r['rel_grad_diff']:.1e}, "
              f"norm ratio {r['grad_norm_ratio']:.4f} (tolerance 1e-3; 1/3 if the loss were divided twice)")
q = last("qlora")
if "skipped" in q:
    qlora_ok = True
    print(f"qlora: skipped, {q['skipped']}")
elif "error" in q:
    qlora_ok = False
    print(f"qlora: FAILED, {q['error']}")
else:
    qlora_ok = (q["finite"] and q["decreasing"] and q["min_adapter_grad_norm"] > 0 and q["four_bit_on_device"]
                and q["four_bit_layers"] == 14 and q["merged_rel_logit_diff"] <= 5e-2)
    print(f"qlora: {q['four_bit_layers']} NF4 layers on the GPU {q['four_bit_on_device']}, loss {q['losses'][0]:.4f} -> "
          f"{q['losses'][-1]:.4f}, min adapter grad norm {q['min_adapter_grad_norm']:.2e}, merged export vs 4-bit "
          f"logits {q['merged_rel_logit_diff']:.1e} (tolerance 5e-2): {'ok' if qlora_ok else 'FAILED'}")
sharded, sharded_ok = {}, True
for strategy in ("fsdp", "fsdp2"):
    r = sharded[strategy] = last(strategy)
    if "error" in r:
        sharded_ok = False
        print(f"{strategy}: FAILED, {r['error']}")
    else:
        sharded_ok &= r["max_rel_loss_diff_vs_one_gpu"] <= 2e-2
        print(f"{strategy} on {r['devices']} GPU(s), {r['attn']}, packed: losses vs one GPU, max relative difference "
              f"{r['max_rel_loss_diff_vs_one_gpu']:.1e} (tolerance 2e-2), export loads")
ok = diff <= 2e-2 and zero_ok and qlora_ok and sharded_ok
print(json.dumps({"bench": "gpu_check", "ok": ok, "train": train["runs"], "packing": packing["modes"],
                  "anyres": anyres["modes"], "packed_vs_unpacked_bf16": diff, **zero, "qlora": q, **sharded}))
sys.exit(0 if ok else 1)
PY
