"""DPO's reference model: a frozen copy, the LoRA-disabled base, or log-probabilities cached once.

- ``copy``: a frozen copy of the starting model (twice the weights in memory; nothing
  trained ever changes it).
- ``lora_base``: with ``module.lora``, the base LLM is the LoRA-wrapped LLM with its adapters
  disabled, as TRL does; the parts trained in full beside it (projector, AnyRes newline, a
  tower being tuned) keep a frozen copy each, swapped in for the reference's forward, so the
  reference is the starting model exactly.
- ``cached``: before the first step, the starting model's log-probabilities of every pair are
  computed once and written to a JSON file beside the data, keyed by file name and record id
  and stamped with a fingerprint of model, data and tokenisation; a later run with the same
  fingerprint reads them instead of running a reference at all. A resumed run needs the file
  its first run wrote, since its model is no longer the starting one.

The frozen copies are rebuilt from the starting model, so checkpoints leave them out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from llava_lite.io import write_json_atomic
from llava_lite.training.logps import sequence_logps

log = logging.getLogger(__name__)

REFERENCES = ("copy", "lora_base", "cached")
PREFIX = "reference."  # its keys in the module's state dict
CACHE_SUFFIX = ".ref_logps.json"

# the LlavaModel attributes each trainable component consists of
_ATTRIBUTES = {"projector": ("projector", "image_newline"), "vision_tower": ("vision_tower",)}


def frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    return copied.requires_grad_(False)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the reference's forward, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Reference(nn.Module):
    """The reference of one DPO run; :meth:`logps` gives its ``[2P]`` log-probabilities of a batch."""

    def __init__(self, kind: str, model: nn.Module, trained: Any, cache_file: str | None = None) -> None:
        super().__init__()
        if kind not in REFERENCES:
            raise ValueError(f"module.preference.reference={kind!r}; valid: {list(REFERENCES)}")
        self.kind = kind
        self.cache_file = cache_file
        self.frozen = nn.ModuleDict()
        self.table: dict[str, tuple[float, float]] = {}
        if kind == "copy":
            self.frozen["model"] = frozen_copy(model)
        elif kind == "lora_base":
            if not hasattr(model.llm, "disable_adapter"):
                raise ValueError("module.preference.reference=lora_base needs LoRA: set module.lora")
            for component in sorted(set(trained) - {"llm"}):
                for name in _ATTRIBUTES[component]:
                    if getattr(model, name, None) is not None:
                        self.frozen[name] = frozen_copy(getattr(model, name))

    # ---- log-probabilities ------------------------------------------------------------
    @torch.no_grad()
    def logps(
        self, module: Any, batch: dict[str, Any], run: Callable[[nn.Module], torch.Tensor]
    ) -> torch.Tensor:
        """``[2P]``: chosen then rejected; ``run(model)`` gives a model's summed log-probabilities."""
        if self.kind == "copy":
            with evaluating(self.frozen["model"]):
                return run(self.frozen["model"])
        if self.kind == "lora_base":
            with module.model.llm.disable_adapter(), self._swapped(module.model), evaluating(module.model):
                return run(module.model)
        return self._looked_up(batch["pair_keys"])

    @contextmanager
    def _swapped(self, model: nn.Module) -> Iterator[None]:
        """The frozen starting copies in place of the parts that train in full."""
        live = {name: getattr(model, name) for name in self.frozen}
        try:
            for name, frozen in self.frozen.items():
                setattr(model, name, frozen)
            yield
        finally:
            for name, module in live.items():
                setattr(model, name, module)

    def _looked_up(self, keys: list[str]) -> torch.Tensor:
        missing = [k for k in keys if k not in self.table]
        if missing:
            raise KeyError(
                f"pair {missing[0]!r} has no cached reference log-probabilities in {self.cache_file}: "
                "delete that file to compute them again from the starting model"
            )
        chosen = [self.table[k][0] for k in keys]
        rejected = [self.table[k][1] for k in keys]
        return torch.tensor(chosen + rejected, dtype=torch.float64)  # [2P]

    # ---- the cache ----------------------------------------------------------------------
    def prepare(self, module: Any, datamodule: Any, resuming: bool) -> None:
        """Read (or, at a fresh start, compute and write) the cached log-probabilities."""
        if self.kind != "cached":
            return
        path = Path(self.cache_file or default_cache_file(datamodule.train_files))
        self.cache_file = str(path)
        stamp = fingerprint(module, datamodule)
        stored = _read_cache(path)
        if stored is None or stored.get("fingerprint") != stamp:
            if resuming:
                raise FileNotFoundError(
                    f"{path} is missing or was written for another model or data: a resumed run cannot "
                    "compute the reference from its trained model; restore that file or start afresh"
                )
            if module.trainer.is_global_zero:
                why = (
                    "none there yet"
                    if stored is None
                    else "its fingerprint differs (model, data or tokenisation)"
                )
                log.info("computing reference log-probs into %s (%s)", path, why)
                write_json_atomic(path, {"fingerprint": stamp, "logps": compute_logps(module, datamodule)})
            module.trainer.strategy.barrier()
            stored = json.loads(path.read_text())
        self.table = {k: tuple(v) for k, v in stored["logps"].items()}
        log.info("reference log-probs of %d pairs from %s", len(self.table), path)

    # ---- checkpoints ------------------------------------------------------------------
    @staticmethod
    def drop_from(state_dict: dict[str, Any]) -> None:
        for key in [k for k in state_dict if k.startswith(PREFIX)]:
            del state_dict[key]

    @staticmethod
    def fill_in(state_dict: dict[str, Any], current: dict[str, Any]) -> None:
        """The rebuilt reference's weights, so a checkpoint without them loads strictly."""
        state_dict.update({k: v for k, v in current.items() if k.startswith(PREFIX)})


