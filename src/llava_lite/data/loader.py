"""A DataLoader that Lightning can checkpoint and resume mid-epoch.

Its position lives in its sampler (map-style: :class:`ResumableSampler`) or its dataset
(streaming: :class:`LlavaStreamingDataset`); Lightning saves and restores loaders that
have ``state_dict``/``load_state_dict`` together with the loop state. ``LlavaDataModule``
carries the same state in its own ``state_dict``, so either restore path gives one result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from llava_lite.data.dataset import LlavaStreamingDataset


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
        return self.dataset if isinstance(self.dataset, LlavaStreamingDataset) else self.sampler

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
        if isinstance(self.dataset, LlavaStreamingDataset):
            self.dataset.set_epoch(self.dataset.epoch + 1)


def _annotated(window: list[Any]) -> list[Any]:
    """The window's batches, each told the trained tokens of the whole window."""
    total = sum(b.get("trained_tokens", 0) for b in window if isinstance(b, dict))
    for b in window:
        if isinstance(b, dict) and "trained_tokens" in b:
            b["step_trained_tokens"] = total
    return window
