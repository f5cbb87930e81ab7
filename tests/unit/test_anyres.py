"""AnyRes (LLaVA-NeXT): token counts, pixels and logits equal to transformers' LlavaNext, both ways.

The processor test uses LLaVA-NeXT's real geometry (336-pixel tiles, 14-pixel patches, the
default pinpoints); the model tests use tiny random towers of 32-pixel tiles whose pinpoints
are LLaVA-NeXT's scaled down, so every grid shape and unpadding case still occurs.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaCollator, LlavaProcessor
from llava_lite.image_grid import LLAVA_NEXT_PINPOINTS, ImageGrid
from llava_lite.modeling import LlavaModel, build_tiny_tokenizer, load_pretrained, prepare_tokenizer
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.modeling.formats.original_llava import original_to_config
from llava_lite.modeling.vision import tiling_image_processor

TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's, scaled 32/336
FAMILIES = {"llama": TINY_TEXT_ARCH, "mistral": TINY_TEXT_ARCH, "qwen2": TINY_TEXT_ARCH}
TOWERS = ("clip_vision_model", "siglip_vision_model")


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + height * 7 + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _ties(pinpoints: list[list[int]], limit: int = 1100, step: int = 7) -> dict[tuple, list[tuple[int, int]]]:
    """Sizes (height, width) by the set of pinpoints that tie for the best fit there (transformers' rule)."""
    found: dict[tuple, list[tuple[int, int]]] = {}
    for h, w in product(range(1, limit, step), repeat=2):
        scores = []
        for ph, pw in pinpoints:
            scale = min(pw / w, ph / h)
            effective = min(int(w * scale) * int(h * scale), w * h)
            scores.append((effective, -(pw * ph - effective)))
        best = max(scores)
        tied = tuple(i for i, s in enumerate(scores) if s == best)
        if len(tied) > 1:
            found.setdefault(tied, []).append((h, w))
    return found


PARITY_SIZES = [
    (1, 1), (336, 336), (200, 300), (300, 200), (480, 640), (640, 480), (1080, 1920), (1920, 1080),
    (2000, 1), (1, 2000), (673, 337), (337, 673), (335, 335), (337, 337), (672, 672), (1008, 336),
    (336, 1008), (500, 500), (17, 911), (911, 17), (333, 999), (999, 333), (700, 1400), (1400, 700),
    (1023, 767), (767, 1023), (2, 3), (3, 2), (4000, 3000), (451, 619),
]  # fmt: skip


def _reference_processor() -> LlavaNextProcessor:
    tokenizer = build_tiny_tokenizer(vocab_size=256)
    prepare_tokenizer(tokenizer, "<image>")
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_PINPOINTS],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def test_the_only_tie_is_336x672_against_672x336_for_images_up_to_336_pixels() -> None:
    ties = _ties([list(p) for p in LLAVA_NEXT_PINPOINTS])
    assert set(ties) == {(0, 1)}
    small = {(h, w) for h, w in product(range(1, 337, 7), repeat=2)}
    assert small <= set(ties[(0, 1)])  # every image up to 336 px on both sides ties, and some larger ones


def test_processor_matches_llava_next_processor_over_many_sizes() -> None:
    """Image-token counts and pixel values equal transformers' over 30 sizes and every tie."""
    theirs = _reference_processor()
    ours = LlavaProcessor(
        theirs.tokenizer,
        tiling_image_processor(
            CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
            [list(p) for p in LLAVA_NEXT_PINPOINTS],
            336,
        ),
        num_image_tokens=576,
        image_aspect="anyres",
        template="plain",
        model_max_length=10_000,
        image_grid=ImageGrid(336, 24, 576, LLAVA_NEXT_PINPOINTS),
    )
    tie_sizes = _ties([list(p) for p in LLAVA_NEXT_PINPOINTS], step=67)[
        (0, 1)
    ]  # the one tie, small and large
    sizes = PARITY_SIZES + tie_sizes
    assert len(set(sizes)) >= 40
    token = ours.image_token_id
    for h, w in sizes:
        image = _image(h, w)
        enc = theirs(images=image, text="<image>\nwhat is it?", return_tensors="pt")
        expected = int((enc["input_ids"] == token).sum())
        prompt = ours.prompt("what is it?", image)
        assert int((prompt["input_ids"] == token).sum()) == expected, (h, w)
        assert ours.image_tokens((h, w)) == expected
        tiles = enc["pixel_values"][0]  # [n, 3, 336, 336]
        assert prompt["pixel_values"].shape == tiles.shape, (h, w)
        torch.testing.assert_close(prompt["pixel_values"], tiles, rtol=0, atol=0)
        assert prompt["image_sizes"] == [(h, w)]
    assert ImageGrid(336, 24, 576, LLAVA_NEXT_PINPOINTS).max_tokens == 2928


