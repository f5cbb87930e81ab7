"""End to end on a CPU with the tiny preset: both stages, overfitting, resume, DDP.

Each test writes its own LLaVA-format records and PNGs into tmp_path.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from helpers import CrashAt, read_losses, write_dataset
from llava_lite.training import LlavaLitModule, compose_config, train


def tiny_cfg(tmp_path: Path, data: Path, experiment: str, *overrides: str):
    return compose_config(
        [
            f"experiment={experiment}",
            f"data.train_files={data / 'train.jsonl'}",
            f"data.image_root={data / 'images'}",
            f"paths.root_dir={tmp_path}",
            "callbacks.progress_bar=null",
            "trainer.max_epochs=-1",  # tests bound runs by trainer.max_steps
            *overrides,
        ]
    )


def checkpoint_weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The weights ``train(cfg)`` starts from: same seed, same construction."""
    L.seed_everything(cfg.seed, workers=True)
    module = instantiate(cfg.module)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> tuple[int, int]:
    """(changed, total) tensors under ``prefix``."""
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, f"no weights under {prefix}"
    return sum(not torch.equal(before[k], after[k]) for k in keys), len(keys)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), 8)


def test_stage1_trains_projector_only_then_stage2_loads_it(tmp_path: Path, data: Path, caplog) -> None:
    cfg1 = tiny_cfg(tmp_path, data, "tiny_pretrain", "run_name=stage1", "trainer.max_steps=3")
    before = initial_weights(cfg1)
    with caplog.at_level(logging.INFO, logger="llava_lite.training.module"):
        out1 = train(cfg1)
    assert out1["global_step"] == 3
    n_projector = sum(v.numel() for k, v in before.items() if k.startswith("model.projector."))
    assert re.search(rf"projector\s+{n_projector:,}\s+0\n", caplog.text), caplog.text  # fit-start table
    assert out1["metrics"]["train/tokens_per_s"] > 0 and "train/lr_projector" in out1["metrics"]
    after = checkpoint_weights(out1["last_checkpoint"])
    assert changed(before, after, "model.projector.")[0] > 0
    assert changed(before, after, "model.llm.")[0] == 0
    assert changed(before, after, "model.vision_tower.")[0] == 0
    # The Lightning checkpoint rebuilds the module from its hyperparameters alone.
    restored = LlavaLitModule.load_from_checkpoint(out1["last_checkpoint"])
    assert restored.hparams.stage == "pretrain"
    assert all(torch.equal(v, after[k]) for k, v in restored.state_dict().items())
    projector_file = Path(out1["projector_path"])
    assert projector_file == tmp_path / "runs/train/stage1/projector.safetensors"
    assert projector_file.stat().st_size < 100_000

    # Stage 2 starts from that file (projector lr 0 keeps it exactly as loaded).
    cfg2 = tiny_cfg(
        tmp_path,
        data,
        "tiny_finetune",
        "run_name=stage2",
        "trainer.max_steps=3",
        f"model.init_projector_from={projector_file}",
        "+module.optimizer.component_lr.projector=0.0",
    )
    before2 = initial_weights(cfg2)
    out2 = train(cfg2)
    after2 = checkpoint_weights(out2["last_checkpoint"])
    stage1 = {k: v for k, v in after.items() if k.startswith("model.projector.")}
    assert all(torch.equal(after2[k], v) for k, v in stage1.items())
    assert not all(torch.equal(before2[k], v) for k, v in stage1.items())
    llm_changed, llm_total = changed(before2, after2, "model.llm.")
    assert llm_changed >= llm_total // 2
    assert changed(before2, after2, "model.vision_tower.")[0] == 0
    # The exported model reloads on its own for generation / eval.
    from llava_lite.modeling import LlavaModel

    reloaded = LlavaModel.from_pretrained(out2["model_dir"])
    assert torch.equal(reloaded.projector[0].weight, after2["model.projector.0.weight"])


def test_lora_finetune_exports_a_merged_model(tmp_path: Path, data: Path) -> None:
    pytest.importorskip("peft")
    cfg = tiny_cfg(
        tmp_path,
        data,
        "finetune_lora",
        "model=tiny",
        "trainer=cpu",
        "global_batch_size=null",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "module.optimizer.lr=1e-2",
        "module.lora.r=4",
        "module.lora.lora_alpha=8",
    )
    before = initial_weights(cfg)
    out = train(cfg)
    after = checkpoint_weights(out["last_checkpoint"])
    lora_keys = [k for k in after if "lora_B" in k]
    assert lora_keys and any(not torch.equal(before[k], after[k]) for k in lora_keys)
    base = [k for k in after if k.startswith("model.llm.") and "lora_" not in k]
    assert all(torch.equal(before[k], after[k]) for k in base)  # the base LLM stays frozen

    from llava_lite.modeling import LlavaModel

    merged = LlavaModel.from_pretrained(out["model_dir"])
    assert not any("lora" in name for name, _ in merged.llm.named_parameters())
    q = "model.llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert not torch.equal(merged.llm.model.layers[0].self_attn.q_proj.weight, after[q])  # LoRA merged in


