"""llava-lite-plan: the estimate against measured CPU peaks, the published LLaVA-1.5 hardware,
and README's table and figures, which come from the planner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from llava_lite.config import IGNORE_INDEX, QuantizationConfig
from llava_lite.training import LlavaLitModule
from llava_lite.training.plan import GB, compose_plan, fit_table, format_plan, four_bit_bytes, plan_run

ROOT = Path(__file__).resolve().parents[2]
# A "medium" model: a 4-layer Llama of width 256 and a wider tower, about 4M parameters.
MEDIUM = (
    "model.llm.arch.hidden_size=256",
    "model.llm.arch.intermediate_size=704",
    "model.llm.arch.num_hidden_layers=4",
    "model.llm.arch.num_attention_heads=8",
    "model.llm.arch.num_key_value_heads=4",
    "model.vision.arch.hidden_size=128",
    "model.vision.arch.intermediate_size=512",
)
V15 = ("trainer.devices=8", "module.gradient_checkpointing=true")
# LLaVA-1.5-7B stage 2 on one GPU, as docs/training.md's QLoRA section plans it
ONE_GPU_7B = (
    "model=llava_v1_5_7b",
    "data=llava_v1_5_mix665k",
    "trainer=gpu",
    "trainer.devices=1",
    "module.gradient_checkpointing=true",
)


def measured_peak(overrides: list[str], batch: int, seq_len: int, trained: int, trace: Path) -> float:
    """Peak bytes of tensors during a training step, AdamW's state already made.

    The profiler records every CPU allocation with the running total of live bytes
    ("Total Allocated"); the peak is its maximum plus what was alive before the step
    (parameters and optimiser state, counted by storage).
    """
    cfg = compose_plan(overrides)
    module_cfg = OmegaConf.to_container(cfg.module, resolve=True)
    assert isinstance(module_cfg, dict)
    module_cfg.pop("_target_"), module_cfg.pop("_convert_")
    model = LlavaLitModule(**module_cfg).model.train()
    tokens = model.num_image_tokens
    ids = torch.randint(10, 400, (batch, seq_len))
    ids[:, 1 : 1 + tokens] = model.image_token_id
    labels = ids.masked_fill(torch.arange(seq_len) < seq_len - trained, IGNORE_INDEX)
    side = model.vision_tower.image_size
    inputs = {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.randn(batch, 3, side, side),
        "attention_mask": torch.ones_like(ids),
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-3)
    mixed = str(cfg.trainer.precision) == "bf16-mixed"  # Lightning's autocast, on the CPU

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            terms = model.loss_terms(**inputs)
        (terms.loss_sum / terms.num_tokens).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    for p in trainable:  # AdamW creates its state at its first step
        p.grad = torch.zeros_like(p)
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    state = [v for s in optimiser.state.values() for v in s.values() if torch.is_tensor(v)]
    before = sum(
        {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in [*model.parameters(), *state]
        }.values()
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    during = max(
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    )
    return float(before + during)


@pytest.mark.parametrize(
    ("name", "overrides", "batch", "seq_len", "trained"),
    [
        ("tiny stage 2", ["experiment=tiny_finetune"], 4, 128, 64),
        ("tiny stage 1", ["experiment=tiny_pretrain"], 4, 128, 64),
        ("tiny stage 2, checkpointing", ["experiment=tiny_finetune", "module.gradient_checkpointing=true"], 4, 128, 64),
        ("medium stage 2", ["experiment=tiny_finetune", *MEDIUM], 4, 192, 64),
        ("medium stage 1", ["experiment=tiny_pretrain", *MEDIUM], 4, 192, 64),
        ("medium stage 2, checkpointing", ["experiment=tiny_finetune", "module.gradient_checkpointing=true", *MEDIUM], 4, 192, 64),
        ("tiny stage 2, bf16-mixed", ["experiment=tiny_finetune", "trainer.precision=bf16-mixed"], 4, 128, 64),
        ("medium stage 2, bf16-mixed", ["experiment=tiny_finetune", "trainer.precision=bf16-mixed", *MEDIUM], 2, 128, 64),
    ],
)  # fmt: skip
def test_estimate_is_within_15_percent_of_the_measured_cpu_peak(
    name: str, overrides: list[str], batch: int, seq_len: int, trained: int, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    settings = [f"data.batch_size={batch}", f"plan.seq_len={seq_len}", f"plan.trained_tokens={trained}"]
    run = [*overrides, *settings, "plan.samples=1000", "plan.text_tokens=32"]
    estimate = plan_run(compose_plan(run)).memory.total
    measured = measured_peak(run, batch, seq_len, trained, tmp_path / "trace.json")
    print(
        f"{name}: measured {measured / 1e6:.2f} MB, estimated {estimate / 1e6:.2f} MB ({estimate / measured:.3f})"
    )
    assert 0.85 <= estimate / measured <= 1.15, (name, estimate, measured)


def test_the_model_is_built_on_the_meta_device_with_the_published_sizes() -> None:
    plan = plan_run(compose_plan(["experiment=llava_v1_5_finetune", *V15]))
    trained, frozen = zip(*plan.params.values(), strict=True)
    assert 7.05e9 < sum(trained) + sum(frozen) < 7.07e9  # CLIP-L/336 0.30B + MLP 0.02B + Vicuna-7B 6.74B
    assert plan.params["vision_tower"] == (0, 303_507_456)
    assert plan.params["projector"][1] == 0
    stage1 = plan_run(compose_plan(["experiment=llava_v1_5_pretrain", "model=llava_v1_5_13b", *V15]))
    assert stage1.params["llm"][0] == 0 and 13.0e9 < stage1.params["llm"][1] < 13.1e9


@pytest.mark.parametrize("model", ["llava_v1_5_7b", "llava_v1_5_13b"])
@pytest.mark.parametrize("experiment", ["llava_v1_5_pretrain", "llava_v1_5_finetune"])
def test_llava_v1_5_fits_8_a100s_of_80_gb_as_published(model: str, experiment: str) -> None:
    plan = plan_run(compose_plan([f"experiment={experiment}", f"model={model}", *V15]))
    assert plan.strategy == ("DeepSpeed ZeRO-2" if experiment.endswith("pretrain") else "DeepSpeed ZeRO-3")
    assert plan.global_batch == (256 if experiment.endswith("pretrain") else 128)
    assert plan.memory.total < 80 * GB


def test_7b_stage_2_fits_40_gb_with_zero3_and_checkpointing_only() -> None:
    with_ckpt = plan_run(compose_plan(["experiment=llava_v1_5_finetune", *V15]))
    assert with_ckpt.memory.total < 40 * GB
    without = plan_run(compose_plan(["experiment=llava_v1_5_finetune", "trainer.devices=8"]))
    assert without.memory.total > 80 * GB
    zero2 = plan_run(compose_plan(["experiment=llava_v1_5_finetune", "trainer=deepspeed", *V15]))
    assert zero2.memory.total > 40 * GB  # the whole bf16 model on every GPU: why LLaVA used ZeRO-3


def test_strategies_shard_what_they_should() -> None:
    plans = {
        t: plan_run(compose_plan(["experiment=llava_v1_5_finetune", f"trainer={t}", *V15]))
        for t in ("ddp", "fsdp", "deepspeed", "deepspeed_zero3")
    }
    trained = sum(t for t, _ in plans["ddp"].params.values())
    assert plans["ddp"].memory.optimizer == pytest.approx(trained * 8)  # fp32 AdamW moments
    assert plans["fsdp"].memory.optimizer == pytest.approx(trained * 8 / 8)
    assert plans["deepspeed"].memory.optimizer == pytest.approx(trained * 12 / 8)  # + fp32 masters
    assert plans["deepspeed"].memory.gradients == pytest.approx(trained * 2 / 8)
    assert plans["deepspeed_zero3"].memory.weights < plans["deepspeed"].memory.weights / 4


def test_flops_follow_6n_for_trained_and_4n_for_frozen_llm() -> None:
    stage2 = plan_run(compose_plan(["experiment=llava_v1_5_finetune", "trainer.devices=8"]))
    n_llm = stage2.params["llm"][0]
    tokens = stage2.image_tokens + stage2.text_tokens
    assert stage2.flops_per_sample == pytest.approx(6 * n_llm * tokens, rel=0.05)
    stage1 = plan_run(compose_plan(["experiment=llava_v1_5_pretrain", "trainer.devices=8"]))
    per_token = stage1.flops_per_sample / (stage1.image_tokens + stage1.text_tokens)
    assert per_token == pytest.approx(4 * stage1.params["llm"][1], rel=0.06)


def test_readme_table_and_time_figures_are_the_planners() -> None:
    readme = (ROOT / "README.md").read_text()
    assert fit_table() in readme
    s1 = plan_run(compose_plan(["experiment=llava_v1_5_pretrain", *V15]))
    s2 = plan_run(compose_plan(["experiment=llava_v1_5_finetune", *V15]))
    stated = re.search(r"our planner gives ([\d.]+) and ([\d.]+) hours", readme)
    assert stated and stated.groups() == (f"{s1.epoch_hours:.1f}", f"{s2.epoch_hours:.1f}")
    memory = re.search(r"and ([\d.]+) GB / ([\d.]+) GB a GPU", readme)
    assert memory and memory.groups() == (f"{s1.memory.total / GB:.1f}", f"{s2.memory.total / GB:.1f}")
    # the repository reports about 3.5 and 10 hours: within 40% at 40% utilisation
    assert 0.6 < s1.epoch_hours / 3.5 < 1.4 and 0.6 < s2.epoch_hours / 10 < 1.4


def test_the_command_prints_the_plan_and_a_mistake_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "llava_lite.cli.plan", "experiment=llava_v1_5_finetune", *V15]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = format_plan(plan_run(compose_plan(["experiment=llava_v1_5_finetune", *V15])))
    assert expected in done.stdout and "DeepSpeed ZeRO-3" in done.stdout
    shown = "\n".join(expected.splitlines()[6:20])  # memory and compute, as docs/training.md shows them
    assert shown in (ROOT / "docs" / "training.md").read_text()
    assert list(tmp_path.iterdir()) == []  # the planner writes nothing
    bad = subprocess.run(command[:4], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1
    assert "error: trainer.devices='auto': the planner needs a number" in bad.stderr


def test_unknown_checkpoint_or_data_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="no architecture the planner knows offline"):
        plan_run(
            compose_plan(
                ["experiment=llava_v1_5_finetune", "trainer.devices=8", "model.llm.name_or_path=org/x"]
            )
        )
    with pytest.raises(ValueError, match=r"set plan\.samples"):
        plan_run(compose_plan(["experiment=tiny_finetune"]))


def test_7b_qlora_stage_2_is_far_smaller_than_bf16_on_one_gpu() -> None:
    qlora = plan_run(compose_plan(["experiment=finetune_qlora", *ONE_GPU_7B]))
    lora = plan_run(compose_plan(["experiment=finetune_lora", *ONE_GPU_7B]))  # the same run, bf16 LLM
    full = plan_run(compose_plan(["experiment=finetune", *ONE_GPU_7B]))
    assert qlora.params == lora.params  # the same adapters and projector train
    # Vicuna-7B's 32 decoder layers: q, k, v, o of 4096 x 4096 and gate, up, down of 4096 x 11008
    four_bit = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    norms = (2 * 32 + 1) * 4096  # float32 under QLoRA (prepare_model_for_kbit_training), bf16 under LoRA
    assert four_bit_bytes(QuantizationConfig()) == 0.5 + 1 / 64 + 1 / 4096  # NF4 + double-quantised scales
    saved = four_bit * (2 - four_bit_bytes(QuantizationConfig())) - norms * (4 - 2)
    assert lora.memory.weights - qlora.memory.weights == pytest.approx(saved, rel=1e-9)
    assert qlora.memory.weights < 0.4 * lora.memory.weights
    assert qlora.memory.total < 0.25 * full.memory.total and qlora.memory.states < 0.1 * full.memory.states
    assert qlora.fits and not full.fits  # one 80 GB GPU
    # the figures docs/training.md states are the planner's
    docs = (ROOT / "docs" / "training.md").read_text()
    section = docs[docs.index("## QLoRA") : docs.index("## On a CPU")]
    assert "\n".join(format_plan(qlora).splitlines()[6:15]) in section
    prose = " ".join(section.split())
    assert f"(`experiment=finetune_lora`) plans {lora.memory.total / GB:.2f} GB" in prose
    assert f"(`experiment=finetune`) {full.memory.total / GB:.2f} GB" in prose
    small = plan_run(compose_plan(["experiment=finetune_qlora", *ONE_GPU_7B, "data.batch_size=4"]))
    assert f"QLoRA plans {small.memory.total / GB:.2f} GB" in prose
    assert f"({qlora.epoch_hours:.1f} h at 40%" in prose
    with pytest.raises(ValueError, match="planned on one device or with DDP"):
        plan_run(compose_plan(["experiment=finetune_qlora", "model=llava_v1_5_7b", "data=llava_v1_5_mix665k",
                               "trainer=deepspeed_zero3", "trainer.devices=8"]))  # fmt: skip
