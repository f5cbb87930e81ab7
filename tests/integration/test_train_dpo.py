"""Stage 3 through ``train(cfg)``: DPO from a stage-2 folder trains, exports, resumes exactly, and
a cached reference trains exactly as the live frozen copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import CrashAt, read_losses, tiny_llava, write_dataset
from llava_lite.data import LlavaProcessor
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.preference import PreferenceCollator, PreferenceDataset
from llava_lite.modeling import LlavaModel
from llava_lite.training import compose_config, train
from llava_lite.training.logps import sequence_logps


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A stage-2 folder (random tiny model) and 8 pairs about its images."""
    root = write_dataset(tmp_path_factory.mktemp("dpo"), 8)
    tiny_llava().save_pretrained(root / "stage2")
    colours = ["red", "green", "blue", "yellow"]
    pairs = [
        {"id": f"p{i}", "prompt": "What colour is the shape?", "image": f"{i:03d}.png",
         "chosen": f"The shape is {colours[i % 4]}.", "rejected": f"The shape is {colours[(i + 1) % 4]}, I think."}
        for i in range(8)
    ]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


def dpo_cfg(tmp_path: Path, world: Path, *overrides: str):
    return compose_config(
        [
            "experiment=dpo",
            f"module.init_from={world / 'stage2'}",
            f"data.train_files=[{world / 'pairs.jsonl'}]",
            f"data.image_root={world / 'images'}",
            "data.batch_size=2",
            "data.num_workers=0",
            "global_batch_size=null",
            "module.optimizer.lr=2e-3",
            "module.warmup_ratio=0.0",
            f"paths.root_dir={tmp_path}",
            "callbacks.progress_bar=null",
            "trainer.max_epochs=-1",
            "trainer.max_steps=6",
            "trainer.log_every_n_steps=1",
            *overrides,
        ]
    )


def _margins(model: LlavaModel, reference: LlavaModel, world: Path) -> torch.Tensor:
    """Per-pair (chosen - rejected) log-ratio margins of ``model`` against ``reference``."""
    processor = LlavaProcessor.from_model(reference)
    dataset = PreferenceDataset(str(world / "pairs.jsonl"), processor, str(world / "images"), "raise")
    batch = PreferenceCollator(
        LlavaCollator(processor.pad_token_id, image_token_id=processor.image_token_id)
    )([dataset[i] for i in range(len(dataset))])

    def forward(m, b):
        return m.loss_terms(b["input_ids"], b["labels"], b["pixel_values"], b["attention_mask"])

    with torch.no_grad():
        policy, _ = sequence_logps(model.eval(), batch, forward)
        ref, _ = sequence_logps(reference.eval(), batch, forward)
    n = batch["pairs"]
    return (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])


def test_dpo_from_a_stage2_folder_trains_and_exports_a_model_that_prefers_the_chosen(tmp_path, world) -> None:
    out = train(dpo_cfg(tmp_path, world, "module.preference.sft_weight=0.1"))
    assert out["global_step"] == 6 and out["bad_samples"] == {}
    metrics = out["metrics"]
    assert metrics["train/pairs"] == 2.0 and metrics["train/reward_margin"] > 0
    losses = read_losses(out["output_dir"])
    assert losses[0] == pytest.approx(0.6931 + 0.1 * metrics["train/sft_loss"], abs=0.2)
    exported = LlavaModel.from_pretrained(out["model_dir"])
    margins = _margins(exported, LlavaModel.from_pretrained(world / "stage2"), world)
    assert (margins > 0).float().mean() >= 0.75  # most pairs moved towards the chosen answer


def test_cached_reference_trains_exactly_as_the_frozen_copy(tmp_path, world) -> None:
    copy = train(dpo_cfg(tmp_path, world, "run_name=copy", "data.packing.enabled=true",
                         "data.packing.max_tokens_per_row=200"))  # fmt: skip
    cache = world / "pairs.ref_logps.json"
    cache.unlink(missing_ok=True)
    overrides = (
        "module.preference.reference=cached",
        "data.packing.enabled=true",
        "data.packing.max_tokens_per_row=200",
    )
    cached = train(dpo_cfg(tmp_path, world, "run_name=cached", *overrides))
    assert cache.is_file() and len(json.loads(cache.read_text())["logps"]) == 8
    stamp = cache.stat().st_mtime_ns
    again = train(dpo_cfg(tmp_path, world, "run_name=again", *overrides))  # reads the cache
    assert cache.stat().st_mtime_ns == stamp
    reference = read_losses(copy["output_dir"])
    for run in (cached, again):
        losses = read_losses(run["output_dir"])
        assert losses.keys() == reference.keys()
        for step, loss in losses.items():
            assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_resume_after_a_crash_continues_the_same_loss_sequence(tmp_path, world) -> None:
    common = ("callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.save_top_k=-1",
              "trainer.deterministic=true")  # fmt: skip
    full = read_losses(train(dpo_cfg(tmp_path, world, "run_name=full", *common))["output_dir"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(dpo_cfg(tmp_path, world, "run_name=crashed", *common), callbacks=[CrashAt(3)])
    resumed = train(
        dpo_cfg(tmp_path, world, "run_name=crashed", "ckpt_path=last", "logger.csv.name=resumed", *common)
    )
    assert resumed["global_step"] == 6
    continued = read_losses(resumed["output_dir"], "resumed")
    assert sorted(continued) == [3, 4, 5]
    for step, loss in continued.items():
        assert loss == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
    # the checkpoint leaves the frozen reference out: it is rebuilt from the stage-2 folder
    state = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert state and not [k for k in state if k.startswith("reference.")]


def test_a_stage_without_pairs_data_is_refused_in_one_line(tmp_path, world) -> None:
    with pytest.raises(ValueError, match=r"data\.preference=true"):
        train(
            dpo_cfg(tmp_path, world, "data.preference=false", f"data.train_files=[{world / 'train.jsonl'}]")
        )