def test_loss_goes_down_when_overfitting(tmp_path: Path) -> None:
    small = write_dataset(tmp_path / "data", 4)
    cfg = tiny_cfg(
        tmp_path,
        small,
        "tiny_finetune",
        "run_name=overfit",
        "trainer.max_steps=30",
        "data.batch_size=4",
        "module.optimizer.lr=3e-3",
        "callbacks.model_checkpoint=null",
        "export_model=false",
        f"data.val_files={small / 'train.jsonl'}",
        "trainer.check_val_every_n_epoch=15",
    )
    out = train(cfg)
    assert out["metrics"]["val/loss"] < out["metrics"]["train/loss"] * 2
    losses = read_losses(out["output_dir"])
    steps = sorted(losses)
    assert len(steps) == 30
    first, last = losses[steps[0]], sum(losses[s] for s in steps[-3:]) / 3
    assert last < 0.5 * first, (first, last)


def test_global_batch_sets_gradient_accumulation(tmp_path: Path, data: Path) -> None:
    overrides = ("run_name=accum", "global_batch_size=8", "data.batch_size=2", "trainer.max_steps=2")
    out = train(tiny_cfg(tmp_path, data, "tiny_pretrain", *overrides, "callbacks.model_checkpoint=null"))
    assert out["accumulate_grad_batches"] == 4 and out["global_step"] == 2
    with pytest.raises(ValueError, match="contradicts"):
        train(tiny_cfg(tmp_path, data, "tiny_pretrain", *overrides, "trainer.accumulate_grad_batches=2"))
    with pytest.raises(ValueError, match="not a multiple"):
        train(tiny_cfg(tmp_path, data, "tiny_pretrain", "global_batch_size=7", "data.batch_size=2"))


def write_varied_dataset(root: Path, n: int) -> Path:
    """``write_dataset`` with answers of 1-4 sentences, so batches train different token counts."""
    write_dataset(root, n)
    lines = (root / "train.jsonl").read_text().splitlines()
    with (root / "train.jsonl").open("w") as f:
        for i, line in enumerate(lines):
            record = json.loads(line)
            record["conversations"][1]["value"] += " It is a rectangle on white." * (i % 4)
            f.write(json.dumps(record) + "\n")
    return root


class _Gradients(L.Callback):
    """The gradients and trained-token counts each optimiser step saw (before clipping)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.micro_tokens: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.micro_tokens.append(batch["trained_tokens"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_accumulation_is_exact_one_or_four_micro_batches_give_one_update(tmp_path: Path) -> None:
    """The step's loss is the mean over all its trained tokens, however the batch is cut."""
    records = write_varied_dataset(tmp_path / "data", 8)
    common = (
        "trainer.max_steps=1",
        "data.shuffle=false",
        "callbacks.model_checkpoint=null",
        "export_model=false",
    )
    runs = {}
    for name, micro, accumulate in (("one", 8, 1), ("four", 2, 4)):
        grads = _Gradients()
        overrides = (
            f"run_name={name}",
            f"data.batch_size={micro}",
            f"trainer.accumulate_grad_batches={accumulate}",
        )
        out = train(tiny_cfg(tmp_path, records, "tiny_finetune", *overrides, *common), callbacks=[grads])
        assert out["global_step"] == 1 and len(grads.grads) == 1
        runs[name] = (grads, out["metrics"])
    four_tokens = runs["four"][0].micro_tokens
    assert len(set(four_tokens)) > 1  # unequal micro-batches: a mean of means would differ
    assert runs["one"][0].micro_tokens == [sum(four_tokens)]
    for key in ("train/loss", "train/trained_tokens", "train/samples"):
        assert runs["four"][1][key] == pytest.approx(runs["one"][1][key], rel=1e-6), key
    assert runs["one"][1]["train/samples"] == 8
    one, four = runs["one"][0].grads[0], runs["four"][0].grads[0]
    assert set(one) == set(four) and any(k.startswith("model.llm.") for k in one)
    for name, grad in one.items():
        torch.testing.assert_close(four[name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("experiment", ["tiny_pretrain", "tiny_finetune"])
def test_packed_run_trains_exactly_like_the_padded_run(tmp_path: Path, experiment: str) -> None:
    records = write_varied_dataset(tmp_path / "data", 12)
    common = (
        "trainer.max_steps=3",
        "data.batch_size=4",
        "callbacks.model_checkpoint=null",
        "export_model=false",
    )
    padded = train(tiny_cfg(tmp_path, records, experiment, "run_name=padded", *common))
    packing = ("data.packing.enabled=true", "data.packing.max_tokens_per_row=160")
    packed = train(tiny_cfg(tmp_path, records, experiment, "run_name=packed", *packing, *common))
    reference, losses = read_losses(padded["output_dir"]), read_losses(packed["output_dir"])
    assert sorted(losses) == sorted(reference) and len(losses) == 3
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), step
    assert packed["metrics"]["train/samples"] == 4


def test_packing_refuses_an_llm_that_would_mix_samples(tmp_path: Path, data: Path, monkeypatch) -> None:
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    cfg = tiny_cfg(tmp_path, data, "tiny_pretrain", "run_name=mixing", "data.packing.enabled=true")
    with pytest.raises(ValueError, match=r"data\.packing\.enabled=true but this LLM"):
        train(cfg)


@pytest.mark.parametrize("packing", [False, True])
def test_bad_records_are_counted_in_the_result(tmp_path: Path, packing: bool) -> None:
    records = write_dataset(tmp_path / "data", 4)
    with (records / "train.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "id": "ghost",
                    "image": "missing.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is it?"},
                        {"from": "gpt", "value": "Nothing."},
                    ],
                }
            )
            + "\n"
        )
    cfg = tiny_cfg(
        tmp_path,
        records,
        "tiny_pretrain",
        "trainer.max_steps=2",
        "callbacks.model_checkpoint=null",
        f"data.packing.enabled={str(packing).lower()}",
        "data.packing.max_tokens_per_row=160",
    )
    out = train(cfg)
    assert out["bad_samples"] == {"missing_image": 1}
    assert out["global_step"] == 2