def test_original_llava_next_pinpoints_are_width_height_and_pick_its_grid_on_ties() -> None:
    """The original code reads a pinpoint as (width, height): its import swaps them, llava-hf's does not."""
    original = {
        "model_type": "llava",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        **TINY_TEXT_ARCH,
    }
    config, _ = original_to_config(original)
    assert config.image_aspect == "anyres"
    assert config.anyres.grid_pinpoints == [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]
    as_original = ImageGrid(336, 24, 576, tuple(map(tuple, config.anyres.grid_pinpoints)))
    as_hf = ImageGrid(336, 24, 576, LLAVA_NEXT_PINPOINTS)
    for h, w in [(336, 336), (200, 300), (300, 200), (1, 1)]:
        assert as_hf.grid_shape(h, w) == (1, 2)  # transformers: [336, 672] is 336 high, 672 wide
        assert as_original.grid_shape(h, w) == (2, 1)  # the original: 336 wide, 672 high
    # Away from ties both conventions agree.
    assert as_original.grid_shape(100, 900) == as_hf.grid_shape(100, 900) == (1, 3)


def test_original_import_reads_anyres_max_and_refuses_other_merges() -> None:
    base = {"model_type": "llava_qwen", "mm_vision_tower": "x", **TINY_TEXT_ARCH}
    config, _ = original_to_config(
        {
            **base,
            "image_aspect_ratio": "anyres_max_9",
            "mm_patch_merge_type": "spatial_unpad",
            "image_grid_pinpoints": [[384, 768]],
        }
    )
    assert (config.anyres.max_tiles, config.anyres.grid_pinpoints, config.llm.model_type) == (
        9,
        [[768, 384]],
        "qwen2",
    )
    with pytest.raises(ValueError, match="only 'spatial_unpad'"):
        original_to_config({**base, "image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial"})
    with pytest.raises(ValueError, match="range form"):
        original_to_config(
            {
                **base,
                "image_aspect_ratio": "anyres",
                "mm_patch_merge_type": "spatial_unpad",
                "image_grid_pinpoints": "(1x1),...,(6x6)",
            }
        )


def tiny_anyres(family: str = "llama", tower: str = "clip_vision_model", **anyres: object) -> LlavaModel:
    torch.manual_seed(0)
    config = LlavaConfig.from_dict(
        {
            "vision": {"model_type": tower, "arch": TINY_VISION_ARCH},
            "llm": {"model_type": family, "arch": FAMILIES[family], "tiny_tokenizer": {"kind": "bpe"}},
            "image_aspect": "anyres",
            "anyres": {"grid_pinpoints": TINY_PINPOINTS, **anyres},
        }
    )
    return LlavaModel(config).eval()


SIZES = [(30, 40), (40, 30), (20, 100), (67, 33), (1, 1), (1, 200), (64, 64), (96, 32)]


