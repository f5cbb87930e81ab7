"""Parity with transformers' LlavaForConditionalGeneration, both directions, on random tiny weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    GenerationConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers import LlavaConfig as HFLlavaConfig

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH, tiny_llava
from llava_lite.config import LlavaConfig
from llava_lite.modeling import LlavaModel, build_tiny_tokenizer, load_pretrained, prepare_tokenizer
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava, import_hf_llava


def _batch(model: LlavaModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per row (llava-hf pairs pixel_values with image blocks in order); equal-length rows."""
    rows = []
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt").input_ids[0]
        rows.append(
            torch.cat([ids[:1], torch.full((model.num_image_tokens,), model.image_token_id), ids[1:]])
        )
    width = min(r.numel() for r in rows)
    input_ids = torch.stack([r[:width] for r in rows])
    pixels = torch.randn(len(texts), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return input_ids, pixels


@pytest.mark.parametrize(
    ("projector", "vision"),
    [
        ("mlp2x_gelu", {}),
        ("linear", {}),
        ("mlp2x_gelu", {"select_feature": "cls_patch", "select_layer": -1}),
        ("mlp2x_gelu", {"model_type": "siglip_vision_model"}),
    ],
    ids=["mlp2x-clip-patch", "linear", "cls_patch-last-layer", "siglip"],
)
def test_export_gives_equal_logits_in_transformers(tmp_path, projector: str, vision: dict) -> None:
    model = tiny_llava(projector, **vision)
    export_to_hf_llava(model, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids, pixels = _batch(model, ["a red circle on the left", "two blue squares"])
    with torch.no_grad():
        ours = model(input_ids, pixel_values=pixels).logits
        theirs = hf(input_ids=input_ids, pixel_values=pixels).logits
    torch.testing.assert_close(theirs, ours)

    # The saved processor expands <image> to the number of tokens the model expects.
    processor = AutoProcessor.from_pretrained(tmp_path)
    enc = processor(images=Image.new("RGB", (50, 40)), text="USER: <image>\nwhat?", return_tensors="pt")
    assert int((enc["input_ids"] == model.image_token_id).sum()) == model.num_image_tokens


def test_round_trip_through_llava_hf(tmp_path) -> None:
    model = tiny_llava("linear")
    export_to_hf_llava(model, tmp_path)
    back = import_hf_llava(tmp_path).eval()
    assert back.config.projector.type == "linear"
    assert back.num_image_tokens == model.num_image_tokens
    input_ids, pixels = _batch(model, ["a green star"])
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids, pixels).logits, model(input_ids, pixels).logits)


def _hf_llava_folder(path) -> LlavaForConditionalGeneration:
    """A random llava-hf checkpoint made by transformers itself (not by our exporter)."""
    tokenizer = build_tiny_tokenizer(vocab_size=256)
    image_token_id = prepare_tokenizer(tokenizer, "<image>")
    torch.manual_seed(3)
    config = HFLlavaConfig(
        vision_config={"model_type": "clip_vision_model", **TINY_VISION_ARCH},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TINY_TEXT_ARCH},
        image_token_index=image_token_id,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    hf = LlavaForConditionalGeneration(config).eval()
    hf.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(path)
    return hf


def test_import_gives_equal_logits(tmp_path) -> None:
    hf = _hf_llava_folder(tmp_path)
    model = import_hf_llava(tmp_path).eval()
    assert model.num_image_tokens == 16
    assert model.image_token_id == hf.config.image_token_index
    assert model.config.projector.type == "mlp2x_gelu"
    input_ids, pixels = _batch(model, ["how many shapes", "what colour is it"])
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, pixel_values=pixels).logits
        ours = model(input_ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs)
    # The imported model saves and reloads as a llava_lite model.
    model.save_pretrained(tmp_path / "ours")
    reloaded = LlavaModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids, pixels).logits, ours)


def test_export_refuses_what_llava_hf_cannot_hold(tmp_path) -> None:
    with pytest.raises(ValueError, match="no llava-hf equivalent"):
        export_to_hf_llava(tiny_llava("mlp3x_gelu"), tmp_path)


