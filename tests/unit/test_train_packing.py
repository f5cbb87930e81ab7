"""Logits only where the loss is, and exact padding-free packing (issue 13).

Packed rows must give every sample exactly the loss, gradients and logits it has alone:
positions restart, no attention crosses samples, labels and image slots stay its own.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH
from llava_lite.config import LlavaConfig
from llava_lite.data.collate import LlavaCollator, trained_tokens
from llava_lite.data.packing import PackingCollator, PackingConfig, first_fit_rows, pack_rows
from llava_lite.modeling import IGNORE_INDEX, LlavaModel
from llava_lite.modeling.llava import VISUAL_INPUTS
from llava_lite.modeling.llm import check_packed_attention
from llava_lite.training import apply_stage

BUDGET = 48


def _model(attn: str = "sdpa") -> LlavaModel:
    torch.manual_seed(0)
    cfg = LlavaConfig.from_dict(
        {
            "vision": {"arch": TINY_VISION_ARCH},
            "projector": {"type": "mlp2x_gelu"},
            "llm": {"model_type": "llama", "arch": TINY_TEXT_ARCH, "attn_implementation": attn},
        }
    )
    return LlavaModel(cfg).train()  # dropout is 0 in these archs; train mode as in a step


def _samples(model: LlavaModel, kinds: str, seed: int = 0) -> list[dict[str, Any]]:
    """Samples of varied length; ``kinds``: ``image`` / ``text`` / ``mixed``. Prompt tokens are ignored."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n_text in enumerate([9, 14, 5, 20, 7, 11]):
        with_image = kinds == "image" or (kinds == "mixed" and i % 2 == 0)
        ids = torch.randint(5, 100, (n_text,), generator=gen)
        labels = ids.clone()
        labels[: n_text // 3] = IGNORE_INDEX
        pixels = None
        if with_image:
            block = torch.full((model.num_image_tokens,), model.image_token_id)
            ids = torch.cat([ids[:2], block, ids[2:]])
            labels = torch.cat([labels[:2], torch.full_like(block, IGNORE_INDEX), labels[2:]])
            pixels = torch.randn(3, 32, 32, generator=gen)
        out.append({"input_ids": ids, "labels": labels, "pixel_values": pixels, "id": f"s{i}"})
    return out


def _padded(model: LlavaModel, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return LlavaCollator(model.tokenizer.pad_token_id, image_token_id=model.image_token_id)(samples)


def _packed(model: LlavaModel, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return PackingCollator(model.tokenizer.pad_token_id, BUDGET, model.image_token_id)(samples)


def _loss_and_grads(model: LlavaModel, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    terms = model.loss_terms(
        batch["input_ids"],
        batch["labels"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        **{k: batch.get(k) for k in VISUAL_INPUTS},  # images, AnyRes sizes, videos
    )
    assert terms.num_tokens == batch["trained_tokens"]
    loss = terms.loss_sum / terms.num_tokens
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_packed_equals_padded(
    model: LlavaModel, padded: dict[str, Any], packed: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Packed and padded batches of the same samples: equal loss (relative 1e-5) and gradients.

    Relative 1e-5 per parameter, with a floor at 1e-7 of the largest gradient: some are zero by
    construction (a key bias does not change attention) and differ only by rounding (~1e-12).
    Returns the padded batch's gradients, for further checks.
    """
    loss_padded, grads_padded = _loss_and_grads(model, padded)
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=0)
    assert grads_packed.keys() == grads_padded.keys()
    floor = 1e-7 * max(g.abs().max().item() for g in grads_padded.values())
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=floor, msg=name)
    return grads_padded


# ---- logits only where the loss is ----------------------------------------------------------
def test_loss_terms_equal_the_full_forward_loss_and_gradients() -> None:
    model = _model()
    batch = _padded(model, _samples(model, "mixed"))
    ours, our_grads = _loss_and_grads(model, batch)
    model.zero_grad(set_to_none=True)
    full = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], labels=batch["labels"])
    full.loss.backward()
    torch.testing.assert_close(ours, full.loss.detach(), rtol=1e-6, atol=0)
    assert our_grads and set(our_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=1e-5, atol=1e-7, msg=name)


def test_loss_terms_compute_logits_at_trained_positions_only() -> None:
    model = _model().eval()
    batch = _padded(model, _samples(model, "mixed"))
    with torch.no_grad():
        terms = model.loss_terms(
            batch["input_ids"], batch["labels"], batch["pixel_values"], batch["attention_mask"]
        )
        full = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits  # [B, T, V]
    trained = batch["labels"][:, 1:] != IGNORE_INDEX  # [B, T-1]
    assert terms.logits.shape == (int(trained.sum()), full.shape[-1]) < (full.shape[0] * full.shape[1],)
    torch.testing.assert_close(terms.logits, full[:, :-1][trained], rtol=1e-5, atol=1e-5)


# ---- packing --------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    ("stage", "kinds"),
    # stage 1 trains only the projector, which text-only rows never reach
    [
        ("pretrain", "image"),
        ("pretrain", "mixed"),
        ("finetune", "image"),
        ("finetune", "text"),
        ("finetune", "mixed"),
    ],
)
def test_packed_equals_unpacked_loss_and_gradients(attn: str, stage: str, kinds: str) -> None:
    model = _model(attn)
    apply_stage(model.components(), stage)
    samples = _samples(model, kinds)
    packed = _packed(model, samples)
    assert packed["input_ids"].shape[0] < len(samples)  # several samples share a row
    assert "attention_mask" not in packed
    loss_padded, grads_padded = _loss_and_grads(model, _padded(model, samples))
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    assert abs(float(loss_packed - loss_padded)) / float(loss_padded) <= 1e-5
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if kinds == "text":  # no image reaches the projector
        trainable = {n for n in trainable if not n.startswith("projector.")}
    assert set(grads_padded) == set(grads_packed) == trainable
    for name in trainable:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-6, msg=name)


def _segments(packed: dict[str, Any], samples: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """``(row, column, sample)`` of every packed sample, found by its ids in packed order."""
    by_id = {s["id"]: s for s in samples}
    out, row, col = [], 0, 0
    for sample_id in packed["ids"]:
        sample = by_id[sample_id]
        n = sample["input_ids"].numel()
        if not torch.equal(packed["input_ids"][row, col : col + n], sample["input_ids"]):
            row, col = row + 1, 0  # the sample opens the next row
        assert torch.equal(packed["input_ids"][row, col : col + n], sample["input_ids"])
        out.append((row, col, sample))
        col += n
    assert sorted(packed["ids"]) == sorted(by_id)
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_packed_sample_has_its_logits_alone(attn: str) -> None:
    """No cross-sample attention: each sample's logits in its packed row equal its logits alone."""
    model = _model(attn).eval()
    samples = _samples(model, "mixed")
    packed = _packed(model, samples)
    with torch.no_grad():
        logits = model(
            packed["input_ids"], packed["pixel_values"], position_ids=packed["position_ids"]
        ).logits
        for row, col, sample in _segments(packed, samples):
            n = sample["input_ids"].numel()
            pixels = None if sample["pixel_values"] is None else sample["pixel_values"][None]
            alone = model(sample["input_ids"][None], pixels).logits[0]  # [n, V]
            torch.testing.assert_close(logits[row, col : col + n], alone, rtol=1e-4, atol=1e-5)


def test_packed_rows_keep_each_sample_whole_with_its_own_positions_labels_and_images() -> None:
    model = _model()
    samples = _samples(model, "mixed")
    packed = _packed(model, samples)
    assert packed["trained_tokens"] == sum(
        trained_tokens(s["labels"][None], s["input_ids"][None], model.image_token_id) for s in samples
    )
    assert packed["real_tokens"] == sum(s["input_ids"].numel() for s in samples)
    assert packed["input_ids"].shape[1] <= BUDGET
    images = []
    for row, col, sample in _segments(packed, samples):
        n = sample["input_ids"].numel()
        assert torch.equal(packed["position_ids"][row, col : col + n], torch.arange(n))
        assert packed["labels"][row, col] == IGNORE_INDEX  # never predicted from the neighbour
        assert torch.equal(packed["labels"][row, col + 1 : col + n], sample["labels"][1:])
        if sample["pixel_values"] is not None:
            images.append(sample["pixel_values"])
    assert torch.equal(packed["pixel_values"], torch.stack(images))  # row-major sample order


@pytest.mark.parametrize("pack", [first_fit_rows, pack_rows])
def test_rows_respect_the_budget_and_keep_samples_whole(pack) -> None:
    lengths = [30, 5, 17, 40, 8, 23, 12, 1]
    rows = pack(lengths, 48)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 48 for row in rows)
    assert len(rows) == 3  # 136 tokens: as few rows as the lengths allow
    with pytest.raises(ValueError, match="max_tokens_per_row=16"):
        pack([17], 16)


def test_pack_rows_evens_out_the_rows() -> None:
    lengths = [40, 40, 40, 10, 10, 10]  # first fit: 40+40+10+10 | 40+10: padded to 100
    assert max(sum(lengths[i] for i in row) for row in first_fit_rows(lengths, 100)) == 100
    assert max(sum(lengths[i] for i in row) for row in pack_rows(lengths, 100)) == 80


def test_packing_settings_fail_loudly() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['max_tokens'\]"):
        PackingConfig.from_value({"enabled": True, "max_tokens": 10})
    with pytest.raises(ValueError, match="max_tokens_per_row=16 is smaller than one image block"):
        PackingConfig(enabled=True, max_tokens_per_row=16).check_budget(num_image_tokens=16)
    PackingConfig(enabled=True, max_tokens_per_row=17).check_budget(num_image_tokens=16)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_attention_check_passes_on_separating_backends(attn: str) -> None:
    check_packed_attention(_model(attn).llm)


def test_packed_attention_check_rejects_what_cannot_keep_samples_apart(monkeypatch) -> None:
    llm = _model().llm
    monkeypatch.setattr(llm.config, "_attn_implementation", "paged|sdpa")
    with pytest.raises(ValueError, match=r"attn_implementation='paged\|sdpa'.*valid"):
        check_packed_attention(llm)
    monkeypatch.undo()
    # An LLM that ignores the packed positions (as if it had no packed-sequence support) leaks.
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ValueError, match="does not keep packed samples apart"):
        check_packed_attention(llm)


def test_one_row_packing_lays_the_batch_end_to_end_with_the_same_loss() -> None:
    model = _model()
    samples = _samples(model, "mixed")
    one = PackingCollator(model.tokenizer.pad_token_id, BUDGET, model.image_token_id, one_row=True)(samples)
    assert one["input_ids"].shape == (1, sum(s["input_ids"].numel() for s in samples))  # no padding
    loss_padded, grads_padded = _loss_and_grads(model, _padded(model, samples))
    loss_one, grads_one = _loss_and_grads(model, one)
    assert abs(float(loss_one - loss_padded)) / float(loss_padded) <= 1e-5
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_one[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_attention_check_catches_separation_that_holds_only_for_one_row(monkeypatch) -> None:
    """Like flash-attention's varlen path: packed rows kept apart only in a batch of one row."""
    import transformers.masking_utils as masking

    llm = _model().llm
    original = masking.find_packed_sequence_indices
    monkeypatch.setattr(
        masking, "find_packed_sequence_indices", lambda pos: original(pos) if pos.shape[0] == 1 else None
    )
    check_packed_attention(llm, rows_per_batch=1)
    with pytest.raises(ValueError, match=r"batches of 2 row\(s\).*data.packing.one_row=true"):
        check_packed_attention(llm, rows_per_batch=2)
