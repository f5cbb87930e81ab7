"""OneVision's ``anyres_max_N`` (``anyres.max_tiles``): counts, pixels, logits and greedy ids
equal to transformers' LlavaOnevision.

OneVision's geometry scaled to tiny random models: a SigLIP tower of 32-pixel tiles read in
full (no CLS; llava-hf's ``vision_feature_select_strategy="full"``, last layer), a Qwen2 LLM,
and every (32 * rows, 32 * cols) pinpoint up to 4 x 4 tiles (OneVision's 384-pixel grid goes
to 6 x 6), so that ``max_tiles`` of 1, 2, 4 and 9 downsample some grids and leave others.
There is no OneVision export, so the reference model is a ``LlavaOnevisionForConditionalGeneration``
given the weights of our LlavaNext export, whose state-dict keys are OneVision's.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import cache
from itertools import product

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.image_utils import PILImageResampling

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.image_grid import ImageGrid
from llava_lite.modeling import LlavaModel, build_tiny_tokenizer, prepare_tokenizer
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava

SIGLIP_ARCH = TINY_VISION_ARCH  # as a siglip_vision_model: OneVision's tower kind
PINPOINTS = [[32 * rows, 32 * cols] for rows in range(1, 5) for cols in range(1, 5)]  # OneVision's, 32/384
MAX_TILES = (1, 2, 4, 9)  # 9 is OneVision's own anyres_max_9
# Tiny, square, tall, wide, exact pinpoints, one pixel off them, photos and a 12-megapixel one.
SIZES = [
    (1, 1), (2, 3), (20, 20), (30, 40), (40, 30), (32, 32), (33, 33), (64, 96), (96, 64), (100, 120),
    (128, 128), (129, 127), (70, 50), (90, 33), (33, 90), (200, 60), (60, 200), (5, 200), (200, 5),
    (1, 1000), (1000, 1), (480, 640), (640, 480), (1080, 1920), (1920, 1080), (3000, 4000),
]  # fmt: skip
BATCH_SIZES = [(30, 40), (100, 120), (200, 60), (40, 300), (1000, 1)]  # plus a text-only row


@cache
def _image(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height * 7919 + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_onevision(max_tiles: int | None) -> LlavaModel:
    torch.manual_seed(0)
    config = LlavaConfig.from_dict(
        {
            "vision": {"model_type": "siglip_vision_model", "arch": SIGLIP_ARCH, "select_layer": -1},
            "llm": {"model_type": "qwen2", "arch": TINY_TEXT_ARCH, "tiny_tokenizer": {"kind": "bpe"}},
            "image_aspect": "anyres",
            "anyres": {"grid_pinpoints": PINPOINTS, "max_tiles": max_tiles},
        }
    )
    return LlavaModel(config).eval()


def _onevision_processor(tokenizer, max_tiles: int) -> LlavaOnevisionProcessor:
    """llava-hf's OneVision processor (its preprocessor_config.json: SigLIP's 0.5 mean and std,
    bicubic, a square ``size``) for 32-pixel tiles; it insists on a video processor."""
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=PILImageResampling.BICUBIC,
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=16,  # (32 / 8) ** 2 patches per tile
        vision_feature_select_strategy="full",
        vision_aspect_ratio=f"anyres_max_{max_tiles}",
    )


def _shrunk(grid: ImageGrid, height: int, width: int) -> bool:
    return grid.downsample_ratio(*grid.unpadded_shape(height, width)) is not None


@pytest.mark.parametrize("max_tiles", MAX_TILES)
def test_token_counts_equal_llava_onevision_processor(max_tiles: int) -> None:
    tokenizer = build_tiny_tokenizer(vocab_size=256)
    image_token = prepare_tokenizer(tokenizer, "<image>")
    theirs = _onevision_processor(tokenizer, max_tiles)
    enc = theirs(
        images=[_image(h, w) for h, w in SIZES],
        text=["<image>\nwhat is it?"] * len(SIZES),
        padding=True,
        return_tensors="pt",
    )
    expected = (enc["input_ids"] == image_token).sum(dim=1).tolist()
    grid = tiny_onevision(max_tiles).image_grid
    assert grid.max_tiles == max_tiles
    assert [grid.num_tokens(h, w) for h, w in SIZES] == expected
    assert grid.max_tokens >= max(expected)
    # Downsampling decides some of these counts, and exactly those differ from LLaVA-NeXT's.
    shrunk = [_shrunk(grid, h, w) for h, w in SIZES]
    assert any(shrunk) and not all(shrunk)
    next_grid = dataclasses.replace(grid, max_tiles=None)
    assert [next_grid.num_tokens(h, w) != n for (h, w), n in zip(SIZES, expected, strict=True)] == shrunk


@pytest.mark.parametrize("max_tiles", [None, 1, 2, 3, 4, 9])
def test_max_tokens_is_the_most_any_image_becomes(max_tiles: int | None) -> None:
    """A downsampled grid keeps ~max_tiles tiles of features but one newline per remaining row:
    cut grids (an unpadded side) and grids just under the 1.1 slack can outgrow every full one."""
    grid = ImageGrid(32, 4, 16, tuple(map(tuple, PINPOINTS)), max_tiles)
    most = max(grid.num_tokens(h, w) for h, w in product(range(1, 161), repeat=2))
    assert grid.max_tokens == most


def test_pixels_and_prompt_counts_equal_llava_onevision_for_single_images() -> None:
    model = tiny_onevision(2)
    ours = LlavaProcessor.from_model(model, template="plain")
    theirs = _onevision_processor(copy.deepcopy(model.tokenizer), 2)
    for h, w in SIZES:
        image = _image(h, w)
        prompt = ours.prompt("what is it?", image)
        enc = theirs(images=image, text="<image>\nwhat is it?", return_tensors="pt")
        tiles = enc["pixel_values"][0]  # [1 + rows * cols, 3, 32, 32]: one image, nothing padded
        assert tiles.shape[0] == model.image_grid.num_tiles(h, w), (h, w)
        assert prompt["pixel_values"].shape == tiles.shape, (h, w)
        torch.testing.assert_close(prompt["pixel_values"], tiles, rtol=0, atol=0)
        assert prompt["image_sizes"] == [(h, w)] and enc["image_sizes"].tolist() == [[h, w]]
        expected = int((enc["input_ids"] == model.image_token_id).sum())
        assert int((prompt["input_ids"] == model.image_token_id).sum()) == expected, (h, w)


@pytest.fixture(scope="module")
def llava_next_export(tmp_path_factory) -> tuple[LlavaModel, LlavaNextForConditionalGeneration]:
    """Our model without max_tiles and transformers' LlavaNext loaded from its export."""
    model = tiny_onevision(None)
    path = export_to_hf_llava(model, tmp_path_factory.mktemp("llava_next"))
    return model, LlavaNextForConditionalGeneration.from_pretrained(path).eval()


