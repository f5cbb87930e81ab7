"""Vision towers: transformers and timm encoders, LLaVA feature selection, freezing, processors."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel

from helpers import TINY_VISION_ARCH
from llava_lite.config import VisionConfig
from llava_lite.modeling import VisionTower

TIMM = {"img_size": 32, "depth": 3, "embed_dim": 48, "num_heads": 3}


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("select_feature", "tokens"), [("patch", 16), ("cls_patch", 17)], ids=["patch", "cls_patch"]
)
def test_clip_tower_selects_layer_and_tokens(select_feature: str, tokens: int) -> None:
    tower = VisionTower(VisionConfig(arch=TINY_VISION_ARCH, select_feature=select_feature))
    assert isinstance(tower.model, CLIPVisionModel)
    assert tower.num_image_tokens == tokens and tower.num_patches == 16 and tower.num_prefix_tokens == 1
    pixels = _pixels()
    out = tower(pixels)
    assert out.shape == (2, tokens, 32)
    reference = tower.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(out, reference[:, 17 - tokens :])


def test_select_layer_picks_that_hidden_state() -> None:
    pixels = _pixels()
    last = VisionTower(VisionConfig(arch=TINY_VISION_ARCH, select_layer=-1))
    first = VisionTower(VisionConfig(arch=TINY_VISION_ARCH, select_layer=1))
    first.load_state_dict(last.state_dict())
    hidden = last.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(last(pixels), hidden[3][:, 1:])
    torch.testing.assert_close(first(pixels), hidden[1][:, 1:])
    with pytest.raises(ValueError, match="out of range"):
        VisionTower(VisionConfig(arch=TINY_VISION_ARCH, select_layer=-5))


def test_siglip_tower_has_no_cls_token() -> None:
    tower = VisionTower(VisionConfig(model_type="siglip_vision_model", arch=TINY_VISION_ARCH))
    assert tower.num_prefix_tokens == 0 and tower.num_image_tokens == 16
    assert tower(_pixels()).shape == (2, 16, 32)
    processor = tower.build_image_processor()
    assert type(processor).__name__ == "SiglipImageProcessor"
    assert processor.size["height"] == 32


def test_frozen_tower_builds_no_graph_and_stays_in_eval() -> None:
    tower = VisionTower(VisionConfig(arch={**TINY_VISION_ARCH, "attention_dropout": 0.5}))
    tower.train()
    assert not tower.model.training
    assert not any(p.requires_grad for p in tower.parameters())
    out = tower(_pixels())
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, tower(_pixels()))  # no dropout


def test_unfrozen_tower_trains() -> None:
    tower = VisionTower(VisionConfig(arch=TINY_VISION_ARCH, freeze=False))
    tower.train()
    assert tower.model.training
    tower(_pixels()).sum().backward()
    assert tower.model.embeddings.patch_embedding.weight.grad is not None


def test_image_processor_from_config_and_overrides() -> None:
    tower = VisionTower(VisionConfig(arch=TINY_VISION_ARCH))
    processor = tower.build_image_processor()
    assert isinstance(processor, CLIPImageProcessor)
    assert processor.crop_size["height"] == 32
    overridden = VisionTower(
        VisionConfig(
            arch=TINY_VISION_ARCH, image_size=48, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]
        )
    ).build_image_processor()
    assert overridden.crop_size["height"] == 48 and overridden.size["shortest_edge"] == 48
    assert list(overridden.image_mean) == [0.5, 0.5, 0.5] and list(overridden.image_std) == [0.25, 0.25, 0.25]


def test_full_clip_checkpoint_folder_loads_its_vision_part(tmp_path) -> None:
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    clip = CLIPModel(
        CLIPConfig(vision_config=TINY_VISION_ARCH, text_config={**text, "vocab_size": 64}, projection_dim=8)
    )
    clip.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path
    )
    tower = VisionTower(VisionConfig(name_or_path=str(tmp_path)))
    assert isinstance(tower.model, CLIPVisionModel)
    pixels = _pixels()
    with torch.no_grad():
        reference = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(tower(pixels), reference)
    assert isinstance(tower.build_image_processor(), CLIPImageProcessor)


def test_pickle_checkpoints_need_allow_pickle(tmp_path) -> None:
    source = VisionTower(VisionConfig(arch=TINY_VISION_ARCH)).model
    source.config.save_pretrained(tmp_path)
    torch.save(source.state_dict(), tmp_path / "pytorch_model.bin")  # an old-style pickle checkpoint
    with pytest.raises(OSError, match="safetensors"):
        VisionTower(VisionConfig(name_or_path=str(tmp_path)))
    loaded = VisionTower(VisionConfig(name_or_path=str(tmp_path), allow_pickle=True))
    torch.testing.assert_close(
        loaded.model.embeddings.patch_embedding.weight, source.embeddings.patch_embedding.weight
    )


@pytest.mark.parametrize(("select_feature", "tokens"), [("patch", 16), ("cls_patch", 17)])
def test_timm_vit_tower(select_feature: str, tokens: int) -> None:
    cfg = VisionConfig(backend="timm", name_or_path="vit_tiny_patch16_224", arch={**TIMM, "patch_size": 8})
    cfg.select_feature = select_feature
    tower = VisionTower(cfg)
    assert tower.hidden_size == 48 and tower.num_patches == 16 and tower.num_image_tokens == tokens
    pixels = _pixels()
    out = tower(pixels)
    assert out.shape == (2, tokens, 48)
    # select_layer=-2 is the output of the second-to-last block, before the final norm.
    x = tower.model.patch_embed(pixels)
    x = tower.model._pos_embed(x)
    x = tower.model.norm_pre(x)
    for block in tower.model.blocks[:2]:
        x = block(x)
    torch.testing.assert_close(out, x[:, 17 - tokens :])
    processor = tower.build_image_processor()
    assert processor.crop_size["height"] == 32
    assert list(processor.image_mean) == [0.5, 0.5, 0.5]  # from timm's data config for this model


def test_timm_local_checkpoint(tmp_path) -> None:
    arch = {**TIMM, "patch_size": 8}
    source = VisionTower(VisionConfig(backend="timm", name_or_path="vit_tiny_patch16_224", arch=arch))
    path = tmp_path / "vit.pth"
    torch.save(source.model.state_dict(), path)
    loaded = VisionTower(
        VisionConfig(
            backend="timm", name_or_path="vit_tiny_patch16_224", arch=arch, checkpoint_path=str(path)
        )
    )
    torch.testing.assert_close(loaded(_pixels()), source(_pixels()))


def test_freezing_follows_requires_grad_set_elsewhere() -> None:
    """Training code may unfreeze or freeze the tower by stage; the tower follows requires_grad."""
    tower = VisionTower(VisionConfig(arch=TINY_VISION_ARCH))
    tower.requires_grad_(True)
    tower.train()
    assert not tower.frozen and tower.model.training
    assert tower(_pixels()).requires_grad
    tower.requires_grad_(False)
    tower.train()
    assert tower.frozen and not tower.model.training
