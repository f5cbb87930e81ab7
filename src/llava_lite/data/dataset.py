"""Map-style and streaming datasets of LLaVA samples.

Both turn a :class:`RawRecord` into a processed sample with :func:`build_sample`, and apply
the bad-sample policy the same way: ``"raise"`` propagates a ``BadSampleError`` naming
record and file; ``"skip"`` produces a ``SkipReport`` that rides along with the batches.

Streaming: the records of all files form one global sequence (file order shuffled per
epoch with the seed). Reader slot ``s`` of ``S = world_size x num_workers`` takes global
indices ``g % S == s``, so every record is seen exactly once per epoch across ranks and
workers, however many files there are; records of other slots are passed over unparsed,
but every slot still reads every file. With many more files than slots, ``shard_by="file"``
gives slot ``s`` files ``s, s + S, ...`` instead (each file read once; per-rank sample
counts then differ by up to a file, so bound DDP runs by ``max_steps``).

Each slot shuffles its records through a seeded buffer; its output order is a pure function
of (seed, epoch, slot), which is what makes resuming exact: the state
(:class:`~llava_lite.data.resume.StreamPosition`) is "slot s has delivered m records", and a
resumed slot replays its order without loading anything and continues at m + 1.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import random
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from llava_lite.config import IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleCounter, BadSampleError, SkipReport, check_policy
from llava_lite.data.images import image_size
from llava_lite.data.processor import LlavaProcessor
from llava_lite.data.resume import StreamPosition
from llava_lite.data.sampler import approx_length
from llava_lite.data.schema import RawRecord, check_record
from llava_lite.data.sources import expand_files, iter_file, read_records
from llava_lite.data.video import video_frame_count

SHARD_BY = ("record", "file")

__all__ = ["LlavaDataset", "LlavaStreamingDataset", "build_sample", "read_records"]


def build_sample(raw: RawRecord, processor: LlavaProcessor, image_root: str | None = None) -> dict[str, Any]:
    """Check (once: a checked record keeps its messages), load the image, tokenise; raises a
    ``BadSampleError`` that names record and file."""
    messages = check_record(raw, processor.image_token, processor.video_token)
    try:
        images: list[str] | list[bytes] = raw.image_bytes if raw.image_bytes is not None else raw.image_paths
        video = raw.video_bytes if raw.video_bytes is not None else raw.video_path if raw.has_video else None
        sample = processor.process_messages(messages, images, raw.record_id, image_root, video=video)
    except BadSampleError as err:
        raise err.located(raw.record_id, raw.source) from None
    sample["id"] = raw.record_id
    sample["source"] = raw.source
    return sample


def _require(processor: LlavaProcessor | None) -> LlavaProcessor:
    if processor is None:
        raise RuntimeError(
            "no processor attached: call attach_processor(LlavaProcessor.from_model(model)) first"
        )
    return processor


class LlavaDataset(Dataset):
    """All records in memory (random access, small data, validation, length grouping).

    Structural problems (malformed JSON, bad conversations) are found when reading and
    counted in ``counter``; image and tokenisation problems are found in ``__getitem__``,
    which then returns a skip-only item ``{"skipped": [report]}`` for the collator.
    """

    # How a record is checked and becomes a sample; preference data swaps in its own pair.
    check_raw = staticmethod(check_record)
    build = staticmethod(build_sample)

    def __init__(
        self,
        records: str | Sequence[str] | Sequence[RawRecord],
        processor: LlavaProcessor | None = None,
        image_root: str | None = None,
        on_bad_sample: str = "skip",
        image_token: str = IMAGE_TOKEN,
    ) -> None:
        self.processor = processor
        self.image_root = image_root
        self.on_bad_sample = check_policy(on_bad_sample)
        self.counter = BadSampleCounter()
        raws: Sequence[RawRecord]
        if isinstance(records, str) or (records and not isinstance(records[0], RawRecord)):
            raws = list(read_records(records))  # type: ignore[arg-type]
        else:
            raws = records  # type: ignore[assignment]
        token = processor.image_token if processor else image_token
        video_token = processor.video_token if processor else None
        self.records: list[RawRecord] = []
        for raw in raws:
            try:
                self.check_raw(raw, token, video_token)
            except BadSampleError as err:
                if self.on_bad_sample == "raise":
                    raise
                self.counter.add(err.report())
                continue
            self.records.append(raw)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.build(self.records[index], _require(self.processor), self.image_root)
        except BadSampleError as err:
            if err.raises(self.on_bad_sample):
                raise
            return {"skipped": [err.report()]}

    def modality_lengths(self) -> tuple[list[int], list[bool]]:
        """Approximate lengths (words, + every image's and video's tokens) and whether each record
        has an image or video.

        Under AnyRes an image's tokens depend on its size, read from the file's header (an
        unreadable one counts as the largest image); a video's depend on its frame count, read
        from the container's header (unknown: the most frames). The sample reports a bad file
        when loaded.
        """
        processor = self.processor
        lengths, visual = [], []
        for raw in self.records:
            assert raw.messages is not None  # checked in __init__
            length = approx_length(raw.messages)
            if processor is not None:
                length += self._visual_tokens(raw, processor)
            lengths.append(length)
            visual.append(raw.has_image or raw.has_video)
        return lengths, visual

    def _visual_tokens(self, raw: RawRecord, processor: LlavaProcessor) -> int:
        images: list[str] | list[bytes] = raw.image_bytes if raw.image_bytes is not None else raw.image_paths
        tokens = 0
        if images and not processor.anyres:
            tokens = processor.num_image_tokens * len(images)
        elif images:
            tiled = processor.tiles_each(len(images))
            for image in images:
                size = image_size(image, self.image_root)
                tokens += (
                    processor.image_grid.max_tokens if size is None else processor.image_tokens(size, tiled)
                )
        if raw.has_video and processor.video_token is not None:
            sampling = processor.video_sampling
            video = raw.video_bytes if raw.video_bytes is not None else raw.video_path
            frames = video_frame_count(video, sampling, self.image_root)
            tokens += processor.video_tokens(sampling.num_frames if frames is None else frames)
        return tokens


def _unit_hash(seed: int, key: str) -> float:
    """A deterministic number in [0, 1) per record, for splitting streams without reading them twice."""
    return zlib.crc32(f"{seed}:{key}".encode()) / 2**32


class LlavaStreamingDataset(IterableDataset):
    """Streams JSON / JSONL / WebDataset shards (local or fsspec) with exact, resumable sharding.

    ``rank``/``world_size`` default to ``torch.distributed`` when initialised, else the
    ``RANK``/``WORLD_SIZE`` environment variables. ``split=("train" | "val", fraction)``
    holds out a deterministic fraction of records. Samples carry ``stream_position``;
    the main process reports delivered positions with :meth:`observe` (``LlavaDataModule``
    does this for every batch the Trainer consumes) and :meth:`state_dict` captures them.
    """

    build = staticmethod(build_sample)  # as in LlavaDataset

    def __init__(
        self,
        files: str | Sequence[str],
        processor: LlavaProcessor | None = None,
        image_root: str | None = None,
        on_bad_sample: str = "skip",
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        split: tuple[str, float] | None = None,
        shard_by: str = "record",
    ) -> None:
        if shard_by not in SHARD_BY:
            raise ValueError(f"shard_by={shard_by!r}; valid: {list(SHARD_BY)}")
        self.shard_by = shard_by
        self.files = expand_files(files)
        if not self.files:
            raise FileNotFoundError(f"no data files in {files!r}")
        self.processor = processor
        self.image_root = image_root
        self.on_bad_sample = check_policy(on_bad_sample)
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        if split is not None and (split[0] not in ("train", "val") or not 0.0 <= split[1] < 1.0):
            raise ValueError(f"split must be ('train' | 'val', fraction in [0, 1)), got {split!r}")
        self.split = split
        self.position = StreamPosition(seed)

    # ---- epochs and resuming (the position itself: ``llava_lite.data.resume``) -------------
    @property
    def epoch(self) -> int:
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (new file order and buffer shuffle); forgets positions of the old one."""
        self.position.set_epoch(epoch)

    def observe(self, positions: Sequence[tuple[int, int, int, int]]) -> None:
        """Record ``(epoch, slot, num_slots, position)`` of samples the consumer has taken."""
        self.position.observe(positions)

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)

    # ---- sharding -------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def _slot(self) -> tuple[int, int]:
        """(this reader's slot, slots in all): rank-major, workers turned as a resumed pass needs."""
        rank, world = self._rank_world()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        role = (worker + self.position.worker_offset(world * workers)) % workers
        return rank * workers + role, world * workers

    def _files_for_epoch(self) -> list[str]:
        files = list(self.files)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(files)
        return files

    def _slot_records(self, slot: int, num_slots: int) -> Iterator[RawRecord]:
        """This slot's records, in its (seeded) shuffled order."""
        own = self._slot_stream(slot, num_slots)
        if not self.shuffle:
            yield from own
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
        buffer: list[RawRecord] = []
        for raw in own:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            j = rng.randrange(len(buffer))
            buffer[j], raw = raw, buffer[j]
            yield raw
        rng.shuffle(buffer)
        yield from buffer

    def _slot_stream(self, slot: int, num_slots: int) -> Iterator[RawRecord]:
        files = self._files_for_epoch()
        if self.shard_by == "file":
            for path in files[slot::num_slots]:
                yield from (raw for raw in iter_file(path) if self._in_split(raw))
            return
        counter = itertools.count()

        def mine() -> bool:
            return next(counter) % num_slots == slot

        for path in files:
            yield from (raw for raw in iter_file(path, take=mine) if self._in_split(raw))

    def _in_split(self, raw: RawRecord) -> bool:
        """Held out or not by a hash of (file name, position): the same records every epoch, wherever the data lives."""
        if self.split is None:
            return True
        held_out = _unit_hash(self.seed, f"{posixpath.basename(raw.source)}:{raw.index}") < self.split[1]
        return held_out == (self.split[0] == "val")

    # ---- iteration ------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        processor = _require(self.processor)
        slot, num_slots = self._slot()
        skip = self.position.to_skip(slot, num_slots)
        held: dict[str, Any] | None = None  # one sample held back so later skip reports can ride on it
        pending: list[SkipReport] = []
        pos = 0
        for pos, raw in enumerate(self._slot_records(slot, num_slots), start=1):
            if pos <= skip:
                continue
            where = (self.epoch, slot, num_slots, pos)
            try:
                sample = self.build(raw, processor, self.image_root)
            except BadSampleError as err:
                if err.raises(self.on_bad_sample):
                    raise
                if held is not None:
                    held["skipped"].append(err.report())
                    held["stream_position"] = where
                else:
                    pending.append(err.report())
                continue
            if held is not None:
                yield held
            sample["skipped"], sample["stream_position"] = pending, where
            held, pending = sample, []
        if held is not None:
            yield held
        elif pending:
            yield {"skipped": pending, "stream_position": (self.epoch, slot, num_slots, pos)}
