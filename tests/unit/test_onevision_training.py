"""Several images and video in training data: packing, real-format records, WebDataset shards,
and every bad input under the bad-sample policy, in DataLoader workers too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_anyres_training import _where
from test_onevision import _frames, _image, onevision_config
from test_train_packing import assert_packed_equals_padded
from torch.utils.data import DataLoader

from helpers import make_video
from llava_lite.data import LlavaCollator, LlavaDataset, LlavaProcessor, PackingCollator
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.wds_shards import convert_to_wds
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.llava import VISUAL_INPUTS
from llava_lite.training import apply_stage

IMAGES = [(30, 40), (200, 60), (50, 50), (64, 32), (33, 90), (100, 120)]


def _model() -> LlavaModel:
    torch.manual_seed(0)
    return LlavaModel(onevision_config()).eval()


def _samples(processor: LlavaProcessor) -> list[dict[str, Any]]:
    """One-image, three-image, two-image, video (8 and 3 frames) and text-only samples."""
    turn = [("assistant", "the red square, then the blue circle")]
    return [
        processor.process_messages([("user", "<image>\nwhat is it?"), *turn], _image(*IMAGES[5]), "one"),
        processor.process_messages(
            [("user", "<image> or <image> or <image>: which has more circles?"), *turn],
            [_image(*s, seed=i) for i, s in enumerate(IMAGES[:3])],
            "three",
        ),
        processor.process_messages(
            [("user", "is the red object in both <image> and <image>?"), ("assistant", "yes")],
            [_image(*s, seed=7) for s in IMAGES[3:5]],
            "two",
        ),
        processor.process_messages(
            [("user", "<video>\nwhich way?"), ("assistant", "left")], None, "v8", video=_frames(8)
        ),
        processor.process_messages(
            [("user", "<video>\nand now?"), *turn], None, "v3", video=_frames(3, seed=1)
        ),
        processor.process_messages([("user", "hi"), ("assistant", "hello there")], None, "text"),
    ]


def test_packed_rows_of_images_and_videos_equal_padded_loss_and_gradients() -> None:
    model = _model().train()
    apply_stage(model.components(), "finetune", train_vision=True)
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    samples = _samples(processor)
    padded = LlavaCollator(processor.pad_token_id, image_token_id=model.image_token_id)(samples)
    packed = PackingCollator(processor.pad_token_id, 400, model.image_token_id)(samples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["video_frames"].tolist() == [8, 3] or sorted(packed["video_frames"].tolist()) == [3, 8]
    mixed = [
        row
        for row in range(packed["input_ids"].shape[0])
        if (packed["input_ids"][row] == model.video_token_id).any()
        and (packed["input_ids"][row] == model.image_token_id).any()
    ]
    assert mixed, "no packed row holds both images and a video"
    grads = assert_packed_equals_padded(model, padded, packed)
    assert "image_newline.weight" in grads and any(n.startswith("vision_tower.") for n in grads)


def test_a_sample_packed_with_others_has_its_logits_alone() -> None:
    model = _model()
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    samples = _samples(processor)
    packed = PackingCollator(processor.pad_token_id, 400, model.image_token_id)(samples)
    with torch.no_grad():
        logits = model(
            packed["input_ids"], position_ids=packed["position_ids"], **{k: packed[k] for k in VISUAL_INPUTS}
        ).logits  # [R, T, V]
        for sample in samples:
            row, start = _where(packed, sample)
            length = sample["input_ids"].numel()
            alone = LlavaCollator(processor.pad_token_id)([sample])
            one = model(alone["input_ids"], **{k: alone[k] for k in VISUAL_INPUTS}).logits[0]
            torch.testing.assert_close(logits[row, start : start + length], one, rtol=1e-5, atol=1e-5)


def _conv(question: str, answer: str = "A square.") -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _world(tmp_path: Path) -> tuple[Path, Path]:
    """Records in the field's formats (LLaVA-Interleave / OneVision images, LLaVA-Video-178K
    video and a frame folder) and one of each bad input."""
    root = tmp_path / "media"
    root.mkdir()
    for i, (h, w) in enumerate(IMAGES):
        _image(h, w, seed=i).save(root / f"im{i}.png")
    make_video(root / "clip.mp4", 12)
    make_video(root / "short.mp4", 2)
    make_video(root / "empty.avi", 0, codec="mpeg4")
    (root / "junk.mp4").write_bytes(b"\x00\x01 not a video at all" * 20)
    (root / "frames").mkdir()
    for i in range(10):
        _image(24, 24, seed=50 + i).save(root / "frames" / f"frame_{i + 1}.jpg")
    good = [
        {"id": "one", "image": "im5.png", "conversations": _conv("<image>\nWhat is it?")},
        {"id": "pair", "image": ["im0.png", "im1.png"], "conversations": _conv("Is the red object in both <image> and <image>?")},
        {"id": "three", "image": ["im2.png", "im3.png", "im4.png"],
         "conversations": _conv("<image>\n<image>\n<image>\nWhich image has more circles?")},
        {"id": "video", "video": "clip.mp4", "conversations": _conv("<image>\nWhich way does the square move?")},
        {"id": "folder", "video": "frames", "conversations": _conv("<video>\nWhat happens?")},
        {"id": "text", "conversations": _conv("Hello?")},
    ]  # fmt: skip
    bad = [
        {"id": "markers", "image": ["im0.png", "im1.png"], "conversations": _conv("<image> only one marker")},
        {"id": "junk", "video": "junk.mp4", "conversations": _conv("<video>\nWhat?")},
        {"id": "empty", "video": "empty.avi", "conversations": _conv("<video>\nWhat?")},
        {"id": "short", "video": "short.mp4", "conversations": _conv("<video>\nWhat?")},
        {"id": "gone", "video": "gone.mp4", "conversations": _conv("<video>\nWhat?")},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(good + bad))
    return path, root


def _processor(model: LlavaModel) -> LlavaProcessor:
    model.config.video.min_frames = 3  # so the 2-frame clip is too short
    return LlavaProcessor.from_model(model, model_max_length=600)


def test_real_format_records_load_with_their_counts(tmp_path: Path) -> None:
    model = _model()
    processor = _processor(model)
    path, root = _world(tmp_path)
    dataset = LlavaDataset(str(path), processor, image_root=str(root), on_bad_sample="skip")
    assert [r.record_id for r in dataset.records][:6] == ["one", "pair", "three", "video", "folder", "text"]
    assert dataset.counter.total() == 1  # the marker count is wrong before anything is opened
    items = {item["id"]: item for item in (dataset[i] for i in range(6))}
    grid = model.image_grid
    assert items["pair"]["image_tiled"] == [False, False]
    assert int((items["pair"]["input_ids"] == model.image_token_id).sum()) == 2 * (grid.base_tokens + 1)
    assert int((items["three"]["input_ids"] == model.image_token_id).sum()) == 3 * (grid.base_tokens + 1)
    assert items["one"]["image_tiled"] == [True]
    assert int((items["one"]["input_ids"] == model.image_token_id).sum()) == grid.num_tokens(*IMAGES[5])
    assert items["video"]["video_frames"] == [8] and items["folder"]["video_frames"] == [8]
    assert int((items["video"]["input_ids"] == model.video_token_id).sum()) == grid.video_tokens(8)
    assert int((items["video"]["input_ids"] == model.image_token_id).sum()) == 0  # <image> marked the video
    batch = LlavaCollator(
        processor.pad_token_id,
        image_token_id=model.image_token_id,
        image_grid=grid,
        video_token_id=model.video_token_id,
    )(list(items.values()))
    assert batch["skipped"] == [] and batch["video_frames"].tolist() == [8, 8]
    with torch.no_grad():
        model(
            batch["input_ids"], attention_mask=batch["attention_mask"], **{k: batch[k] for k in VISUAL_INPUTS}
        )
    # Length grouping counts every image's and frame's tokens (unreadable videos: the most frames).
    lengths, visual = dataset.modality_lengths()
    assert visual == [True, True, True, True, True, False, True, True, True, True]
    assert lengths[2] > lengths[1] > 2 * grid.base_tokens
    assert lengths[3] >= grid.video_tokens(8)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_inputs_are_counted_under_skip_and_named_under_raise(tmp_path: Path, workers: int) -> None:
    model = _model()
    processor = _processor(model)
    path, root = _world(tmp_path)
    collator = LlavaCollator(
        processor.pad_token_id, image_token_id=model.image_token_id, image_grid=model.image_grid,
        video_token_id=model.video_token_id,
    )  # fmt: skip
    dataset = LlavaDataset(str(path), processor, image_root=str(root), on_bad_sample="skip")
    loader = DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collator)
    seen, skipped = [], {}
    for batch in loader:
        seen += batch["ids"]
        skipped.update({r.record_id: r.reason for r in batch["skipped"]})
    assert sorted(seen) == ["folder", "one", "pair", "text", "three", "video"]
    assert skipped == {
        "junk": "unreadable_video",
        "empty": "short_video",
        "short": "short_video",
        "gone": "missing_video",
    }
    assert [r.reason for r in dataset.counter.reports()] == ["image_token_mismatch"]
    with pytest.raises(BadSampleError, match=r"image_token_mismatch: record 'markers' in .*data.json"):
        LlavaDataset(str(path), processor, image_root=str(root), on_bad_sample="raise")
    strict = LlavaDataset(str(path), processor, image_root=str(root), on_bad_sample="skip")
    strict.on_bad_sample = "raise"
    loader = DataLoader(strict, batch_size=2, num_workers=workers, collate_fn=collator)
    with pytest.raises(BadSampleError, match=r"unreadable_video: record 'junk' in .*data.json: .*junk.mp4"):
        for _ in loader:
            pass


def test_webdataset_shards_hold_several_images_and_a_video(tmp_path: Path) -> None:
    model = _model()
    processor = _processor(model)
    path, root = _world(tmp_path)
    keep = ("one", "pair", "three", "video", "folder", "text")
    records = [r for r in json.loads(path.read_text()) if r["id"] in keep]
    subset = tmp_path / "media.json"
    subset.write_text(json.dumps(records))
    result = convert_to_wds(str(subset), str(tmp_path / "shards"), image_root=str(root))
    # A folder of frames has no one file to store: refused, by name.
    assert result.written == 5 and [(r.record_id, r.reason) for r in result.counter.reports()] == [
        ("folder", "unreadable_video")
    ]
    from_json = LlavaDataset(str(subset), processor, image_root=str(root))
    from_shards = LlavaDataset(result.shards, processor)
    assert len(from_shards) == 5
    shard_lengths, _ = from_shards.modality_lengths()
    json_lengths, _ = from_json.modality_lengths()
    for i, j in zip([0, 1, 2, 3, 5], range(5), strict=True):
        a, b = from_json[i], from_shards[j]
        assert a["id"] == b["id"] and shard_lengths[j] == json_lengths[i]
        assert torch.equal(a["input_ids"], b["input_ids"])
        for key in ("pixel_values", "pixel_values_videos"):
            if a.get(key) is not None:
                assert torch.equal(a[key], b[key]), (a["id"], key)
    assert from_shards[3]["video_frames"] == [8]  # the clip's 12 frames, sampled from the shard's bytes
