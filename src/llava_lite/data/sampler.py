"""Grouping samples by modality and length to cut padding (LLaVA's ``group_by_modality_length``).

Image+text and text-only samples go into separate batches (their lengths differ by the
image block, and mixing them wastes the most padding); within a modality, shuffled indices
are cut into megabatches of ``mega_batch_mult`` global batches, sorted by length and split,
so each batch holds samples of similar length while batch order stays random.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from llava_lite.templates import Message

_WS = re.compile(r"\s+")


def approx_length(messages: Sequence[Message]) -> int:
    """A cheap length estimate in words, for grouping by length before anything is tokenised."""
    return sum(len(_WS.split(content.strip())) for _, content in messages)


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields indices so that every run of ``batch_size`` (per rank) is one modality and similar lengths.

    With ``world_size > 1`` each global batch of ``batch_size * world_size`` indices is laid
    out interleaved, so taking every ``world_size``-th index (what a distributed sampler
    wrapper does) gives each rank a homogeneous batch. The batch with the longest sample
    comes first, so out-of-memory shows up at step one rather than hours in.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        has_image: Sequence[bool],
        batch_size: int,
        world_size: int = 1,
        mega_batch_mult: int = 8,
        seed: int = 0,
    ) -> None:
        if len(lengths) != len(has_image):
            raise ValueError(f"{len(lengths)} lengths but {len(has_image)} modality flags")
        self.lengths = list(lengths)
        self.has_image = list(has_image)
        self.batch_size = batch_size
        self.world_size = world_size
        self.mega_batch_mult = mega_batch_mult
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (``batch_size * world_size`` indices each, the last may be short)."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        global_size = self.batch_size * self.world_size
        mega = global_size * self.mega_batch_mult
        batches: list[list[int]] = []
        leftovers: list[int] = []
        for modality in (True, False):
            idx = [i for i, img in enumerate(self.has_image) if img == modality]
            rng.shuffle(idx)
            for start in range(0, len(idx), mega):
                chunk = sorted(idx[start : start + mega], key=lambda i: -self.lengths[i])
                full = len(chunk) - len(chunk) % global_size
                batches += [chunk[j : j + global_size] for j in range(0, full, global_size)]
                leftovers += chunk[full:]
        leftovers.sort(key=lambda i: -self.lengths[i])  # mixed remainder batches, still length-sorted
        batches += [leftovers[j : j + global_size] for j in range(0, len(leftovers), global_size)]
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            # rank r later takes positions r, r + W, ...: lay the batch out so it gets a contiguous share
            per_rank = [batch[r :: self.world_size] for r in range(self.world_size)]
            for k in range(max(len(p) for p in per_rank)):
                for share in per_rank:
                    if k < len(share):
                        yield share[k]


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of token positions that are padding when each batch is padded to its longest sample."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / total if total else 0.0
