"""Use and evaluate: batch answers, chat, LLaVA-Bench judging (relative score), ScienceQA accuracy.

Modules: ``answers`` (questions → answers JSONL, resumable), ``chat`` (multi-turn session),
``judge`` (Claude scores two answers 1-10), ``llava_bench`` (benchmark files → relative
scores), ``scienceqa`` (conversion, letter extraction, accuracy breakdowns), ``metrics``
(torchmetrics aggregations), ``settings`` and ``run`` (what ``llava-lite-eval`` executes).
"""

from llava_lite.evaluation.answers import (
    AnswerStats,
    GenerationSettings,
    Question,
    generate_answers,
    read_answers,
    read_questions,
)
from llava_lite.evaluation.chat import ChatSession
from llava_lite.evaluation.judge import ClaudeJudge, JudgeError, Judgement, JudgeRequest, parse_reply
from llava_lite.evaluation.metrics import GroupedAccuracy, GroupedRelativeScore, RelativeScore

__all__ = [
    "AnswerStats",
    "ChatSession",
    "ClaudeJudge",
    "GenerationSettings",
    "GroupedAccuracy",
    "GroupedRelativeScore",
    "JudgeError",
    "JudgeRequest",
    "Judgement",
    "Question",
    "RelativeScore",
    "generate_answers",
    "parse_reply",
    "read_answers",
    "read_questions",
]
