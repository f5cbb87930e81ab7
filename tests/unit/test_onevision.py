"""Several images and video the LLaVA-OneVision way: counts, pixels, logits and greedy ids equal to
transformers' LlavaOnevision, in both directions (our llava_onevision export loaded by
transformers, and a folder transformers wrote loaded by ``load_pretrained``).

OneVision's geometry scaled to tiny random models, as in test_anyres_max.py: a SigLIP tower
of 32-pixel tiles read in full (4 x 4 patches a view, 2 x 2 once a video frame is pooled), a
Qwen2 LLM, every (32 * rows, 32 * cols) pinpoint up to 4 x 4 tiles, ``anyres_max_9``.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.image_utils import PILImageResampling

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH
from llava_lite.config import LlavaConfig
from llava_lite.data import LlavaProcessor
from llava_lite.data.collate import LlavaCollator
from llava_lite.modeling import LlavaModel, load_pretrained
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.modeling.llava import VISUAL_INPUTS

PINPOINTS = [[32 * rows, 32 * cols] for rows in range(1, 5) for cols in range(1, 5)]
MAX_TILES = 9
FRAME_SIZE = (40, 56)  # decoded frames; each becomes one 32-pixel view


@cache
def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(height * 7919 + width * 31 + seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _frames(count: int, seed: int = 0) -> list[Image.Image]:
    return [_image(*FRAME_SIZE, seed=seed * 100 + i) for i in range(count)]


def onevision_config(llm: str = "qwen2", tower: str = "siglip_vision_model") -> LlavaConfig:
    return LlavaConfig.from_dict(
        {
            "vision": {"model_type": tower, "arch": TINY_VISION_ARCH, "select_layer": -1},
            "llm": {"model_type": llm, "arch": TINY_TEXT_ARCH, "tiny_tokenizer": {"kind": "bpe"}},
            "image_aspect": "anyres",
            "anyres": {"grid_pinpoints": PINPOINTS, "max_tiles": MAX_TILES, "multi_image": "base"},
            "video_token": "<video>",
            "conv_template": "chatml",
        }
    )


@pytest.fixture(scope="module")
def model() -> LlavaModel:
    torch.manual_seed(0)
    return LlavaModel(onevision_config()).eval()


def _hf_processor(tokenizer) -> LlavaOnevisionProcessor:
    """llava-hf's OneVision processor (SigLIP's 0.5 mean and std, bicubic) for 32-pixel tiles."""
    common = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=PILImageResampling.BICUBIC)
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS, **common
        ),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32}, **common),
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=f"anyres_max_{MAX_TILES}",
    )


def _count(ids: torch.Tensor, token_id: int) -> int:
    return int((ids == token_id).sum())


def test_one_image_three_images_and_a_video_equal_llava_onevision_processor(model: LlavaModel) -> None:
    ours = LlavaProcessor.from_model(model)
    theirs = _hf_processor(copy.deepcopy(model.tokenizer))
    image_id, video_id = model.image_token_id, model.video_token_id
    assert video_id is not None and video_id != image_id

    one = _image(100, 120)
    mine = ours.prompt("what is it?", one)
    enc = theirs(images=one, text="<image>\nwhat is it?", return_tensors="pt")
    assert _count(mine["input_ids"], image_id) == _count(enc["input_ids"], image_id) > 16 * 9
    torch.testing.assert_close(mine["pixel_values"], enc["pixel_values"][0], rtol=0, atol=0)

    three = [_image(30, 40, 1), _image(200, 60, 2), _image(50, 50, 3)]
    mine = ours.prompt("<image> or <image> or <image>: which has more circles?", three)
    enc = theirs(images=[three], text="<image> or <image> or <image>", return_tensors="pt")
    assert _count(mine["input_ids"], image_id) == _count(enc["input_ids"], image_id) == 3 * (16 + 1)
    assert mine["image_tiled"] == [False, False, False]
    assert mine["pixel_values"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(mine["pixel_values"], enc["pixel_values"][:, 0], rtol=0, atol=0)
    # The images' markers stay where the text puts them, each block between its words.
    ids = mine["input_ids"].tolist()
    starts = [i for i, t in enumerate(ids) if t == image_id and ids[i - 1] != image_id]
    assert len(starts) == 3 and all(ids[s + 17] != image_id for s in starts)

    frames = _frames(8)
    mine = ours.prompt("which way does the square move?", video=frames)
    enc = theirs(videos=[frames], text="<video>\nwhich way?", return_tensors="pt")
    assert _count(mine["input_ids"], video_id) == _count(enc["input_ids"], video_id) == 8 * 4 + 1
    assert mine["video_frames"] == [8] and mine["pixel_values"] is None
    torch.testing.assert_close(mine["pixel_values_videos"], enc["pixel_values_videos"][0], rtol=0, atol=0)


def _hf_batch(processor: LlavaOnevisionProcessor) -> tuple[dict, list[str]]:
    """transformers' inputs for a one-image, a three-image, a video and a text-only sample."""
    texts = [
        "<image>\nwhat is in the picture?",
        "<image> then <image> then <image>: is the red object in all?",
        "<video>\nwhich way does it move?",
        "no picture, just text",
    ]
    images = [[_image(100, 120)], [_image(30, 40, 1), _image(200, 60, 2), _image(50, 50, 3)]]
    processor.tokenizer.padding_side = "left"
    # The processor takes one text per sample; its images and videos go with the texts in order.
    enc = processor(images=images, videos=[_frames(8)], text=texts, padding=True, return_tensors="pt")
    return enc, texts