@pytest.mark.parametrize("template", ["chatml", "llama_2", "llava_v1", "plain", "vicuna_v1"])
def test_round_trip_keeps_every_config_field(tmp_path, template: str) -> None:
    model = tiny_llava("linear", conv_template=template, freeze=False, image_mean=[0.1, 0.2, 0.3])
    model.config.image_aspect, model.config.model_max_length = "crop", 200
    export_to_hf_llava(model, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config.to_dict() == model.config.to_dict()
    # What transformers itself reads: the template's stops and the length limit.
    generation = GenerationConfig.from_pretrained(tmp_path)
    stops = model.stop_token_ids()
    assert (
        generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    ) == stops
    assert generation.max_length == 200
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.model_max_length == 200
    assert model.tokenizer.model_max_length != 200  # the model's own tokenizer is untouched


def test_foreign_llava_hf_folder_loads_with_documented_defaults(tmp_path) -> None:
    _hf_llava_folder(tmp_path)
    model = load_pretrained(tmp_path)
    assert (model.config.conv_template, model.config.image_aspect) == ("vicuna_v1", "pad")
    assert model.config.model_max_length == TINY_TEXT_ARCH["max_position_embeddings"]


LLM_FAMILIES = {
    "llama": TINY_TEXT_ARCH,
    "mistral": TINY_TEXT_ARCH,
    "qwen2": {**TINY_TEXT_ARCH, "tie_word_embeddings": True},
    "gpt2": {"n_embd": 48, "n_layer": 2, "n_head": 4, "n_positions": 256},
}


@pytest.mark.parametrize("family", sorted(LLM_FAMILIES))
def test_every_listed_llm_family_exports_and_reimports_with_equal_logits(tmp_path, family: str) -> None:
    torch.manual_seed(0)
    llm = {"model_type": family, "arch": LLM_FAMILIES[family], "tiny_tokenizer": {"kind": "bpe"}}
    model = LlavaModel(LlavaConfig.from_dict({"vision": {"arch": TINY_VISION_ARCH}, "llm": llm})).eval()
    export_to_hf_llava(model, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    back = load_pretrained(tmp_path).eval()
    input_ids, pixels = _batch(model, ["a red circle on the left"])
    with torch.no_grad():
        ours = model(input_ids, pixel_values=pixels).logits
        torch.testing.assert_close(hf(input_ids=input_ids, pixel_values=pixels).logits, ours)
        torch.testing.assert_close(back(input_ids, pixel_values=pixels).logits, ours)
    tied = bool(model.llm.config.tie_word_embeddings)
    head, embed = back.llm.get_output_embeddings().weight, back.llm.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) == tied  # GPT-2's wte is tied again on import
    assert back.config.to_dict() == model.config.to_dict()


def test_phi_lm_head_bias_is_refused_before_anything_is_written(tmp_path) -> None:
    torch.manual_seed(0)
    llm = {
        "model_type": "phi",
        "arch": {k: v for k, v in TINY_TEXT_ARCH.items() if k != "num_key_value_heads"},
    }
    model = LlavaModel(LlavaConfig.from_dict({"vision": {"arch": TINY_VISION_ARCH}, "llm": llm}))
    with pytest.raises(ValueError, match="PhiForCausalLM's LM head has a bias"):
        export_to_hf_llava(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("template", "new_tokens"), [("chatml", 1), ("vicuna_v1", 5)])
def test_generate_stops_at_the_templates_end_of_turn_by_default(template: str, new_tokens: int) -> None:
    model = tiny_llava(conv_template=template)
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    boost = torch.zeros(len(model.tokenizer))
    boost[im_end] = 100.0  # the LM always says <|im_end|> next
    head = model.llm.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _i, out: out + boost[: out.shape[-1]])
    try:
        ids = model.tokenizer("USER: hi ASSISTANT:", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=5)
    finally:
        handle.remove()
    assert out.shape[1] == new_tokens and int(out[0, 0]) == im_end
    assert model.stop_token_ids() == ([im_end] if template == "chatml" else [model.tokenizer.eos_token_id])


def test_folder_edited_after_export_wins_over_the_stored_config(tmp_path, caplog) -> None:
    import json

    model = tiny_llava("linear", conv_template="chatml")
    export_to_hf_llava(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["llava_lite_export"]["config"]["projector"]["type"] = "mlp2x_gelu"  # stale copy
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        back = load_pretrained(tmp_path)
    assert back.config.projector.type == "linear" and back.config.conv_template == "chatml"
    assert "projector.type is 'linear' in the folder but 'mlp2x_gelu'" in caplog.text
