"""A text-only judge (Claude through the ``anthropic`` SDK) that scores two answers 1-10.

As in LLaVA-Bench, the judge reads a textual stand-in for the image (captions, and boxes
when available), the question, a reference answer (Assistant 1) and the model's answer
(Assistant 2), and gives each an overall score from 1 to 10. Scores come from a forced tool
call; a reply with text instead is read the paper's way, from a first line holding the two
numbers. Anything else is a :class:`JudgeError` with a reason that the caller counts — a
failed judgement is never scored as 0. What every Claude judge shares (cache, budget, one
judgement per distinct request, the model check, Message Batches) is
:class:`~llava_lite.evaluation.judging.PaidJudge`; this module says what LLaVA-Bench asks.

Paying for replies is the Claude layer's (:mod:`llava_lite.claude`, as for the teacher):
:class:`~llava_lite.claude.paying.PaysForMessages` makes one bounded call (the SDK's
retries, a capped ``retry-after`` wait, a deadline), stores the reply in the
:class:`~llava_lite.claude.cache.RequestCache` before parsing (a rerun replays it for
free), reserves each request's worst case in the :class:`~llava_lite.claude.prices.Budget`
before sending (and charges it when a reply reports no usage), and prices usage per model
id; the model's lifecycle is checked with the Models API before the first paid request.
:func:`~llava_lite.claude.replies.read_reply` reads the stop reason and the forced tool
call; only a finished reply with one call of the tool, or a text fallback, is scored.
The API key is passed to the SDK only (explicitly, or read by the SDK from
``ANTHROPIC_API_KEY``); it is never logged or stored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

from llava_lite.claude.cache import RequestCache, request_key
from llava_lite.claude.client import usage_from_message
from llava_lite.claude.prices import Budget, Usage
from llava_lite.claude.replies import read_reply
from llava_lite.claude.settings import DEFAULT_MODEL, ClaudeSettings
from llava_lite.evaluation.judging import JudgeError, PaidJudge

log = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = "judge-v1"
SCORE_RANGE = (1.0, 10.0)

JUDGE_SYSTEM = (
    "You are a careful, impartial reviewer who checks how well answers fit the question and the image."
)

JUDGE_INSTRUCTION = (
    "Two AI assistants answered the question above about an image. You cannot see the image; "
    "the context above describes what it shows. Judge each answer for helpfulness, relevance, "
    "accuracy with respect to the context, and level of detail, and give each assistant one "
    "overall score from 1 to 10 (higher is better). Do not let the order of the answers or "
    "their length sway you.\n"
    "Call the record_scores tool. If you cannot call it, write the two scores (Assistant 1, then "
    "Assistant 2) separated by a space on the first line, and your explanation below."
)

SCORES_TOOL: dict[str, Any] = {
    "name": "record_scores",
    "description": "Record the overall 1-10 score of each assistant and a short justification.",
    "input_schema": {
        "type": "object",
        "properties": {
            "explanation": {"type": "string", "description": "Why the two answers got their scores."},
            "assistant_1_score": {"type": "number", "minimum": 1, "maximum": 10},
            "assistant_2_score": {"type": "number", "minimum": 1, "maximum": 10},
        },
        "required": ["explanation", "assistant_1_score", "assistant_2_score"],
    },
}


@dataclass(frozen=True)
class JudgeRequest:
    """One pair to judge: Assistant 1 is the reference and Assistant 2 the evaluated model, or
    the other way round with ``model_first`` (to measure the judge's position bias)."""

    question_id: int | str
    category: str
    context: str
    question: str
    reference_answer: str
    model_answer: str
    model_first: bool = False


@dataclass
class Judgement:
    request: JudgeRequest
    scores: tuple[float, float] | None  # (reference, model); None when the reply had none
    error: str | None = None  # reason when scores is None
    review: str = ""  # the judge's explanation or text
    cached: bool = False
    usage: Usage = field(default_factory=Usage)
    judge_model: str = ""  # the model id that judged (provenance of every review)

    def to_record(self) -> dict[str, Any]:
        """A review line in the shape of LLaVA's reviews (``tuple`` = [reference, model] in
        either order), with the order shown, the judge model id and the prompt version."""
        return {
            "question_id": self.request.question_id,
            "category": self.request.category,
            "order": "model_first" if self.request.model_first else "reference_first",
            "tuple": list(self.scores) if self.scores else None,
            "error": self.error,
            "content": self.review,
            "cached": self.cached,
            "judge_model": self.judge_model,
            "prompt_version": JUDGE_PROMPT_VERSION,
        }


def render_prompt(request: JudgeRequest) -> str:
    """The user message: context, question, both answers, then the instruction."""
    first, second = (request.reference_answer, request.model_answer)
    if request.model_first:
        first, second = second, first
    return (
        f"[Context]\n{request.context.strip()}\n\n"
        f"[Question]\n{request.question.strip()}\n\n"
        f"[Assistant 1]\n{first.strip()}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{second.strip()}\n\n[End of Assistant 2]\n\n"
        f"[Instruction]\n{JUDGE_INSTRUCTION}"
    )


def build_body(request: JudgeRequest, model: str, max_tokens: int) -> dict[str, Any]:
    """A complete ``messages.create`` body with the scores tool forced."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": JUDGE_SYSTEM}],
        "messages": [{"role": "user", "content": render_prompt(request)}],
        "tools": [SCORES_TOOL],
        "tool_choice": {"type": "tool", "name": SCORES_TOOL["name"]},
    }


def cache_key(body: Mapping[str, Any]) -> str:
    """The judge's request key: its kind, prompt version and the full body."""
    return request_key(body, kind="judge", prompt_version=JUDGE_PROMPT_VERSION)


# ---- parsing --------------------------------------------------------------------------
_NUMBER = r"(\d+(?:\.\d+)?)"
_FIRST_LINE = re.compile(rf"^\s*{_NUMBER}\s*(?:,\s*|\s+){_NUMBER}\s*$")


def parse_score_line(text: str) -> tuple[float, float]:
    """The paper's fallback: the first line holds exactly two numbers (space or comma apart)."""
    first = text.strip().split("\n", 1)[0]
    match = _FIRST_LINE.match(first)
    if match is None:
        raise JudgeError("unparseable", f"first line is not two scores: {first[:80]!r}")
    return _checked(float(match.group(1)), float(match.group(2)))


def _checked(a: Any, b: Any) -> tuple[float, float]:
    if isinstance(a, bool) or isinstance(b, bool):
        raise JudgeError("malformed_scores", f"scores {a!r}, {b!r} are not numbers")
    try:
        scores = (float(a), float(b))
    except (TypeError, ValueError) as e:
        raise JudgeError("malformed_scores", f"scores {a!r}, {b!r} are not numbers") from e
    lo, hi = SCORE_RANGE
    if not all(lo <= s <= hi for s in scores):
        raise JudgeError("out_of_range", f"scores {scores} outside {lo:g}..{hi:g}")
    return scores


def parse_reply(message: Mapping[str, Any]) -> tuple[tuple[float, float], str]:
    """``((reference_score, model_score), explanation)`` from a Messages reply, or ``JudgeError``."""
    content = read_reply(message, SCORES_TOOL["name"], error=JudgeError)
    if content.called:
        data = content.tool_input
        if not isinstance(data, dict):
            raise JudgeError("malformed_scores", "tool input is not an object")
        scores = _checked(data.get("assistant_1_score"), data.get("assistant_2_score"))
        return scores, printable(str(data.get("explanation") or ""))
    return parse_score_line(content.text), printable(content.text)


def printable(text: str) -> str:
    """The review as writable UTF-8: a server may send lone surrogates, which no file accepts."""
    return text.encode("utf-8", "replace").decode("utf-8")


# ---- the client -----------------------------------------------------------------------
class ClaudeJudge(PaidJudge[JudgeRequest, Judgement]):
    """Judges requests through ``AsyncAnthropic`` with caching, a budget and bounded concurrency
    (:class:`~llava_lite.evaluation.judging.PaidJudge`); this class says what LLaVA-Bench asks."""

    reply_log = log

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        **paying: Any,
    ) -> None:
        """``api_key`` / ``base_url``: None lets the SDK read its environment / config;
        ``paying``: :class:`~llava_lite.claude.paying.PaysForMessages`' settings (``max_tokens``,
        ``concurrency``, retries and timeouts, ``cache``, ``budget``, ``prices``)."""
        client_kwargs = {k: v for k, v in (("api_key", api_key), ("base_url", base_url)) if v is not None}
        super().__init__(model, client_kwargs=client_kwargs, **paying)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(model={self.model!r}, max_tokens={self.max_tokens})"

    @classmethod
    def from_settings(
        cls, settings: ClaudeSettings, *, cache: RequestCache | None = None, budget: Budget | None = None
    ) -> Self:
        """A judge configured by ``settings`` (``ValueError`` for a model without prices)."""
        return cls(
            settings.model, base_url=settings.base_url, cache=cache, budget=budget, **settings.paying()
        )

    @property
    def spent_usd(self) -> float:
        return self.budget.spent_usd

    def body(self, request: JudgeRequest) -> dict[str, Any]:
        return build_body(request, self.model, self.max_tokens)

    def key(self, request: JudgeRequest, body: dict[str, Any]) -> str:
        return cache_key(body)

    def read(self, request: JudgeRequest, message: dict[str, Any], cached: bool) -> Judgement:
        scores, review = parse_reply(message)
        usage = usage_from_message(message) or Usage()
        if request.model_first:  # the judge scored (model, reference)
            scores = (scores[1], scores[0])
        return Judgement(request, scores, review=review, cached=cached, usage=usage, judge_model=self.model)

    def failed(self, request: JudgeRequest, error: JudgeError, cached: bool) -> Judgement:
        return Judgement(request, None, error=error.reason, cached=cached, judge_model=self.model)

    def copied(self, judgement: Judgement, request: JudgeRequest) -> Judgement:
        return replace(judgement, request=request, cached=True, usage=Usage())
