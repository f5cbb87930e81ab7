"""LLaVA-OneVision presets and experiments: ``llava_onevision_qwen2_7b``, ``tiny_onevision`` and
the stage-2 experiments ``llava_onevision_si_finetune`` / ``llava_onevision_ov_finetune`` /
``tiny_onevision_finetune``. The 7B preset only composes (its weights live on the hub); the
tiny one builds and trains offline on a CPU, on single images, image pairs and video at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from helpers import make_video, write_dataset
from llava_lite.config import LlavaConfig, preset_names
from llava_lite.image_grid import ONEVISION_PINPOINTS, ImageGrid
from llava_lite.modeling import LlavaModel
from llava_lite.training import compose_config, config_dir, train


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["data.train_files=train.jsonl", *overrides])


def test_the_presets_are_options_of_the_model_group() -> None:
    assert {"llava_onevision_qwen2_7b", "tiny_onevision"} <= set(preset_names())


def test_llava_onevision_preset_has_onevision_geometry() -> None:
    config = LlavaConfig.from_name("llava_onevision_qwen2_7b")
    assert config.vision.name_or_path == "google/siglip-so400m-patch14-384"
    assert config.vision.select_layer == -2 and config.vision.select_feature == "patch"
    assert config.llm.name_or_path == "Qwen/Qwen2-7B-Instruct" and config.conv_template == "chatml"
    assert [tuple(p) for p in config.anyres.grid_pinpoints] == list(ONEVISION_PINPOINTS)
    assert (config.anyres.max_tiles, config.anyres.multi_image) == (9, "base")
    assert config.video_token == "<video>" and (config.video.num_frames, config.video.pool) == (32, 2)
    # SigLIP-384: 27 x 27 patches a view; OneVision's counts follow from the preset alone.
    grid = ImageGrid(384, 27, 729, tuple(map(tuple, config.anyres.grid_pinpoints)), 9, config.video.pool)
    assert grid.video_tokens(32) == 32 * 196 + 1 <= config.model_max_length
    assert grid.num_tokens(1080, 1920, tiled=False) == 730
    assert grid.max_tokens < config.model_max_length


def test_tiny_onevision_builds_offline() -> None:
    model = LlavaModel(LlavaConfig.from_name("tiny_onevision"))
    assert model.image_grid.max_tiles == 9 and model.video_token_id is not None
    assert model.image_grid.video_tokens(8) == 8 * 4 + 1
    assert type(model.image_processor).__name__ == "LlavaOnevisionImageProcessor"


@pytest.mark.parametrize("stage", ["si", "ov"])
def test_llava_onevision_finetunes_compose(stage: str) -> None:
    cfg = _compose(f"experiment=llava_onevision_{stage}_finetune")
    assert cfg.module.stage == "finetune" and cfg.model.vision.freeze is False
    assert cfg.module.optimizer.lr == 1e-5 and cfg.module.optimizer.component_lr.vision_tower == 2e-6
    assert cfg.module.warmup_ratio == 0.03 and cfg.module.optimizer.weight_decay == 0.0
    assert cfg.global_batch_size == 256 and cfg.data.batch_size == 1
    assert cfg.trainer.strategy.stage == 3 and cfg.module.gradient_checkpointing is True
    assert cfg.model.video_token == "<video>" and cfg.model.anyres.max_tiles == 9


def _mixed_data(root: Path) -> Path:
    """Single-image records plus two image pairs and two videos in the same file."""
    write_dataset(root, 4, [(32, 96), (64, 64), (20, 30), (96, 32)])
    make_video(root / "images" / "clip.mp4", 10)
    make_video(root / "images" / "short.mp4", 5)
    extra = [
        {"id": "pair0", "image": ["000.png", "001.png"],
         "conversations": [{"from": "human", "value": "Same colour in <image> and <image>?"},
                           {"from": "gpt", "value": "No."}]},
        {"id": "pair1", "image": ["002.png", "003.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nWhich is wider?"},
                           {"from": "gpt", "value": "The second."}]},
        {"id": "clip", "video": "clip.mp4",
         "conversations": [{"from": "human", "value": "<image>\nWhat changes?"}, {"from": "gpt", "value": "The colour."}]},
        {"id": "short", "video": "short.mp4",
         "conversations": [{"from": "human", "value": "<video>\nWhat changes?"}, {"from": "gpt", "value": "The colour."}]},
    ]  # fmt: skip
    with (root / "train.jsonl").open("a") as f:
        for record in extra:
            f.write(json.dumps(record) + "\n")
    return root


def test_tiny_onevision_finetune_trains_on_images_pairs_and_video(tmp_path: Path) -> None:
    data = _mixed_data(tmp_path / "data")
    cfg = compose_config(
        [
            "experiment=tiny_onevision_finetune",
            f"data.train_files={data / 'train.jsonl'}",
            f"data.image_root={data / 'images'}",
            f"paths.root_dir={tmp_path}",
            "callbacks.progress_bar=null",
            "data.batch_size=4",
            "data.shuffle=false",
            "data.on_bad_sample=raise",
        ]
    )
    L.seed_everything(cfg.seed, workers=True)
    before = {k: v.detach().clone() for k, v in instantiate(cfg.module).state_dict().items()}
    out = train(cfg)
    assert out["global_step"] == 2  # 8 records, 4 a step: nothing skipped under "raise"
    after = torch.load(out["last_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    tower = [k for k in after if k.startswith("model.vision_tower.")]
    assert tower and any(not torch.equal(after[k], before[k]) for k in tower)
    assert not torch.equal(after["model.image_newline.weight"], before["model.image_newline.weight"])
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