def _hf_batch(processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """A left-padded batch: one image per row but the last row, which is text only."""
    texts = [f"<image>\nwhat is in picture {i}?" for i in range(len(images))] + ["no picture here, just text"]
    processor.tokenizer.padding_side = "left"
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


def _our_inputs(model: LlavaModel, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' batch as our model takes it: its tiles are padded to the batch's most per
    image, ours are only the real ones, image after image."""
    sizes = enc["image_sizes"].tolist()
    tiles = torch.cat(
        [t[: model.image_grid.num_tiles(h, w)] for t, (h, w) in zip(enc["pixel_values"], sizes, strict=True)]
    )
    keys = ("input_ids", "attention_mask", "image_sizes")
    return {"pixel_values": tiles, **{k: enc[k] for k in keys}}


@pytest.mark.parametrize(("family", "tower"), list(product(FAMILIES, TOWERS)))
def test_export_equals_llava_next_logits_and_greedy_ids(tmp_path, family: str, tower: str) -> None:
    model = tiny_anyres(family, tower)
    export_to_hf_llava(model, tmp_path)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert processor.image_processor.image_grid_pinpoints == TINY_PINPOINTS
    assert hf.config.image_grid_pinpoints == TINY_PINPOINTS
    enc = _hf_batch(processor, [_image(h, w) for h, w in SIZES[:4]])
    ours_inputs = _our_inputs(model, enc)
    with torch.no_grad():
        theirs = hf(**enc).logits
        ours = model(**ours_inputs).logits
    assert (theirs - ours).abs().max().item() <= 1e-5
    their_ids = hf.generate(**enc, max_new_tokens=6, do_sample=False)[:, enc["input_ids"].shape[1] :]
    our_ids = model.generate(**ours_inputs, max_new_tokens=6)
    assert torch.equal(their_ids, our_ids)


def _llava_next_folder(path, family: str, tower: str) -> LlavaNextForConditionalGeneration:
    """A random LlavaNext checkpoint made by transformers itself (not by our exporter)."""
    tokenizer = build_tiny_tokenizer(vocab_size=256)
    image_token_id = prepare_tokenizer(tokenizer, "<image>")
    torch.manual_seed(3)
    siglip = tower == "siglip_vision_model"
    config = LlavaNextConfig(
        vision_config={"model_type": tower, **TINY_VISION_ARCH},
        text_config={"model_type": family, **FAMILIES[family], "vocab_size": len(tokenizer)},
        image_token_index=image_token_id,
        image_grid_pinpoints=TINY_PINPOINTS,
        vision_feature_select_strategy="full" if siglip else "default",
        vision_feature_layer=-2,
    )
    hf = LlavaNextForConditionalGeneration(config).eval()
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = {"height": 32, "width": 32} if siglip else {"shortest_edge": 32}
    image_processor = LlavaNextImageProcessor(
        size=size,
        crop_size={"height": 32, "width": 32},
        do_center_crop=not siglip,
        image_grid_pinpoints=TINY_PINPOINTS,
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=0 if siglip else 1,
    ).save_pretrained(path)
    return hf


@pytest.mark.parametrize(
    ("family", "tower"),
    [("llama", "clip_vision_model"), ("mistral", "siglip_vision_model"), ("qwen2", "clip_vision_model")],
)
def test_llava_next_folder_loads_with_equal_logits_and_greedy_ids(tmp_path, family: str, tower: str) -> None:
    hf = _llava_next_folder(tmp_path, family, tower)
    model = load_pretrained(tmp_path).eval()
    assert model.config.image_aspect == "anyres"
    assert model.config.anyres.grid_pinpoints == TINY_PINPOINTS
    torch.testing.assert_close(model.image_newline.weight, hf.model.image_newline, rtol=0, atol=0)
    processor = AutoProcessor.from_pretrained(tmp_path)
    images = [_image(h, w, seed=5) for h, w in SIZES[3:8]]
    enc = _hf_batch(processor, images)
    ours_inputs = _our_inputs(model, enc)
    with torch.no_grad():
        assert (hf(**enc).logits - model(**ours_inputs).logits).abs().max().item() <= 1e-5
    their_ids = hf.generate(
        **enc, max_new_tokens=6, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
    )
    our_ids = model.generate(**ours_inputs, max_new_tokens=6, eos_token_id=hf.generation_config.eos_token_id)
    assert torch.equal(their_ids[:, enc["input_ids"].shape[1] :], our_ids)
    # Our own processor builds the same prompt ids and tiles for each image.
    ours = LlavaProcessor.from_model(model, template="plain")
    for image, (h, w) in zip(images, SIZES[3:8], strict=True):
        prompt = ours.prompt("x", image)
        assert int((prompt["input_ids"] == model.image_token_id).sum()) == model.image_grid.num_tokens(h, w)
        reference = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(prompt["pixel_values"], reference, rtol=0, atol=0)


def test_a_model_saved_and_reloaded_keeps_anyres(tmp_path) -> None:
    model = tiny_anyres()
    model.save_pretrained(tmp_path)
    back = LlavaModel.from_pretrained(tmp_path).eval()
    assert back.config.to_dict() == model.config.to_dict()
    assert type(back.image_processor).__name__ == "LlavaNextImageProcessor"
    processor = LlavaProcessor.from_model(back)
    prompt = processor.prompt("what is it?", _image(40, 90))
    batch = LlavaCollator(processor.pad_token_id, padding_side="left")([prompt])
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    with torch.no_grad():
        torch.testing.assert_close(back(**kw).logits, model(**kw).logits, rtol=0, atol=0)


def test_slot_mismatch_names_the_row_and_never_reaches_the_tower() -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model, template="plain")
    prompt = processor.prompt("x", _image(30, 40))
    ids = prompt["input_ids"][None]
    with pytest.raises(ValueError, match=r"hold 3 tiles but image_sizes \[\(30, 200\)\] make 4"):
        model(ids, pixel_values=prompt["pixel_values"], image_sizes=[(30, 200)])
    short = ids[:, 1:] if ids[0, 0] == model.image_token_id else torch.cat([ids[:, :1], ids[:, 2:]], 1)
    with pytest.raises(ValueError, match=r"row 0 is the first that disagrees"):
        model(short, pixel_values=prompt["pixel_values"], image_sizes=prompt["image_sizes"])
    with pytest.raises(ValueError, match="pass image_sizes"):
        model(ids, pixel_values=prompt["pixel_values"])
