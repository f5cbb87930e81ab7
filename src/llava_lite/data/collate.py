"""Batching processed samples: padding, safe truncation, images, and skip reports.

Datasets hand the collator either samples or skip-only items (``{"skipped": [...]}``); the
collator drops the latter and passes every ``SkipReport`` on in ``batch["skipped"]`` so the
main process can count bad samples even when they were found in DataLoader workers.
"""

from __future__ import annotations

from typing import Any

import torch

from llava_lite.config import IGNORE_INDEX
from llava_lite.data.bad_samples import SkipReport

PADDING_SIDES = ("right", "left")


def trained_tokens(labels: torch.Tensor, input_ids: torch.Tensor, image_token_id: int | None = None) -> int:
    """Tokens the next-token loss trains in a ``[B, T]`` batch: shifted labels that are not
    ignored and not image slots (``LlavaModel.loss_terms`` counts the same way)."""
    trained = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    if image_token_id is not None:
        trained &= input_ids[:, 1:] != image_token_id
    return int(trained.sum())


class LlavaCollator:
    """Pads to the longest sample (right for training, left for generation).

    Truncation to ``model_max_length`` never cuts through an image block: a sample whose
    cut would land before the end of its last image block, or that would keep no trained
    token, is dropped from the batch and reported (``too_long`` / ``no_trained_tokens``).
    ``LlavaProcessor`` already enforces the limit, so this only acts on foreign samples.

    Output: ``input_ids [B, T]``, ``attention_mask [B, T]``, ``labels [B, T]`` and
    ``trained_tokens`` (when samples have labels), ``pixel_values [N, 3, H, W]`` or None (images
    in row order), ``ids``, ``skipped`` (list of ``SkipReport``), ``truncated`` (a ``SkipReport``
    per kept sample the processor cut), and ``stream_positions`` for streaming datasets.
    """

    def __init__(
        self,
        pad_token_id: int,
        model_max_length: int | None = None,
        padding_side: str = "right",
        image_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side={padding_side!r}; valid: {list(PADDING_SIDES)}")
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.image_token_id = image_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped: list[SkipReport] = []
        positions: list[Any] = []
        kept: list[dict[str, Any]] = []
        for sample in samples:
            skipped += sample.get("skipped", [])
            if "stream_position" in sample:
                positions.append(sample["stream_position"])
            if "input_ids" not in sample:
                continue
            fitted = self._fit(sample)
            if isinstance(fitted, SkipReport):
                skipped.append(fitted)
            else:
                kept.append(fitted)
        batch = self._pad(kept)
        batch.setdefault("ids", [str(s.get("id", "")) for s in kept])
        if "labels" in batch:
            batch["trained_tokens"] = trained_tokens(batch["labels"], batch["input_ids"], self.image_token_id)
        batch["skipped"] = skipped
        # Kept but cut (processor overlong="truncate"): one report per sample, for counting.
        batch["truncated"] = [
            SkipReport("truncated", str(s.get("id", "")), str(s.get("source", "")), s["truncated"])
            for s in kept
            if s.get("truncated")
        ]
        if positions:
            batch["stream_positions"] = positions
        return batch

    def _fit(self, sample: dict[str, Any]) -> dict[str, Any] | SkipReport:
        ids = sample["input_ids"]
        limit = self.model_max_length
        if limit is None or ids.numel() <= limit:
            return sample
        where = (str(sample.get("id", "")), str(sample.get("source", "")))
        if self.image_token_id is not None:
            slots = (ids == self.image_token_id).nonzero()
            if slots.numel() and int(slots.max()) >= limit:
                return SkipReport(
                    "too_long", *where, f"{ids.numel()} tokens; the cut would split an image block"
                )
        out = dict(sample, input_ids=ids[:limit])
        if sample.get("labels") is not None:
            out["labels"] = sample["labels"][:limit]
            if bool((out["labels"] == IGNORE_INDEX).all()):
                return SkipReport("no_trained_tokens", *where, f"nothing trained in the first {limit} tokens")
        return out

    def _pad(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max((s["input_ids"].numel() for s in samples), default=0)
        if self.pad_to_multiple_of and longest % self.pad_to_multiple_of:
            longest += self.pad_to_multiple_of - longest % self.pad_to_multiple_of
        n = len(samples)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((n, longest), dtype=torch.long)  # [B, T]
        has_labels = any(s.get("labels") is not None for s in samples)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, s in enumerate(samples):
            length = s["input_ids"].numel()
            cols = slice(0, length) if self.padding_side == "right" else slice(longest - length, longest)
            input_ids[row, cols] = s["input_ids"]
            attention_mask[row, cols] = 1
            if s.get("labels") is not None:
                labels[row, cols] = s["labels"]
        images = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(images) if images else None,  # [N, 3, H, W]
        }
        if has_labels:
            batch["labels"] = labels
        return batch
