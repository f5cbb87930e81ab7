"""The ``+patch_positions`` projector variant: trained in stage 1, saved natively, refused by
llava-hf export, and configs from before it was a type name still load."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from helpers import tiny_llava
from llava_lite.config import LlavaConfig, preset
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.training import load_projector, save_projector
from llava_lite.training.freeze import apply_stage

POSITIONS = "mlp2x_gelu+patch_positions"


def _inputs(model: LlavaModel) -> tuple[torch.Tensor, torch.Tensor]:
    text = model.tokenizer("a red circle", add_special_tokens=False).input_ids
    input_ids = torch.tensor([[model.image_token_id] * model.num_image_tokens + text])  # [1, T]
    pixels = torch.randn(1, 3, model.vision_tower.image_size, model.vision_tower.image_size)  # [1, 3, H, W]
    return input_ids, pixels


def test_positions_change_the_logits_and_survive_a_native_round_trip(tmp_path) -> None:
    model = tiny_llava(POSITIONS)
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
    assert reloaded.config.projector.type == POSITIONS
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids, pixels).logits, after)


def test_the_variant_keeps_the_base_weights_and_starts_as_the_plain_model() -> None:
    plain, with_positions = tiny_llava(), tiny_llava(POSITIONS)
    own = with_positions.state_dict()
    # Same seed, same creation order: every plain weight is bit-identical; one tensor more.
    assert set(own) - set(plain.state_dict()) == {"projector.3.weight"}
    for key, value in plain.state_dict().items():
        assert torch.equal(own[key], value), key
    input_ids, pixels = _inputs(plain)
    with torch.no_grad():
        assert torch.equal(with_positions(input_ids, pixels).logits, plain(input_ids, pixels).logits)


def test_stage_one_trains_the_positions_with_the_projector() -> None:
    model = tiny_llava(POSITIONS)
    apply_stage(model.components(), "pretrain")
    assert model.projector[-1].weight.requires_grad
    assert not any(p.requires_grad for p in model.llm.parameters())


def test_stage_one_file_carries_the_positions_and_a_mismatch_names_the_type(tmp_path) -> None:
    trained, fresh, plain = tiny_llava(POSITIONS), tiny_llava(POSITIONS), tiny_llava()
    with torch.no_grad():
        trained.projector[-1].weight.fill_(0.5)
    save_projector(trained.projector, tmp_path / "with.safetensors", POSITIONS)
    load_projector(fresh.projector, tmp_path / "with.safetensors", POSITIONS)
    torch.testing.assert_close(fresh.projector[-1].weight, trained.projector[-1].weight)
    save_projector(plain.projector, tmp_path / "plain.safetensors", "mlp2x_gelu")
    # The model has positions, the file has none ...
    with pytest.raises(
        ValueError, match=r"missing=\['3\.weight'\].*projector\.type \(this model: mlp2x_gelu\+patch"
    ):
        load_projector(fresh.projector, tmp_path / "plain.safetensors", POSITIONS)
    # ... and the other way round.
    with pytest.raises(
        ValueError, match=r"unexpected=\['3\.weight'\].*projector\.type \(this model: mlp2x_gelu,"
    ):
        load_projector(plain.projector, tmp_path / "with.safetensors", "mlp2x_gelu")
    # Another base fails on the recorded type alone.
    with pytest.raises(ValueError, match=r"holds a 'mlp2x_gelu\+patch_positions' projector"):
        load_projector(tiny_llava("linear").projector, tmp_path / "with.safetensors", "linear")


def test_a_stage_one_file_from_before_variants_still_loads(tmp_path) -> None:
    """Such files record the base type ('mlp2x_gelu') but hold the positions too."""
    trained, fresh = tiny_llava(POSITIONS), tiny_llava(POSITIONS)
    with torch.no_grad():
        trained.projector[-1].weight.fill_(0.25)
    save_projector(trained.projector, tmp_path / "old.safetensors", "mlp2x_gelu")
    load_projector(fresh.projector, tmp_path / "old.safetensors", POSITIONS)
    torch.testing.assert_close(fresh.projector.state_dict(), trained.projector.state_dict())


def test_llava_hf_export_refuses_in_one_line_before_writing(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'mlp2x_gelu\+patch_positions' has no llava-hf equivalent") as err:
        export_to_hf_llava(tiny_llava(POSITIONS), tmp_path / "out")
    assert "\n" not in str(err.value) and "save_pretrained" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("old", "new"), [(True, "mlp2x_gelu+patch_positions"), (False, "mlp2x_gelu")])
def test_an_old_config_dict_with_the_bool_field_loads(old: bool, new: str, caplog) -> None:
    data = preset("tiny")
    data["projector"] = {"type": "mlp2x_gelu", "patch_positions": old}
    with caplog.at_level(logging.WARNING):
        config = LlavaConfig.from_dict(data)
    assert config.projector.type == new
    assert "unknown config keys" not in caplog.text
    assert "patch_positions" not in config.to_dict()["projector"]
    # Already a variant: the old flag does not add the suffix twice.
    data["projector"] = {"type": POSITIONS, "patch_positions": True}
    assert LlavaConfig.from_dict(data).projector.type == POSITIONS


def test_a_model_saved_with_the_bool_field_reloads_bit_identical(tmp_path) -> None:
    model = tiny_llava(POSITIONS)
    with torch.no_grad():
        model.projector[-1].weight.normal_()
    model.save_pretrained(tmp_path)
    # Rewrite config.json as the previous version wrote it.
    path = tmp_path / "config.json"
    meta = json.loads(path.read_text())
    meta["llava_lite"]["projector"] = {"type": "mlp2x_gelu", "patch_positions": True}
    path.write_text(json.dumps(meta))
    reloaded = LlavaModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.projector.type == POSITIONS
    input_ids, pixels = _inputs(model)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, pixels).logits, model(input_ids, pixels).logits)
