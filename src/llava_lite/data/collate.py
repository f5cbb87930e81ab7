"""Batching processed samples: padding, safe truncation, images, and skip reports.

Datasets hand the collator either samples or skip-only items (``{"skipped": [...]}``); the
collator drops the latter and passes every ``SkipReport`` on in ``batch["skipped"]`` so the
main process can count bad samples even when they were found in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llava_lite.config import IGNORE_INDEX
from llava_lite.data.bad_samples import BadSampleError, SkipReport, check_policy
from llava_lite.image_grid import ImageGrid

PADDING_SIDES = ("right", "left")


def trained_tokens(
    labels: torch.Tensor, input_ids: torch.Tensor, slot_ids: int | Sequence[int] | None = None
) -> int:
    """Tokens the next-token loss trains in a ``[B, T]`` batch: shifted labels that are not
    ignored and not image (video) slots (``LlavaModel.loss_terms`` counts the same way)."""
    trained = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    if slot_ids is not None:
        ids = [slot_ids] if isinstance(slot_ids, int) else list(slot_ids)
        trained &= ~torch.isin(input_ids[:, 1:], torch.tensor(ids, dtype=input_ids.dtype))
    return int(trained.sum())


def batch_images(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The images and videos of ``samples`` in order (``LlavaModel.VISUAL_INPUTS``' keys).

    ``pixel_values`` ``[N, 3, H, W]`` (one view each) or ``[N_tiles, 3, H, W]`` (AnyRes tiles,
    image after image); ``image_sizes`` ``[N, 2]`` when the samples carry them (AnyRes), else
    None; ``image_tiled`` ``[N]`` when some image is read as its base view alone (OneVision's
    several images), else None; ``pixel_values_videos`` ``[F, 3, H, W]`` and ``video_frames``
    ``[V]`` for videos, else None.
    """
    with_images = [s for s in samples if s.get("pixel_values") is not None]
    views = [s["pixel_values"] for s in with_images]
    views = [v if v.dim() == 4 else v.unsqueeze(0) for v in views]  # each [n, 3, H, W]
    sizes = [tuple(size) for s in with_images for size in s.get("image_sizes", [])]
    tiled = [
        bool(t) for s in with_images for t in s.get("image_tiled") or [True] * len(s.get("image_sizes", []))
    ]
    videos = [s["pixel_values_videos"] for s in samples if s.get("pixel_values_videos") is not None]
    frames = [int(n) for s in samples if s.get("pixel_values_videos") is not None for n in s["video_frames"]]
    return {
        "pixel_values": torch.cat(views) if views else None,  # [N_tiles, 3, H, W]
        "image_sizes": torch.tensor(sizes, dtype=torch.long) if sizes else None,  # [N, 2] (height, width)
        "image_tiled": torch.tensor(tiled) if not all(tiled) else None,  # [N] bool
        "pixel_values_videos": torch.cat(videos) if videos else None,  # [F, 3, H, W]
        "video_frames": torch.tensor(frames, dtype=torch.long) if frames else None,  # [V]
    }


