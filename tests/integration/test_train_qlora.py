"""``experiment=finetune_qlora`` end to end on a CPU: train through ``train(cfg)``, resume, merge, export.

The tiny LLM goes the way a real checkpoint does: built, written to a folder, read back through
``from_pretrained`` with a bitsandbytes 4-bit NF4 config. bitsandbytes' CPU backend dequantises
each 4-bit weight and multiplies in float32 (the compute dtype here), forward and backward; a GPU
runs its fused kernels in bf16 instead (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from helpers import CrashAt, read_losses, write_dataset
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.modeling.load import load_pretrained
from llava_lite.training import LlavaLitModule, compose_config, train

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'llava_lite[qlora]'")
pytest.importorskip("peft", reason="QLoRA needs peft: pip install 'llava_lite[qlora]'")

# float32 logits of the 4-bit model with adapters vs the merged export, relative to the largest
# logit. Both multiply the same dequantised weights in float32 and differ only in the order of the
# float32 operations (W x + s B (A x) against (W + s B A) x): measured 4e-7 here, so 1e-5 leaves a
# 25x margin. The alternatives are off by NF4's rounding itself: merging into the original
# unquantised weights, or peft's merge_and_unload (which quantises the merged weights to 4 bits
# again), both measured at 0.1 of the largest logit on this model.
MERGE_RTOL = 1e-5


def qlora_cfg(tmp_path: Path, data: Path, *overrides: str):
    return compose_config(
        [
            "experiment=finetune_qlora",
            "model=tiny",
            "trainer=cpu",
            "global_batch_size=null",
            "data.batch_size=4",
            "data.num_workers=0",
            f"data.train_files={data / 'train.jsonl'}",
            f"data.image_root={data / 'images'}",
            f"paths.root_dir={tmp_path}",
            "callbacks.progress_bar=null",
            "trainer.max_epochs=-1",
            "trainer.log_every_n_steps=1",
            "module.optimizer.lr=1e-3",
            "module.optimizer.component_lr.projector=1e-3",
            "module.lora.r=8",
            "module.lora.lora_alpha=16",
            "module.lora.lora_dropout=0.0",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data: Path) -> dict[str, Any]:
    """Six QLoRA steps with export, and the weights the run started from."""
    root = tmp_path_factory.mktemp("qlora")
    cfg = qlora_cfg(root, data, "run_name=qlora", "trainer.max_steps=6")
    L.seed_everything(cfg.seed, workers=True)  # the construction train(cfg) repeats
    before = {k: v.detach().clone() for k, v in instantiate(cfg.module).state_dict().items()}
    return {"cfg": cfg, "root": root, "before": before, "out": train(cfg)}


def _inputs(model: LlavaModel) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 400, (2, 40), generator=gen)  # [B, T]
    ids[:, 1 : 1 + model.num_image_tokens] = model.image_token_id
    side = model.vision_tower.image_size
    return {"input_ids": ids, "pixel_values": torch.randn(2, 3, side, side, generator=gen)}


def test_qlora_trains_adapters_and_projector_and_leaves_the_4bit_base(run: dict[str, Any]) -> None:
    out, before = run["out"], run["before"]
    assert out["global_step"] == 6
    losses = read_losses(out["output_dir"])
    assert len(losses) == 6 and losses[5] < losses[0], losses
    after = torch.load(out["last_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert after.keys() == before.keys()
    adapters = [k for k in before if ".lora_" in k]
    projector = [k for k in before if k.startswith("model.projector.")]
    base = [k for k in before if k not in adapters and k not in projector]
    packed = [k for k in base if after[k].dtype == torch.uint8 and k.endswith("base_layer.weight")]
    assert len(packed) == 14 and any(k.endswith(".absmax") for k in base)  # 4-bit weights + their constants
    assert all(not torch.equal(before[k], after[k]) for k in adapters + projector)
    assert all(torch.equal(before[k], after[k]) for k in base)  # incl. embeddings, norms, head, tower


def test_merged_export_gives_the_trained_4bit_models_logits(run: dict[str, Any], tmp_path: Path) -> None:
    out = run["out"]
    folder = Path(out["model_dir"])
    assert json.loads((folder / "config.json").read_text())["llava_lite"]["llm"]["quantization"] is None
    merged = load_pretrained(folder).eval()
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # the trained model as it was: 4-bit base + adapters, rebuilt from its Lightning checkpoint
    trained = LlavaLitModule.load_from_checkpoint(out["last_checkpoint"]).model.eval()
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in trained.modules()) == 14
    inputs = _inputs(merged)
    with torch.no_grad():
        want = trained(**inputs).logits  # [B, T, V]
        got = merged(**inputs).logits  # [B, T, V]
        with trained.llm.disable_adapter():
            base_only = trained(**inputs).logits  # [B, T, V]
    scale = float(want.abs().max())
    diff = float((got - want).abs().max())
    print(f"merged vs 4-bit + LoRA: max |diff| {diff:.2e} of max |logit| {scale:.2f}")
    assert diff <= MERGE_RTOL * scale
    assert float((base_only - want).abs().max()) > 100 * MERGE_RTOL * scale  # the adapters matter
    # and as llava-hf, read back through the same loader
    hf = load_pretrained(export_to_hf_llava(merged, tmp_path / "llava-hf")).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(**inputs).logits, got, rtol=0, atol=1e-5 * scale)


def test_resume_continues_the_same_losses(run: dict[str, Any], data: Path) -> None:
    """A run crashed after its step-4 checkpoint and resumed with ``ckpt_path=last`` (the 4-bit
    weights rebuilt from the checkpoint's packed data and constants) logs the uninterrupted run's
    steps 5 and 6."""
    root = run["root"]
    saving = ("callbacks.model_checkpoint.every_n_train_steps=4", "trainer.max_steps=6")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(qlora_cfg(root, data, "run_name=crashed", *saving), callbacks=[CrashAt(at=4)])
    resume = ("run_name=crashed", "ckpt_path=last", "logger.csv.name=resumed")
    resumed = train(qlora_cfg(root, data, *resume, *saving))
    assert resumed["global_step"] == 6
    full, continued = read_losses(run["out"]["output_dir"]), read_losses(resumed["output_dir"], "resumed")
    assert sorted(continued) == [4, 5]
    for step, loss in continued.items():
        assert loss == pytest.approx(full[step], rel=1e-6, abs=0), (step, continued, full)