def _onevision_twin(
    nxt: LlavaNextForConditionalGeneration, max_tiles: int
) -> LlavaOnevisionForConditionalGeneration:
    """transformers' OneVision with the LlavaNext export's config and weights, key for key."""
    c = nxt.config
    assert (c.vision_feature_select_strategy, c.vision_feature_layer) == ("full", -1)  # OneVision's
    config = LlavaOnevisionConfig(
        vision_config=c.vision_config.to_dict(),
        text_config=c.text_config.to_dict(),
        image_token_index=c.image_token_index,
        image_grid_pinpoints=c.image_grid_pinpoints,
        projector_hidden_act=c.projector_hidden_act,
        multimodal_projector_bias=c.multimodal_projector_bias,
        vision_feature_select_strategy=c.vision_feature_select_strategy,
        vision_feature_layer=c.vision_feature_layer,
        tie_word_embeddings=c.tie_word_embeddings,
        vision_aspect_ratio=f"anyres_max_{max_tiles}",
    )
    onevision = LlavaOnevisionForConditionalGeneration(config).eval()
    state = nxt.state_dict()
    assert set(state) == set(onevision.state_dict())
    assert {k.split(".")[1] if k.startswith("model.") else k for k in state} == {
        "vision_tower",
        "multi_modal_projector",
        "language_model",
        "image_newline",
        "lm_head.weight",
    }
    onevision.load_state_dict(state, strict=True)
    return onevision


@pytest.mark.parametrize("max_tiles", [1, 2, 9])  # 4 shrinks the same batch images as 9
def test_equal_llava_onevision_logits_and_greedy_ids(llava_next_export, max_tiles: int) -> None:
    base, nxt = llava_next_export
    hf = _onevision_twin(nxt, max_tiles)
    model = tiny_onevision(max_tiles)
    model.load_state_dict(base.state_dict())
    grid = model.image_grid
    shrunk = [_shrunk(grid, h, w) for h, w in BATCH_SIZES]
    assert any(shrunk) and not all(shrunk)
    processor = _onevision_processor(copy.deepcopy(model.tokenizer), max_tiles)
    processor.tokenizer.padding_side = "left"
    texts = [f"<image>\nwhat is in picture {i}?" for i in range(len(BATCH_SIZES))] + ["no picture, just text"]
    enc = processor(
        images=[_image(h, w) for h, w in BATCH_SIZES], text=texts, padding=True, return_tensors="pt"
    )
    # transformers pads each image's tiles to the batch's most; we carry only the real ones.
    tiles = [t[: grid.num_tiles(h, w)] for t, (h, w) in zip(enc["pixel_values"], BATCH_SIZES, strict=True)]
    ours_inputs = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values": torch.cat(tiles),
        "image_sizes": enc["image_sizes"],
    }
    with torch.no_grad():
        theirs = hf(**enc).logits
        ours = model(**ours_inputs).logits
        with pytest.raises(ValueError, match="image tokens do not match images"):
            base(**ours_inputs)  # LLaVA-NeXT's counts (no max_tiles) do not fit OneVision's prompts
    assert (theirs - ours).abs().max().item() <= 1e-5
    pad, eos = model.tokenizer.pad_token_id, model.tokenizer.eos_token_id
    their_ids = hf.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    our_ids = model.generate(**ours_inputs, max_new_tokens=6, eos_token_id=eos)
    assert torch.equal(their_ids[:, enc["input_ids"].shape[1] :], our_ids)