def _our_inputs(enc: dict, model: LlavaModel) -> dict:
    """The same batch in our form: real tiles only, per-image tiling flags, frames flattened."""
    grid = model.image_grid
    sizes = [tuple(s) for s in enc["image_sizes"].tolist()]
    tiled = [n == 1 for n in enc["batch_num_images"].tolist() for _ in range(n)]
    tiles = [
        t[: grid.num_tiles(h, w, flag)]
        for t, (h, w), flag in zip(enc["pixel_values"], sizes, tiled, strict=True)
    ]
    videos = enc["pixel_values_videos"]  # [V, F, 3, H, W]
    return {
        "pixel_values": torch.cat(tiles),
        "image_sizes": enc["image_sizes"],
        "image_tiled": torch.tensor(tiled),
        "pixel_values_videos": videos.flatten(0, 1),
        "video_frames": torch.tensor([videos.shape[1]] * videos.shape[0]),
    }


def _compare(ours: LlavaModel, hf: LlavaOnevisionForConditionalGeneration) -> float:
    processor = _hf_processor(copy.deepcopy(ours.tokenizer))
    enc, _ = _hf_batch(processor)
    assert enc["batch_num_images"].tolist() == [1, 3]
    mine = _our_inputs(enc, ours)
    with torch.no_grad():
        theirs = hf(**enc).logits
        logits = ours(enc["input_ids"], attention_mask=enc["attention_mask"], **mine).logits
    real = enc["attention_mask"].bool()
    diff = float((logits - theirs)[real].abs().max())
    assert diff <= 1e-5, diff
    hf_ids = hf.generate(**enc, max_new_tokens=6, do_sample=False)[:, enc["input_ids"].shape[1] :]
    our_ids = ours.generate(
        enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6, eos_token_id=[], **mine
    )
    torch.testing.assert_close(our_ids, hf_ids[:, : our_ids.shape[1]], rtol=0, atol=0)
    return diff


