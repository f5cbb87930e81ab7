"""AnyRes in training: packing, stage 2 with the tower unfrozen, and bad images under the policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_anyres import tiny_anyres
from test_train_packing import _loss_and_grads, assert_packed_equals_padded

from llava_lite.data import LlavaCollator, LlavaDataset, LlavaProcessor, PackingCollator
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.training import apply_stage, param_groups

# Image sizes whose token counts differ: 1x1 and 1x100,000 included (transformers reads them too).
SIZES = [(30, 40), (70, 20), (20, 100), (64, 64), (1, 1), (1, 100_000), (100, 31)]


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + height + 3 * width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _samples(processor: LlavaProcessor) -> list[dict[str, Any]]:
    """AnyRes samples of several image sizes, plus two text-only ones."""
    out = []
    for i, (h, w) in enumerate(SIZES):
        messages = [
            ("user", f"<image>\nwhat is in picture {i}?"),
            ("assistant", f"a picture {i} of shapes" * (1 + i % 3)),
        ]
        out.append(processor.process_messages(messages, _image(h, w), f"img{i}"))
    for i in range(2):
        out.append(
            processor.process_messages([("user", "hi"), ("assistant", f"hello {i} there")], None, f"txt{i}")
        )
    return out


def test_packed_anyres_rows_equal_padded_loss_and_gradients() -> None:
    model = tiny_anyres().train()
    apply_stage(model.components(), "finetune", train_vision=True)
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    samples = _samples(processor)
    counts = [int((s["input_ids"] == model.image_token_id).sum()) for s in samples]
    assert len(set(counts)) >= 5  # image-token counts really vary by image
    padded = LlavaCollator(processor.pad_token_id, image_token_id=model.image_token_id)(samples)
    packed = PackingCollator(processor.pad_token_id, 400, model.image_token_id)(samples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    grads = assert_packed_equals_padded(model, padded, packed)
    assert "image_newline.weight" in grads and any(n.startswith("vision_tower.") for n in grads)


def test_a_sample_packed_with_others_has_its_logits_alone() -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    samples = _samples(processor)[:4]
    packed = PackingCollator(processor.pad_token_id, 400, model.image_token_id)(samples)
    with torch.no_grad():
        logits = model(
            packed["input_ids"],
            pixel_values=packed["pixel_values"],
            image_sizes=packed["image_sizes"],
            position_ids=packed["position_ids"],
        ).logits  # [R, T, V]
        for sample in samples:
            row, start = _where(packed, sample)
            length = sample["input_ids"].numel()
            alone = model(
                sample["input_ids"][None],
                pixel_values=sample["pixel_values"],
                image_sizes=sample["image_sizes"],
            ).logits[0]
            torch.testing.assert_close(logits[row, start : start + length], alone, rtol=1e-5, atol=1e-5)


def _where(packed: dict[str, Any], sample: dict[str, Any]) -> tuple[int, int]:
    """(row, start) of ``sample`` in a packed batch, found by its position ids and tokens."""
    ids, length = sample["input_ids"], sample["input_ids"].numel()
    for row in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][row] == 0).nonzero().flatten().tolist()
        for start in starts:
            if torch.equal(packed["input_ids"][row, start : start + length], ids):
                return row, start
    raise AssertionError(f"sample {sample['id']} not found in the packed batch")


def test_stage_two_trains_the_tower_at_its_own_learning_rate() -> None:
    model = tiny_anyres().train()
    trained = apply_stage(model.components(), "finetune", train_vision=True)
    assert trained == {"projector", "llm", "vision_tower"}
    groups = param_groups(model.components(), 2e-5, 0.0, {"vision_tower": 2e-6})
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["vision_tower"] == lrs["vision_tower/no_decay"] == 2e-6
    assert lrs["projector"] == lrs["llm"] == 2e-5
    newline = model.image_newline.weight
    assert any(p is newline for g in groups if g["name"] == "projector/no_decay" for p in g["params"])
    newline_before = newline.detach().clone()
    optimizer = torch.optim.AdamW(groups)
    before = {n: p.detach().clone() for n, p in model.vision_tower.named_parameters()}
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    batch = LlavaCollator(processor.pad_token_id, image_token_id=model.image_token_id)(
        _samples(processor)[:3]
    )
    _loss_and_grads(model, batch)
    optimizer.step()
    changed = [n for n, p in model.vision_tower.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) >= len(before) // 2
    assert not torch.equal(newline, newline_before)


def _records(tmp_path: Path) -> Path:
    """Records with good images of several sizes, a corrupt file and an absurd 1x100,000 image."""
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"wide.png": (30, 90), "tall.png": (90, 30), "dot.png": (1, 1), "thin.png": (1, 100_000)}
    for name, (h, w) in sizes.items():
        _image(h, w).save(images / name)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [
        {"id": name.split(".")[0], "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Shapes."}]}
        for name in [*sizes, "corrupt.png"]
    ]  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_bad_images_are_counted_under_skip_and_named_under_raise(tmp_path) -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    path = _records(tmp_path)
    dataset = LlavaDataset(str(path), processor, image_root=str(tmp_path / "images"), on_bad_sample="skip")
    items = [dataset[i] for i in range(len(dataset))]
    batch = LlavaCollator(
        processor.pad_token_id, image_token_id=model.image_token_id, image_grid=model.image_grid
    )(items)
    assert batch["ids"] == ["wide", "tall", "dot", "thin"]
    assert [(r.reason, r.record_id) for r in batch["skipped"]] == [("unreadable_image", "corrupt")]
    assert batch["image_sizes"].tolist() == [[30, 90], [90, 30], [1, 1], [1, 100_000]]
    with torch.no_grad():  # every kept image, the degenerate ones included, fills its slots exactly
        model(batch["input_ids"], pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"])
    strict = LlavaDataset(str(path), processor, image_root=str(tmp_path / "images"), on_bad_sample="raise")
    with pytest.raises(BadSampleError, match=r"unreadable_image: record 'corrupt' in .*data.json"):
        strict[4]
    # Length grouping counts each image's own tokens (the text is the same in every record);
    # the unreadable file counts as the largest image.
    lengths, _ = dataset.modality_lengths()
    sizes = [(30, 90), (90, 30), (1, 1), (1, 100_000)]
    tokens = [model.image_grid.num_tokens(h, w) for h, w in sizes] + [model.image_grid.max_tokens]
    assert len(set(tokens)) == 5
    assert len({length - n for length, n in zip(lengths, tokens, strict=True)}) == 1


def test_a_sample_whose_slots_disagree_with_its_image_is_a_bad_sample(tmp_path) -> None:
    model = tiny_anyres()
    processor = LlavaProcessor.from_model(model, model_max_length=400)
    good = _samples(processor)[0]
    bad = dict(good, id="bad", source="mine.jsonl", image_sizes=[(20, 100)])  # 4 tiles' worth, 3 given
    collate = LlavaCollator(
        processor.pad_token_id, image_token_id=model.image_token_id, image_grid=model.image_grid
    )
    batch = collate([good, bad])
    assert batch["ids"] == [good["id"]]
    (report,) = batch["skipped"]
    assert (report.reason, report.record_id, report.source) == ("image_token_mismatch", "bad", "mine.jsonl")
    strict = LlavaCollator(
        processor.pad_token_id,
        image_token_id=model.image_token_id,
        image_grid=model.image_grid,
        on_bad_sample="raise",
    )
    with pytest.raises(BadSampleError, match=r"image_token_mismatch: record 'bad' in mine.jsonl: .* slots"):
        strict([good, bad])
