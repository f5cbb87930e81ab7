"""LLaVA-NeXT presets and experiments: ``llava_next_vicuna_7b``, ``llava_next_mistral_7b``,
``tiny_anyres`` and the stage-2 experiments ``llava_next_finetune`` / ``tiny_anyres_finetune``.

The 7B presets only compose here (their weights live on the hub); the tiny ones build and
train offline on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors.torch import load_file

from helpers import write_dataset
from llava_lite.config import LlavaConfig, preset_names
from llava_lite.image_grid import ImageGrid
from llava_lite.modeling import LlavaModel
from llava_lite.templates import get_template
from llava_lite.training import compose_config, config_dir, load_projector, save_projector, train

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # (height, width)
TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # the same, x 32/336


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=["data.train_files=train.jsonl", *overrides])


def test_the_presets_are_options_of_the_model_group() -> None:
    assert {"llava_next_vicuna_7b", "llava_next_mistral_7b", "tiny_anyres"} <= set(preset_names())


@pytest.mark.parametrize(
    ("name", "llm", "template"),
    [
        ("llava_next_vicuna_7b", "lmsys/vicuna-7b-v1.5", "vicuna_v1"),
        ("llava_next_mistral_7b", "mistralai/Mistral-7B-Instruct-v0.2", "tokenizer"),
    ],
)
def test_llava_next_presets(name: str, llm: str, template: str) -> None:
    config = LlavaConfig.from_name(name)
    assert config.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert (config.vision.select_layer, config.vision.select_feature) == (-2, "patch")
    assert config.llm.name_or_path == llm and config.llm.dtype == "bfloat16"
    assert config.projector.type == "mlp2x_gelu"
    assert config.image_aspect == "anyres"
    assert config.anyres.grid_pinpoints == LLAVA_NEXT_PINPOINTS and config.anyres.max_tiles is None
    assert config.model_max_length == 4096
    assert config.conv_template == template and get_template(template).name == template
    # CLIP-336 geometry (24 x 24 patches a tile): the largest image fits the context with room to spare.
    grid = ImageGrid(tile=336, patches=24, base_tokens=576, pinpoints=tuple(map(tuple, LLAVA_NEXT_PINPOINTS)))
    assert grid.max_tokens == 576 + 48 * 48 + 48 == 2928 < config.model_max_length
    assert grid.num_tokens(480, 640) == 576 + 36 * 48 + 36  # 640x480: 2x2 tiles, 12 feature rows cut


def test_tiny_anyres_is_tiny_reading_images_with_anyres() -> None:
    config = LlavaConfig.from_name("tiny_anyres")
    assert config.image_aspect == "anyres"
    assert config.anyres.grid_pinpoints == TINY_PINPOINTS and config.anyres.max_tiles is None
    assert config.model_max_length == 512
    tiny = LlavaConfig.from_name("tiny").to_dict()
    same = {k: v for k, v in config.to_dict().items() if k not in ("image_aspect", "anyres")}
    assert same == {k: v for k, v in tiny.items() if k not in ("image_aspect", "anyres")}


def test_tiny_anyres_builds_offline() -> None:
    model = LlavaModel(LlavaConfig.from_name("tiny_anyres"))
    grid = model.image_grid
    assert grid.anyres and (grid.tile, grid.patches, grid.base_tokens) == (32, 4, 16)
    assert grid.max_tokens == 16 + 8 * 8 + 8 == 88 <= model.config.model_max_length
    assert model.image_newline is not None
    assert grid.num_tiles(40, 90) == 1 + 3  # a wide image: base view + 1 x 3 tiles


def test_llava_next_finetune_composes() -> None:
    cfg = _compose("experiment=llava_next_finetune")
    assert cfg.module.stage == "finetune"
    assert cfg.model.vision.freeze is False
    assert cfg.module.optimizer.component_lr.vision_tower == 2e-6
    assert cfg.module.optimizer.lr == 1e-5 and cfg.module.warmup_ratio == 0.03
    assert cfg.global_batch_size == 128 and cfg.trainer.max_epochs == 1
    assert 128 % (cfg.data.batch_size * 8) == 0  # reachable on one node of 8 GPUs
    assert cfg.trainer.strategy.stage == 3 and cfg.module.gradient_checkpointing is True
    assert cfg.model.image_aspect == "anyres" and cfg.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5"
    assert cfg.model.conv_template == "vicuna_v1"
    assert cfg.data.train_files == "train.jsonl"  # the command line still wins
    default = compose_config(["experiment=llava_next_finetune"])
    assert default.data.train_files.endswith("LLaVA-Instruct-150K/llava_v1_5_mix665k.json")


def test_tiny_anyres_finetune_composes() -> None:
    cfg = _compose("experiment=tiny_anyres_finetune")
    assert cfg.module.stage == "finetune"
    assert cfg.model.vision.freeze is False
    assert cfg.module.optimizer.component_lr.vision_tower == 1e-4 < cfg.module.optimizer.lr
    assert cfg.model.image_aspect == "anyres" and cfg.model.vision.name_or_path is None
    assert cfg.trainer.accelerator == "cpu" and cfg.data.num_workers == 0


def test_tiny_anyres_finetune_trains_the_tower_on_a_cpu(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 4, [(32, 96), (96, 32), (64, 64), (20, 30)])  # every grid class
    common = [
        f"data.train_files={data / 'train.jsonl'}",
        f"data.image_root={data / 'images'}",
        f"paths.root_dir={tmp_path}",
        "callbacks.progress_bar=null",
        "trainer.max_epochs=-1",
        "trainer.max_steps=2",
        "data.batch_size=2",
    ]
    stage1 = train(compose_config(["experiment=tiny_pretrain", "model=tiny_anyres", "run_name=s1", *common]))
    projector = stage1["projector_path"]
    cfg = compose_config(
        ["experiment=tiny_anyres_finetune", "run_name=s2", f"model.init_projector_from={projector}", *common]
    )
    L.seed_everything(cfg.seed, workers=True)  # the weights train(cfg) starts from
    before = {k: v.detach().clone() for k, v in instantiate(cfg.module).state_dict().items()}
    out = train(cfg)
    assert out["global_step"] == 2
    after = torch.load(out["last_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    tower = [k for k in after if k.startswith("model.vision_tower.")]
    assert tower and any(not torch.equal(after[k], before[k]) for k in tower)
    assert "train/lr_vision_tower" in out["metrics"]
    # Stage 1 trained the image newline with the projector; its file hands it to stage 2.
    newline = load_file(projector)["image_newline"]
    first = torch.load(stage1["last_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(newline, first["model.image_newline.weight"], rtol=0, atol=0)
    assert not torch.equal(newline, before["model.image_newline.weight"])  # trained, then saved
    model = instantiate(cfg.module).model
    load_projector(model.projector, projector, model.config.projector.type, model.image_newline)
    torch.testing.assert_close(model.image_newline.weight, newline, rtol=0, atol=0)
    square = tmp_path / "square.safetensors"  # a stage 1 at base resolution has no newline
    save_projector(model.projector, square, model.config.projector.type)
    fresh = instantiate(cfg.module).model
    kept = fresh.image_newline.weight.detach().clone()
    load_projector(fresh.projector, square, model.config.projector.type, fresh.image_newline)
    assert torch.equal(fresh.image_newline.weight, kept)
    torch.testing.assert_close(fresh.projector.state_dict(), model.projector.state_dict(), rtol=0, atol=0)
