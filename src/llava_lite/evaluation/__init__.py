"""Measure a model: LLaVA-Bench judging (relative score), ScienceQA accuracy, metrics.

Modules: ``judge`` (Claude scores two answers 1-10), ``llava_bench`` (benchmark files →
relative scores), ``scienceqa`` (conversion, letter extraction, accuracy breakdowns),
``metrics`` (torchmetrics aggregations), ``settings`` and ``run`` (what ``llava-lite-eval``
executes). The answers they score are written by :mod:`llava_lite.inference`.
"""

from llava_lite.evaluation.judge import ClaudeJudge, JudgeError, Judgement, JudgeRequest, parse_reply
from llava_lite.evaluation.metrics import GroupedAccuracy, GroupedRelativeScore, RelativeScore

__all__ = [
    "ClaudeJudge",
    "GroupedAccuracy",
    "GroupedRelativeScore",
    "JudgeError",
    "JudgeRequest",
    "Judgement",
    "RelativeScore",
    "parse_reply",
]
