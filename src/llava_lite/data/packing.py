"""Exact padding-free packing: several whole samples per training row, each exactly itself.

With ``data.packing.enabled=true`` each loader batch (``data.batch_size`` samples from the
random or length-grouped stream) is laid into rows of at most ``max_tokens_per_row`` tokens:
as few rows as first fit (decreasing length) needs, balanced so the rows, padded to the
longest, waste little (:func:`pack_rows`). Inside a row every sample keeps:

- its own positions: ``position_ids`` restart at 0 at each sample, and the batch carries no
  ``attention_mask``, which is what makes transformers build a block-diagonal causal mask
  (``masking_utils.find_packed_sequence_indices``); ``check_packed_attention`` proves the LLM
  honours it before training;
- its own labels: the first label of each sample is ignored, since it would be predicted
  from the previous sample's last token;
- its own image slots: images are stacked in row-major sample order, the order in which
  ``LlavaModel.embed_inputs`` fills slots.

Samples are never split; the processor's over-long policy applies at the row budget. A batch
then means ``batch_size`` samples in a varying number of rows, so training logs both samples
and trained tokens per optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava_lite.config import IGNORE_INDEX
from llava_lite.data.collate import LlavaCollator, batch_images
from llava_lite.image_grid import ImageGrid


@dataclass(frozen=True)
class PackingConfig:
    """``data.packing``: ``enabled``, the token budget of one row, and ``one_row``: the rows of a
    batch laid end to end in a single row without padding, which flash-attention's varlen path
    needs (it keeps samples apart only in a batch of one row); eager / SDPA / flex use several."""

    enabled: bool = False
    max_tokens_per_row: int = 2048
    one_row: bool = False

    @classmethod
    def from_value(cls, value: PackingConfig | Mapping[str, Any] | None) -> PackingConfig:
        if value is None:
            return cls()
        if isinstance(value, PackingConfig):
            return value
        valid = ["enabled", "max_tokens_per_row", "one_row"]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"data.packing has unknown keys {unknown}; valid: {valid}")
        cfg = cls(
            bool(value.get("enabled", False)),
            int(value.get("max_tokens_per_row", 2048)),
            bool(value.get("one_row", False)),
        )
        if cfg.max_tokens_per_row < 1:
            raise ValueError(f"data.packing.max_tokens_per_row={cfg.max_tokens_per_row}; must be >= 1")
        return cfg

    def check_budget(self, num_image_tokens: int) -> None:
        """A row must hold the largest image block (``ImageGrid.max_tokens``) and a trained token after it."""
        if self.enabled and self.max_tokens_per_row <= num_image_tokens:
            raise ValueError(
                f"data.packing.max_tokens_per_row={self.max_tokens_per_row} is smaller than one image block "
                f"({num_image_tokens} image tokens) plus a token to train; raise it above {num_image_tokens}"
            )


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Sample indices per row: as few rows as first fit finds, then as even as they can be.

    First fit in decreasing length gives the row count; the same samples are then dealt,
    longest first, to the currently shortest of that many rows. Rows are padded to the longest
    row, so even rows waste less (no nearly empty last row) and attend over shorter rows;
    when dealing would overflow a row, the first-fit rows are kept.
    """
    first_fit = first_fit_rows(lengths, budget)
    rows: list[list[int]] = [[] for _ in first_fit]
    totals = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(len(rows)), key=totals.__getitem__)
        rows[r].append(i)
        totals[r] += lengths[i]
    return rows if max(totals, default=0) <= budget else first_fit


def first_fit_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Sample indices per row: first fit in decreasing length, each row's total <= ``budget``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > budget:
            raise ValueError(f"sample {i} has {lengths[i]} tokens > data.packing.max_tokens_per_row={budget}")
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(budget)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


class PackingCollator(LlavaCollator):
    """A :class:`LlavaCollator` whose batches are packed rows (see the module docstring).

        Output: ``input_ids [R, T]``, ``labels [R, T]``, ``position_ids [R, T]`` (per sample, from 0),
        ``sequence_ids [R, T]`` (the index of each token's sample in the collated list, -1 for padding),
        no ``attention_mask``, images and videos in row-major sample order (as
    :func:`~llava_lite.data.collate.batch_images`), ``ids`` in
        the same order, ``real_tokens`` (non-padding), ``trained_tokens``, ``skipped`` and (streaming) ``stream_positions``.
        Each row's tail padding forms its own segment, which no sample can attend to. ``one_row``
        lays the rows end to end in one row of all the batch's tokens, without padding.
    """

    def __init__(
        self,
        pad_token_id: int,
        max_tokens_per_row: int,
        image_token_id: int | None = None,
        one_row: bool = False,
        image_grid: ImageGrid | None = None,
        on_bad_sample: str = "skip",
        video_token_id: int | None = None,
    ) -> None:
        super().__init__(
            pad_token_id,
            model_max_length=max_tokens_per_row,
            image_token_id=image_token_id,
            image_grid=image_grid,
            on_bad_sample=on_bad_sample,
            video_token_id=video_token_id,
        )
        self.max_tokens_per_row = max_tokens_per_row
        self.one_row = one_row

    def _pad(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = pack_rows([s["input_ids"].numel() for s in samples], self.max_tokens_per_row)
        if self.one_row:  # [1, all tokens]: no padding at all
            rows = [[i for row in rows for i in row]]
        longest = max((sum(samples[i]["input_ids"].numel() for i in row) for row in rows), default=0)
        n = len(rows)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)  # [R, T]
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)  # [R, T]
        position_ids = torch.zeros((n, longest), dtype=torch.long)  # [R, T]
        sequence_ids = torch.full((n, longest), -1, dtype=torch.long)  # [R, T]: index into samples
        order: list[dict[str, Any]] = []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                s = samples[i]
                length = s["input_ids"].numel()
                cols = slice(start, start + length)
                input_ids[r, cols] = s["input_ids"]
                if s.get("labels") is not None:
                    labels[r, cols] = s["labels"]
                    labels[r, start] = IGNORE_INDEX  # would be predicted from the previous sample
                position_ids[r, cols] = torch.arange(length)
                sequence_ids[r, cols] = i
                start += length
                order.append(s)
            position_ids[r, start:] = torch.arange(longest - start)  # padding: a segment of its own
        return {
            "ids": [str(s.get("id", "")) for s in order],
            "real_tokens": sum(s["input_ids"].numel() for s in order),
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "sequence_ids": sequence_ids,
            **batch_images(order),  # pixel_values [N(_tiles), 3, H, W], image_sizes [N, 2], videos, or None
        }
