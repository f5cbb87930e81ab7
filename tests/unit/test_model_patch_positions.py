"""``projector.patch_positions``: trained in stage 1, saved natively, refused by llava-hf export."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_llava
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.training import load_projector, save_projector
from llava_lite.training.freeze import apply_stage


def _inputs(model: LlavaModel) -> tuple[torch.Tensor, torch.Tensor]:
    text = model.tokenizer("a red circle", add_special_tokens=False).input_ids
    input_ids = torch.tensor([[model.image_token_id] * model.num_image_tokens + text])  # [1, T]
    pixels = torch.randn(1, 3, model.vision_tower.image_size, model.vision_tower.image_size)  # [1, 3, H, W]
    return input_ids, pixels


def test_positions_change_the_logits_and_survive_a_native_round_trip(tmp_path) -> None:
    model = tiny_llava(patch_positions=True)
    positions = model.projector[-1].weight
    assert positions.shape == (model.num_image_tokens, model.llm.config.hidden_size)
    input_ids, pixels = _inputs(model)
    with torch.no_grad():
        before = model(input_ids, pixels).logits
        positions.copy_(torch.randn_like(positions))
        after = model(input_ids, pixels).logits
    assert not torch.allclose(before, after)
    model.save_pretrained(tmp_path)
    reloaded = LlavaModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.projector.patch_positions
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids, pixels).logits, after)


def test_stage_one_trains_the_positions_with_the_projector() -> None:
    model = tiny_llava(patch_positions=True)
    apply_stage(model.components(), "pretrain")
    assert model.projector[-1].weight.requires_grad
    assert not any(p.requires_grad for p in model.llm.parameters())


def test_stage_one_file_carries_the_positions_and_a_plain_file_is_refused(tmp_path) -> None:
    trained, fresh = tiny_llava(patch_positions=True), tiny_llava(patch_positions=True)
    with torch.no_grad():
        trained.projector[-1].weight.fill_(0.5)
    save_projector(trained.projector, tmp_path / "with.safetensors", "mlp2x_gelu")
    load_projector(fresh.projector, tmp_path / "with.safetensors", "mlp2x_gelu")
    torch.testing.assert_close(fresh.projector[-1].weight, trained.projector[-1].weight)
    save_projector(tiny_llava().projector, tmp_path / "plain.safetensors", "mlp2x_gelu")
    with pytest.raises(ValueError, match=r"missing=\['3\.weight'\].*patch_positions"):
        load_projector(fresh.projector, tmp_path / "plain.safetensors", "mlp2x_gelu")


def test_llava_hf_export_refuses_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match="patch_positions=true has no llava-hf equivalent"):
        export_to_hf_llava(tiny_llava(patch_positions=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()
