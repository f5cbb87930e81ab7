"""Aggregations for evaluation: LLaVA-Bench relative score and accuracy broken down by group.

Both are torchmetrics ``Metric`` s (sum states), so they accumulate batch by batch and
reduce across processes like any other metric; the grouped wrappers keep one metric per
group name, created on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric, SumMetric


class RelativeScore(Metric):
    """``100 * mean(model) / mean(reference)`` over judged pairs, and both means (1-10 scale).

    As in LLaVA-Bench: the judge scores the reference answer and the model's answer, and the
    model is reported relative to the reference. ``nan`` until a pair is seen.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("reference_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("model_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, reference: Tensor | float, model: Tensor | float) -> None:
        """``reference`` and ``model``: scores of the same questions, ``[N]`` or scalars."""
        ref = torch.as_tensor(reference, dtype=torch.float64).reshape(-1)  # [N]
        mod = torch.as_tensor(model, dtype=torch.float64).reshape(-1)  # [N]
        if ref.shape != mod.shape:
            raise ValueError(
                f"reference {tuple(ref.shape)} and model {tuple(mod.shape)} scores differ in shape"
            )
        self.reference_sum += ref.sum()
        self.model_sum += mod.sum()
        self.count += ref.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.to(torch.float64)
        reference_mean = self.reference_sum / n
        model_mean = self.model_sum / n
        return {
            "relative": 100.0 * model_mean / reference_mean,
            "reference_mean": reference_mean,
            "model_mean": model_mean,
            "count": self.count,
        }


class GroupedRelativeScore:
    """One :class:`RelativeScore` per group (e.g. LLaVA-Bench category) plus ``"all"``."""

    def __init__(self) -> None:
        self.groups: dict[str, RelativeScore] = {}

    def update(self, reference: float, model: float, groups: Iterable[str]) -> None:
        for name in ("all", *groups):
            self.groups.setdefault(name, RelativeScore()).update(reference, model)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{group: {"relative", "reference_mean", "model_mean", "count"}}``, ``"all"`` last."""
        order = sorted(g for g in self.groups if g != "all") + (["all"] if "all" in self.groups else [])
        out: dict[str, dict[str, float]] = {}
        for name in order:
            result = self.groups[name].compute()
            out[name] = {k: (int(v) if k == "count" else float(v)) for k, v in result.items()}
        return out


class GroupedAccuracy:
    """Accuracy overall and per group (subject, context modality, grade, ...).

    ``update(correct, groups)`` adds one prediction to ``"all"`` and to every named group.
    """

    def __init__(self) -> None:
        self.mean: dict[str, MeanMetric] = {}
        self.count: dict[str, SumMetric] = {}

    def update(self, correct: bool, groups: Iterable[str]) -> None:
        value = torch.tensor(float(correct))
        for name in ("all", *groups):
            if name not in self.mean:
                self.mean[name] = MeanMetric()
                self.count[name] = SumMetric()
            self.mean[name].update(value)
            self.count[name].update(1.0)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{group: {"accuracy" (percent), "correct", "count"}}``, groups sorted, ``"all"`` last."""
        order = sorted(g for g in self.mean if g != "all") + (["all"] if "all" in self.mean else [])
        out: dict[str, dict[str, float]] = {}
        for name in order:
            accuracy = float(self.mean[name].compute())
            count = int(self.count[name].compute())
            out[name] = {"accuracy": 100.0 * accuracy, "correct": round(accuracy * count), "count": count}
        return out
