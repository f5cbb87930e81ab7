"""Where training stands in its data, kept in one place so a checkpoint resumes mid-epoch.

- map-style data: :class:`ResumableSampler` counts the indices of the epoch already taken;
- streaming data: :class:`StreamPosition` counts, per reader slot, the records delivered
  (``LlavaStreamingDataset`` holds one and replays its seeded order up to it);
- :class:`DataPosition` is the DataModule's view of either: it advances them for every batch
  the Trainer consumes and saves / restores them, holding a restored state until the sampler
  or stream it belongs to exists;
- :class:`ResumableLoader` is a DataLoader Lightning can checkpoint: Lightning saves and
  restores loaders that have ``state_dict``/``load_state_dict`` together with the loop state,
  and this one hands them to the stream or the sampler, so either restore path (Lightning's
  loader state or the DataModule's) gives one result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """A per-rank sampler for map-style data that can stop mid-epoch and resume at the same index.

    The global order of an epoch is a seeded permutation (or ``base``'s order, e.g. a
    :class:`ModalityLengthGroupedSampler`), padded to a multiple of ``num_replicas`` as
    ``DistributedSampler`` does; rank ``r`` takes positions ``r, r + W, ...``. Being a
    ``DistributedSampler``, Lightning uses it as is instead of wrapping it. ``__len__`` is
    always the full epoch, so a resumed epoch ends after the remaining indices, at the step
    count Lightning expects.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        base: Sampler[int] | None = None,
    ) -> None:
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.base = base
        self.consumed = 0  # indices of this epoch already delivered on this rank
        self._start = 0  # where the next pass starts

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.consumed = self._start = 0
        super().set_epoch(epoch)

    def global_order(self) -> list[int]:
        if self.base is not None:
            if hasattr(self.base, "set_epoch"):
                self.base.set_epoch(self.epoch)
            order = list(self.base)
        elif self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=gen).tolist()
        else:
            order = list(range(len(self.dataset)))
        if order and len(order) < self.total_size:
            order += (order * (self.total_size // len(order) + 1))[: self.total_size - len(order)]
        return order

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order()[self.rank : self.total_size : self.num_replicas]
        start, self._start = self._start, 0
        yield from mine[start:]

    def advance(self, n: int) -> None:
        """Record that ``n`` more indices were consumed (called for every batch the trainer takes)."""
        self.consumed += n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        if int(state.get("num_replicas", self.num_replicas)) != self.num_replicas:
            log.warning(
                "sampler state saved with %s ranks, now %s: restarting the epoch",
                state["num_replicas"],
                self.num_replicas,
            )
            self.consumed = self._start = 0
            return
        self.consumed = self._start = int(state["consumed"])


class StreamPosition:
    """A stream's position: records delivered per reader slot in the current epoch, and batches.

    A slot's output order is a pure function of (seed, epoch, slot), so "slot s has
    delivered m records" is the whole state; it is valid only for the same number of slots.
    DataLoader workers hand out batches in turn, starting with worker 0; after ``b`` batches
    the next one is worker ``b % workers``'s, so a resumed loader lets worker ``w`` read slot
    ``(w + b) % workers`` (:meth:`worker_offset`), and batches keep their uninterrupted order.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0
        self._delivered: dict[int, int] = {}  # slot -> records delivered this epoch (main process)
        self._batches = 0  # batches delivered this epoch (main process)
        self._resume: dict[int, int] = {}  # slot -> records to skip on the next pass
        self._resume_batches = 0
        self._resume_slots: int | None = None
        self._slots_seen: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``; forgets the positions of the old one."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._delivered, self._resume, self._resume_slots, self._slots_seen = {}, {}, None, None
            self._batches = self._resume_batches = 0

    def observe(self, positions: Sequence[tuple[int, int, int, int]]) -> None:
        """Record ``(epoch, slot, num_slots, position)`` of the samples of one batch the consumer took."""
        current = [p for p in positions if p[0] == self.epoch]
        for _, slot, num_slots, pos in current:
            self._delivered[slot] = max(self._delivered.get(slot, 0), pos)
            self._slots_seen = num_slots
        if current:
            self._batches += 1

    def worker_offset(self, num_slots: int) -> int:
        """How far a resumed pass turns the workers' slots: the batches already delivered."""
        return self._resume_batches if self._resume and self._resume_slots == num_slots else 0

    def to_skip(self, slot: int, num_slots: int) -> int:
        """Records slot ``slot`` of ``num_slots`` passes over on its next pass (0 after a change of slots)."""
        if not self._resume:
            return 0
        if self._resume_slots == num_slots:
            return self._resume.get(slot, 0)
        if slot == 0:
            log.warning(
                "stream state was saved with %s reader slots, now %s: restarting epoch %s from its start",
                self._resume_slots,
                num_slots,
                self.epoch,
            )
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_slots": self._slots_seen,
            "delivered": dict(self._delivered),
            "batches": self._batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            log.warning("resuming a stream saved with seed %s under seed %s", state.get("seed"), self.seed)
        self.epoch = int(state["epoch"])
        self._delivered = {int(k): int(v) for k, v in state.get("delivered", {}).items()}
        self._resume = dict(self._delivered)
        self._batches = self._resume_batches = int(state.get("batches", 0))
        self._resume_slots = self._slots_seen = state.get("num_slots")


class DataPosition:
    """A DataModule's training position: its sampler's (map-style) or its stream's.

    A state restored before the sampler or stream exists (a checkpoint loaded before
    ``setup``) is held and applied when it arrives, and saved again meanwhile.
    """

    def __init__(self) -> None:
        self.sampler: ResumableSampler | None = None
        self.stream: StreamPosition | None = None
        self._pending: dict[str, dict[str, Any]] = {}

    def follow_sampler(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler
        if "sampler" in self._pending:
            sampler.load_state_dict(self._pending.pop("sampler"))

    def follow_stream(self, stream: StreamPosition) -> None:
        self.stream = stream
        if "stream" in self._pending:
            stream.load_state_dict(self._pending.pop("stream"))

    def advance(self, positions: Sequence[tuple[int, int, int, int]], taken: int) -> None:
        """One consumed batch: its stream positions, or (map-style) the ``taken`` indices it used."""
        if positions and self.stream is not None:
            self.stream.observe(positions)
        elif self.sampler is not None:
            self.sampler.advance(taken)

    def state_dict(self) -> dict[str, Any]:
        state = dict(self._pending)
        if self.stream is not None:
            state["stream"] = self.stream.state_dict()
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, holder in (("stream", self.stream), ("sampler", self.sampler)):
            if key not in state:
                continue
            if holder is not None:
                holder.load_state_dict(state[key])
            else:
                self._pending[key] = state[key]


# Per-batch counts a loss divides by over a whole optimiser step: trained tokens, and for
# preference pairs the pairs and the chosen answers' tokens.
STEP_TOTALS = ("trained_tokens", "pairs", "chosen_tokens")


class ResumableLoader(DataLoader):
    """Also moves a streaming dataset to its next epoch when a pass ends, and tells each batch
    how many tokens its optimiser step trains.

    Lightning calls ``set_epoch`` only on samplers, which iterable datasets do not have.
    With ``accumulate`` micro-batches per optimiser step, batches are read a window ahead and
    each carries ``step_trained_tokens``, the sum of ``trained_tokens`` over its window (the
    epoch's last window may be shorter, as Lightning's), so the loss can be normalised by the
    trained tokens of the whole step rather than per micro-batch.
    """

    accumulate: int = 1

    def _holder(self) -> Any:
        """The stream (which knows its position) or, for map-style data, the sampler."""
        return self.dataset if isinstance(self.dataset, IterableDataset) else self.sampler

    def state_dict(self) -> dict[str, Any]:
        return self._holder().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._holder().load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        window: list[Any] = []
        for batch in super().__iter__():
            window.append(batch)
            if len(window) == self.accumulate:
                yield from _annotated(window)
                window = []
        yield from _annotated(window)
        if isinstance(self.dataset, IterableDataset):
            self.dataset.set_epoch(self.dataset.epoch + 1)


def _annotated(window: list[Any]) -> list[Any]:
    """The window's batches, each told the totals of the whole window (``step_<key>``)."""
    for key in STEP_TOTALS:
        total = sum(b.get(key, 0) for b in window if isinstance(b, dict))
        for b in window:
            if isinstance(b, dict) and key in b:
                b[f"step_{key}"] = total
    return window
