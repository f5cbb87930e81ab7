"""Parity with transformers' LlavaForConditionalGeneration, both directions, on random tiny weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor
from transformers import LlavaConfig as HFLlavaConfig

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH, tiny_llava
from llava_lite.modeling import LlavaModel, build_tiny_tokenizer, prepare_tokenizer
from llava_lite.modeling.hf_convert import export_to_hf_llava, import_hf_llava


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
