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
    """Also moves a streaming dataset to its next epoch when a pass ends.

    Lightning calls ``set_epoch`` only on samplers, which iterable datasets do not have.
    """

    def _holder(self) -> Any:
        return self.dataset if isinstance(self.dataset, LlavaStreamingDataset) else self.sampler

    def state_dict(self) -> dict[str, Any]:
        return self._holder().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._holder().load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        yield from super().__iter__()
        if isinstance(self.dataset, LlavaStreamingDataset):
            self.dataset.set_epoch(self.dataset.epoch + 1)