@pytest.mark.parametrize(
    ("llm", "tower"),
    [("qwen2", "siglip_vision_model"), ("llama", "clip_vision_model"), ("mistral", "siglip_vision_model")],
)
def test_export_loads_in_transformers_with_equal_logits_and_ids(tmp_path: Path, llm: str, tower: str) -> None:
    torch.manual_seed(1)
    config = onevision_config(llm, tower)
    if tower == "clip_vision_model":  # CLIP's CLS token goes, as llava-hf's "default" strategy drops it
        config.vision.select_feature = "patch"
    ours = LlavaModel(config).eval()
    path = export_to_hf_llava(ours, tmp_path / "ov")
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
    assert hf.config.model_type == "llava_onevision"
    assert hf.config.vision_aspect_ratio == f"anyres_max_{MAX_TILES}"
    assert hf.config.video_token_index == ours.video_token_id
    _compare(ours, hf)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    assert processor.video_token == "<video>"
    # Its chat template renders a video (and images) as our processor does: the same prompt ids.
    ours_processor = LlavaProcessor.from_model(ours)
    frames, pair = _frames(4), [_image(30, 40, 1), _image(64, 32, 2)]
    for content, visual in (
        ([{"type": "video"}, {"type": "text", "text": "which way?"}], {"video": frames}),
        ([{"type": "image"}, {"type": "image"}, {"type": "text", "text": "same?"}], {"image": pair}),
    ):
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        kwargs = {"videos": [frames]} if "video" in visual else {"images": [pair]}
        theirs = processor(text=text, return_tensors="pt", **kwargs)["input_ids"][0]
        question = content[-1]["text"]
        mine = ours_processor.prompt(question, **visual)["input_ids"]
        assert mine.tolist() == theirs.tolist(), content


def test_folder_written_by_transformers_loads_with_equal_logits(tmp_path: Path, model: LlavaModel) -> None:
    path = export_to_hf_llava(model, tmp_path / "ov")
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():  # a trained newline, so a misplaced one would show
        hf.model.image_newline.normal_()
    delattr(hf.config, "llava_lite_export")  # a folder made elsewhere: nothing of ours in it
    foreign = tmp_path / "foreign"
    hf.save_pretrained(foreign)
    AutoProcessor.from_pretrained(path).save_pretrained(foreign)
    assert "llava_lite_export" not in (foreign / "config.json").read_text()
    loaded = load_pretrained(foreign).eval()
    cfg = loaded.config
    assert (cfg.anyres.max_tiles, cfg.anyres.multi_image, cfg.video_token) == (MAX_TILES, "base", "<video>")
    assert cfg.conv_template == "chatml" and cfg.image_aspect == "anyres"  # Qwen2: OneVision's turns
    _compare(loaded, hf)


def test_collated_batch_equals_the_samples_alone(model: LlavaModel) -> None:
    """Our processor and collator: a mixed batch gives each sample's logits as it gets alone."""
    processor = LlavaProcessor.from_model(model)
    samples = [
        processor.prompt("what is it?", _image(100, 120)),
        processor.prompt(
            "<image> or <image> or <image>?", [_image(30, 40, 1), _image(200, 60, 2), _image(50, 50, 3)]
        ),
        processor.prompt("which way?", video=_frames(5)),
        processor.prompt("the red one and <image>?", [_image(64, 32, 4), _image(33, 90, 5)]),
        processor.prompt("just text"),
    ]
    collator = LlavaCollator(
        processor.pad_token_id,
        padding_side="left",
        image_token_id=processor.image_token_id,
        image_grid=model.image_grid,
        video_token_id=processor.video_token_id,
    )
    batch = collator(samples)
    assert batch["skipped"] == [] and batch["video_frames"].tolist() == [5]
    assert batch["image_tiled"].tolist() == [True, False, False, False, False, False]
    with torch.no_grad():
        logits = model(
            batch["input_ids"], attention_mask=batch["attention_mask"], **{k: batch[k] for k in VISUAL_INPUTS}
        ).logits
        for row, sample in enumerate(samples):
            alone = collator([sample])
            one = model(
                alone["input_ids"],
                attention_mask=alone["attention_mask"],
                **{k: alone[k] for k in VISUAL_INPUTS},
            ).logits[0]
            torch.testing.assert_close(logits[row, -one.shape[0] :], one, rtol=1e-5, atol=1e-5)