class LlavaCollator:
    """Pads to the longest sample (right for training, left for generation).

    Truncation to ``model_max_length`` never cuts through an image block: a sample whose
    cut would land before the end of its last image block, or that would keep no trained
    token, is dropped from the batch and reported (``too_long`` / ``no_trained_tokens``).
    ``LlavaProcessor`` already enforces the limit, so this only acts on foreign samples.

    Output: ``input_ids [B, T]``, ``attention_mask [B, T]``, ``labels [B, T]`` and
    ``trained_tokens`` (when samples have labels), ``pixel_values [N, 3, H, W]`` or None (images
    in row order; AnyRes: every image's tiles), ``image_sizes [N, 2]`` or None, ``ids``, ``skipped`` (list of ``SkipReport``), ``truncated`` (a ``SkipReport``
    per kept sample the processor cut), and ``stream_positions`` for streaming datasets.
    """

    def __init__(
        self,
        pad_token_id: int,
        model_max_length: int | None = None,
        padding_side: str = "right",
        image_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        image_grid: ImageGrid | None = None,
        on_bad_sample: str = "skip",
        video_token_id: int | None = None,
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side={padding_side!r}; valid: {list(PADDING_SIDES)}")
        self.image_grid = image_grid
        self.on_bad_sample = check_policy(on_bad_sample)
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
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
            admitted = self.admit(sample)
            if isinstance(admitted, SkipReport):
                skipped.append(admitted)
            else:
                kept.append(admitted)
        return self.assemble(kept, skipped, positions)

    def admit(self, sample: dict[str, Any]) -> dict[str, Any] | SkipReport:
        """The sample as it will be batched (cut to the length limit), or why it cannot be."""
        checked = self._check_images(sample)
        return checked if isinstance(checked, SkipReport) else self._fit(checked)

    def assemble(
        self,
        kept: list[dict[str, Any]],
        skipped: Sequence[SkipReport] = (),
        positions: Sequence[Any] = (),
    ) -> dict[str, Any]:
        """One batch of admitted samples, in their order, with the batch's reports and positions."""
        batch = self._pad(kept)
        batch.setdefault("ids", [str(s.get("id", "")) for s in kept])
        if "labels" in batch:
            batch["trained_tokens"] = trained_tokens(batch["labels"], batch["input_ids"], self._slot_ids)
        batch["skipped"] = list(skipped)
        # Kept but cut (processor overlong="truncate"): one report per sample, for counting.
        batch["truncated"] = [
            SkipReport("truncated", str(s.get("id", "")), str(s.get("source", "")), s["truncated"])
            for s in kept
            if s.get("truncated")
        ]
        if positions:
            batch["stream_positions"] = list(positions)
        return batch

    def _check_images(self, sample: dict[str, Any]) -> dict[str, Any] | SkipReport:
        """With an ``image_grid``, a sample's image (video) slots and views must be what its images
        (video) make (``image_token_mismatch`` otherwise, under ``on_bad_sample``), so the model
        never sees a mismatch; samples from this library's processor always agree."""
        grid, pixels = self.image_grid, sample.get("pixel_values")
        if grid is None or self.image_token_id is None:
            return sample
        sizes = [tuple(size) for size in sample.get("image_sizes", [])]
        tiled = [bool(t) for t in sample.get("image_tiled") or [True] * len(sizes)]
        slots = int((sample["input_ids"] == self.image_token_id).sum())
        if pixels is None:
            tokens, tiles, have = 0, 0, 0
        elif grid.anyres:
            if len(tiled) != len(sizes):
                tiled = []  # flags that do not match the images: no count can pass
            tokens = sum(grid.num_tokens(h, w, t) for (h, w), t in zip(sizes, tiled, strict=False))
            tiles = sum(grid.num_tiles(h, w, t) for (h, w), t in zip(sizes, tiled, strict=False))
            have = int(pixels.shape[0])
        else:
            n = 1 if pixels.dim() == 3 else int(pixels.shape[0])
            tokens, tiles, have = n * grid.base_tokens, n, n
        problem = None
        if slots != tokens or tiles != have:
            problem = (
                f"{slots} image-token slots and {have} image views, but its image(s) of size {sizes} "
                f"make {tokens} tokens from {tiles} views"
            )
        elif self.video_token_id is not None:
            frames = [int(n) for n in sample.get("video_frames") or []]
            video = sample.get("pixel_values_videos")
            video_slots = int((sample["input_ids"] == self.video_token_id).sum())
            expected = sum(grid.video_tokens(n) for n in frames)
            have_frames = 0 if video is None else int(video.shape[0])
            if video_slots != expected or have_frames != sum(frames):
                problem = (
                    f"{video_slots} video-token slots and {have_frames} frames, but its video frame "
                    f"counts {frames} make {expected} tokens"
                )
        if problem is None:
            return sample
        err = BadSampleError(
            "image_token_mismatch", problem, str(sample.get("id", "")), str(sample.get("source", ""))
        )
        if self.on_bad_sample == "raise":
            raise err
        return err.report()

    @property
    def _slot_ids(self) -> list[int]:
        return [i for i in (self.image_token_id, self.video_token_id) if i is not None]

    def _fit(self, sample: dict[str, Any]) -> dict[str, Any] | SkipReport:
        ids = sample["input_ids"]
        limit = self.model_max_length
        if limit is None or ids.numel() <= limit:
            return sample
        where = (str(sample.get("id", "")), str(sample.get("source", "")))
        if self.image_token_id is not None:
            slots = torch.isin(ids, torch.tensor(self._slot_ids)).nonzero()
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
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            **batch_images(samples),
        }
        if has_labels:
            batch["labels"] = labels
        return batch