@pytest.mark.parametrize(
    ("streaming", "n_records", "packing", "workers"),
    [
        (True, 24, False, 0),
        (False, 8, False, 0),
        (False, 24, True, 0),
        (True, 24, True, 0),
        (True, 24, True, 3),
    ],
    ids=[
        "streaming-mid-epoch",
        "map-style-epoch-boundary",
        "map-style-packed-mid-epoch",
        "streaming-packed",
        "streaming-packed-3-workers",
    ],
)
def test_resume_matches_uninterrupted_run(
    tmp_path: Path, streaming: bool, n_records: int, packing: bool, workers: int
) -> None:
    """Crash after the step-4 checkpoint, resume with ckpt_path=last: steps 4..7 match exactly.

    Streaming: the crash falls mid-epoch, so the stream position must come back. Map-style
    (8 records, batch 2): it falls on an epoch boundary, so the reshuffle must repeat.
    Packed: the same, with each batch's samples packed into rows. Workers hand out batches in
    turn, and 4 batches in, the next is worker 1's of 3: the resumed loader must start there.
    """
    records = write_dataset(tmp_path / "data", n_records)
    common = (
        f"data.packing.enabled={str(packing).lower()}",
        "data.packing.max_tokens_per_row=160",
        "trainer.max_steps=8",
        "data.batch_size=2",
        f"data.streaming={str(streaming).lower()}",
        f"data.num_workers={workers}",
        "data.shuffle_buffer=8",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        "callbacks.model_checkpoint.save_top_k=-1",
        "trainer.deterministic=true",
    )
    full = train(tiny_cfg(tmp_path, records, "tiny_pretrain", "run_name=full", *common))
    reference = read_losses(full["output_dir"])
    assert len(reference) == 8

    crashed = tiny_cfg(tmp_path, records, "tiny_pretrain", "run_name=crashed", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[CrashAt(at=4)])
    first_part = read_losses(crashed.paths.output_dir)
    assert sorted(first_part) == sorted(reference)[:4]

    resume = ("run_name=crashed", "ckpt_path=last", "logger.csv.name=resumed")
    resumed = train(tiny_cfg(tmp_path, records, "tiny_pretrain", *resume, *common))
    assert resumed["global_step"] == 8
    continued = read_losses(resumed["output_dir"], "resumed")
    assert sorted(continued) == sorted(reference)[4:]
    for step, loss in continued.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


def test_console_script_composes_overrides(tmp_path: Path) -> None:
    script = shutil.which("llava-lite-train")
    assert script, "llava-lite-train is not installed (pip install -e .)"
    overrides = ["experiment=tiny_pretrain", "data.train_files=x.jsonl", "module.optimizer.lr=0.5"]
    proc = subprocess.run([script, "--cfg", "job", *overrides], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lr: 0.5" in proc.stdout and "stage: pretrain" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_ddp_two_cpu_processes_via_cli(tmp_path: Path, data: Path, packing: bool) -> None:
    """Two ranks train; per optimiser step they log the samples of both, which sum to the epoch."""
    cmd = [
        sys.executable,
        "-m",
        "llava_lite.cli.train",
        "experiment=tiny_pretrain",
        f"data.train_files={data / 'train.jsonl'}",
        f"data.image_root={data / 'images'}",
        f"paths.root_dir={tmp_path}",
        "run_name=ddp",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "data.batch_size=2",
        "callbacks.progress_bar=null",
        f"data.packing.enabled={str(packing).lower()}",
        "data.packing.max_tokens_per_row=160",
    ]
    env = {k: v for k, v in os.environ.items() if k != "LLAVA_LITE_RUN_NAME"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs/train/ddp"
    assert "2 device(s)" in (run / "train.log").read_text()
    assert (run / "checkpoints/last.ckpt").is_file()
    assert (run / "projector.safetensors").is_file()
    assert len(read_losses(run)) == 2  # 8 records / (2 ranks x batch 2)
    with (run / "csv" / "metrics.csv").open() as f:
        samples = [float(r["train/samples"]) for r in csv.DictReader(f) if r.get("train/samples")]
    assert samples == [4.0, 4.0]  # both ranks' samples, every record once in the epoch
