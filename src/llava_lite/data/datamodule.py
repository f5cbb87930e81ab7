"""``LlavaDataModule``: datasets, splits, loaders, bad-sample counts and resume state from config.

The model is built before the data can be tokenised, so the processor arrives late:
``train()`` builds the model, then ``datamodule.attach_processor(LlavaProcessor.from_model(model))``.

Every batch the Trainer consumes passes :meth:`on_before_batch_transfer` (in the main
process, after DataLoader workers), which takes out the skip reports and stream positions
and counts them / advances the training position (``llava_lite.data.resume.DataPosition``); the batch that reaches the LightningModule holds only
``input_ids``, ``attention_mask`` (padded) or ``position_ids`` (packed), ``labels``,
``pixel_values``, ``ids``, ``trained_tokens`` and ``step_trained_tokens`` (the trained tokens of
the batch's whole optimiser step). Outside a Trainer, call :meth:`observe_batch` on each batch yourself.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from llava_lite.data.bad_samples import BadSampleCounter, SkipReport, check_policy
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.dataset import LlavaDataset, LlavaStreamingDataset
from llava_lite.data.packing import PackingCollator, PackingConfig
from llava_lite.data.preference import PreferenceCollator, PreferenceDataset, PreferenceStreamingDataset
from llava_lite.data.processor import LlavaProcessor
from llava_lite.data.resume import DataPosition, ResumableLoader, ResumableSampler
from llava_lite.data.sampler import ModalityLengthGroupedSampler
from llava_lite.data.sources import read_records

log = logging.getLogger(__name__)


class LlavaDataModule(L.LightningDataModule):
    """Train/val data for one training stage.

    ``train_files``/``val_files``: JSON, JSONL or WebDataset ``.tar`` files, globs or fsspec
    URLs. Without ``val_files``, ``val_fraction`` of the training records is held out
    (a seeded permutation for map-style data, a per-record hash when streaming).
    ``shard_by`` ("record" | "file") is how streaming data is divided among ranks and workers.
    ``packing`` (``{enabled, max_tokens_per_row}``) packs each training batch's samples into
    rows (``llava_lite.data.packing``); the processor's length limit becomes the row budget
    when that is smaller, so over-long samples follow the processor's policy there.
    ``preference`` reads preference pairs (``llava_lite.data.preference``) instead of
    conversations: each batch holds its pairs' chosen sequences, then their rejected ones.
    """

    def __init__(
        self,
        train_files: str | Sequence[str],
        val_files: str | Sequence[str] | None = None,
        image_root: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        streaming: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        group_by_modality_length: bool = False,
        on_bad_sample: str = "skip",
        val_fraction: float = 0.0,
        seed: int = 0,
        processor: LlavaProcessor | None = None,
        shard_by: str = "record",
        packing: PackingConfig | dict[str, Any] | None = None,
        preference: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if group_by_modality_length and streaming:
            raise ValueError("group_by_modality_length needs map-style data (streaming=False)")
        self.train_files = _as_list(train_files)
        self.val_files = _as_list(val_files) if val_files else None
        self.image_root = image_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.streaming = streaming
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.group_by_modality_length = group_by_modality_length
        self.on_bad_sample = check_policy(on_bad_sample)
        self.val_fraction = val_fraction
        self.seed = seed
        self.processor = processor
        self.shard_by = shard_by
        self.packing = PackingConfig.from_value(packing)
        self.preference = preference
        self.train_dataset: LlavaDataset | LlavaStreamingDataset | None = None
        self.val_dataset: LlavaDataset | LlavaStreamingDataset | None = None
        self.counters = {"train": BadSampleCounter(), "val": BadSampleCounter()}
        self.truncations = {"train": BadSampleCounter(), "val": BadSampleCounter()}  # kept, but cut
        self.position = DataPosition()  # where training stands in train_dataset

    def attach_processor(self, processor: LlavaProcessor) -> None:
        if self.packing.enabled:
            self.packing.check_budget(processor.image_grid.max_tokens)
            if self.packing.max_tokens_per_row < processor.model_max_length:
                log.info(
                    "packing: samples are limited to data.packing.max_tokens_per_row=%d (model_max_length %d)",
                    self.packing.max_tokens_per_row,
                    processor.model_max_length,
                )
                processor = copy.copy(processor)
                processor.model_max_length = self.packing.max_tokens_per_row
        self.processor = processor
        for ds in (self.train_dataset, self.val_dataset):
            if ds is not None:
                ds.processor = processor

    # ---- datasets ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if self.streaming:
            self._setup_streaming()
        else:
            self._setup_map()

    def _setup_map(self) -> None:
        train = list(read_records(self.train_files))
        if self.val_files:
            val = list(read_records(self.val_files))
        elif self.val_fraction > 0:
            order = list(range(len(train)))
            random.Random(self.seed).shuffle(order)
            held = set(order[: round(len(train) * self.val_fraction)])
            val = [r for i, r in enumerate(train) if i in held]
            train = [r for i, r in enumerate(train) if i not in held]
        else:
            val = []
        kw = {"processor": self.processor, "image_root": self.image_root, "on_bad_sample": self.on_bad_sample}
        dataset = PreferenceDataset if self.preference else LlavaDataset
        self.train_dataset = dataset(train, **kw)
        self.val_dataset = dataset(val, **kw) if val else None
        for split, ds in (("train", self.train_dataset), ("val", self.val_dataset)):
            for report in ds.counter.reports() if ds is not None else []:
                self.counters[split].add(report, quiet=True)  # the dataset has logged it

    def _setup_streaming(self) -> None:
        rank, world = self._rank_world()
        kw = {
            "processor": self.processor,
            "image_root": self.image_root,
            "on_bad_sample": self.on_bad_sample,
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
            "rank": rank,
            "world_size": world,
            "shard_by": self.shard_by,
        }
        held_out = ("train", self.val_fraction) if self.val_fraction and not self.val_files else None
        stream = PreferenceStreamingDataset if self.preference else LlavaStreamingDataset
        self.train_dataset = stream(self.train_files, shuffle=self.shuffle, split=held_out, **kw)
        self.position.follow_stream(self.train_dataset.position)
        if self.val_files:
            self.val_dataset = stream(self.val_files, shuffle=False, **kw)
        elif held_out:
            self.val_dataset = stream(self.train_files, shuffle=False, split=("val", self.val_fraction), **kw)

    def _rank_world(self) -> tuple[int | None, int | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None

    # ---- loaders ----------------------------------------------------------------------
    def collator(self, padding_side: str = "right") -> LlavaCollator | PreferenceCollator:
        processor = self._processor()
        return self._for_pairs(
            LlavaCollator(
                pad_token_id=processor.pad_token_id,
                model_max_length=processor.model_max_length,
                padding_side=padding_side,
                image_token_id=processor.image_token_id,
                image_grid=processor.image_grid,
                on_bad_sample=self.on_bad_sample,
                video_token_id=processor.video_token_id,
            )
        )

    def _for_pairs(self, collator: LlavaCollator) -> LlavaCollator | PreferenceCollator:
        return PreferenceCollator(collator) if self.preference else collator

    def train_collator(self) -> LlavaCollator | PreferenceCollator:
        """Padded batches, or packed rows when ``packing.enabled``."""
        if not self.packing.enabled:
            return self.collator()
        processor = self._processor()
        return self._for_pairs(
            PackingCollator(
                processor.pad_token_id,
                self.packing.max_tokens_per_row,
                processor.image_token_id,
                one_row=self.packing.one_row,
                image_grid=processor.image_grid,
                on_bad_sample=self.on_bad_sample,
                video_token_id=processor.video_token_id,
            )
        )

    def train_dataloader(self) -> DataLoader:
        self._processor()
        if self.train_dataset is None:
            self.setup("fit")
        ds = self.train_dataset
        common = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "collate_fn": self.train_collator(),
        }
        if self.num_workers:
            common["persistent_workers"] = False
        if isinstance(ds, LlavaStreamingDataset):
            loader = ResumableLoader(ds, **common)
        else:
            assert ds is not None
            loader = ResumableLoader(ds, sampler=self._sampler(ds), **common)
        trainer = getattr(self, "trainer", None)
        loader.accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return loader

    def _sampler(self, ds: LlavaDataset) -> ResumableSampler:
        """One sampler for the whole run (its position must survive ``train_dataloader`` reloads)."""
        if self.train_sampler is None:
            rank, world = self._rank_world()
            base = None
            if self.group_by_modality_length:
                lengths, has_image = ds.modality_lengths()
                base = ModalityLengthGroupedSampler(
                    lengths, has_image, self.batch_size, world_size=world or 1, seed=self.seed
                )
            sampler = ResumableSampler(
                len(ds),
                num_replicas=world or 1,
                rank=rank or 0,
                shuffle=self.shuffle,
                seed=self.seed,
                base=base,
            )
            self.position.follow_sampler(sampler)
        assert self.train_sampler is not None
        return self.train_sampler

    @property
    def train_sampler(self) -> ResumableSampler | None:
        """The map-style training sampler, once ``train_dataloader`` has made it."""
        return self.position.sampler

    def val_dataloader(self) -> DataLoader | list:
        self._processor()
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return DataLoader(
            self.val_dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
        )

    def _processor(self) -> LlavaProcessor:
        if self.processor is None:
            raise RuntimeError(
                "LlavaDataModule has no processor: call attach_processor(LlavaProcessor.from_model(model)) first"
            )
        return self.processor

    # ---- batches, counts, state -------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        split = "train" if trainer is None or trainer.training else "val"
        return self.observe_batch(batch, split)

    def observe_batch(self, batch: dict[str, Any], split: str = "train") -> dict[str, Any]:
        """Count the batch's skip reports and record its stream positions; returns the model inputs."""
        skipped = batch.pop("skipped", [])
        for report in skipped:
            self.counters[split].add(report)
        for report in batch.pop("truncated", []):
            self.truncations[split].add(report, quiet=True)  # the processor has logged it
        positions = batch.pop("stream_positions", [])
        if split == "train":
            # map-style: every index yields one sample or one skip report
            self.position.advance(positions, len(batch.get("ids", [])) + len(skipped))
        return batch

    def truncated_count(self, split: str = "train") -> int:
        """Distinct records cut to ``model_max_length`` so far (``data.overlong=truncate``)."""
        return self.truncations[split].total()

    def bad_sample_counts(self, split: str = "train") -> dict[str, int]:
        """Distinct bad records by reason seen so far (file-level problems included)."""
        return self.counters[split].counts()

    def state_dict(self) -> dict[str, Any]:
        bad = {k: [r.as_dict() for r in c.reports()] for k, c in self.counters.items()}
        return {"bad_samples": bad, **self.position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for split, reports in state_dict.get("bad_samples", {}).items():
            for report in reports:
                self.counters[split].add(SkipReport(**report), quiet=True)
        self.position.load_state_dict(state_dict)


def _as_list(files: str | Sequence[str]) -> list[str]:
    return [str(files)] if isinstance(files, str) else [str(f) for f in files]