def default_cache_file(train_files: list[str]) -> str:
    """``<first training file without suffix>.ref_logps.json``, beside the data."""
    first = train_files[0]
    if "://" in first:
        raise ValueError(
            f"{first} is remote: set module.preference.cache_file to a local path for the reference cache"
        )
    base = Path(first)
    return str(base.with_name(base.name.split(".")[0] + CACHE_SUFFIX))


def fingerprint(module: Any, datamodule: Any) -> str:
    """What the cached log-probabilities depend on: the starting weights, the data files, the tokenisation."""
    processor = datamodule.processor
    files = [_file_stamp(f) for f in datamodule.train_files + (datamodule.val_files or [])]
    parts = {
        "weights": _weights_hash(module.model),
        "files": files,
        "template": processor.template.name,
        "model_max_length": processor.model_max_length,
        "overlong": processor.overlong,
        "image_root": datamodule.image_root,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _file_stamp(path: str) -> list[Any]:
    if "://" in path or not os.path.exists(path):
        return [path]
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _weights_hash(model: nn.Module) -> str:
    """A hash of every parameter and buffer (the starting model, before any step)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; computing the reference log-probs again", path)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("logps"), dict) else None


@torch.no_grad()
def compute_logps(module: Any, datamodule: Any) -> dict[str, list[float]]:
    """Every training (and validation) pair's ``[chosen, rejected]`` log-probabilities under the
    module's current model, in eval mode, in padded batches."""
    from llava_lite.data.preference import PreferenceDataset
    from llava_lite.data.sources import read_records

    files = datamodule.train_files + (datamodule.val_files or [])
    dataset = PreferenceDataset(
        list(read_records(files)), datamodule.processor, datamodule.image_root, on_bad_sample="skip"
    )
    loader = DataLoader(
        dataset,
        batch_size=datamodule.eval_batch_size,
        num_workers=datamodule.num_workers,
        collate_fn=datamodule.collator(),
    )
    table: dict[str, list[float]] = {}
    with evaluating(module.model):
        for batch in loader:
            if not batch["pairs"]:
                continue
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps = sequence_logps(module.model, batch, module._forward)[0].double().cpu()  # [2P]
            pairs = int(batch["pairs"])
            for i, key in enumerate(batch["pair_keys"]):
                if key in table:
                    raise ValueError(f"pair {key!r} appears twice in {files}: give each pair its own id")
                table[key] = [float(logps[i]), float(logps[pairs + i])]
    return table
