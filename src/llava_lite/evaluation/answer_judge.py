"""A text-only judge that scores one answer 1-10 against the image's captions and boxes, with a reason.

It feeds preference pairs (:mod:`llava_lite.preference`): the stage-2 model samples several
answers per question, this judge scores each, and the best and worst become a pair. The
judge reads the symbolic context (as the teacher and the LLaVA-Bench judge do), the question
and one answer; the score comes from a forced tool call, or from a reply whose first line is
one number. Anything else is a counted :class:`~llava_lite.evaluation.judging.JudgeError`,
never a score. Paying, caching, the budget, the model check and Message Batches are
:class:`~llava_lite.evaluation.judging.PaidJudge`'s.

Prompts are versioned (:data:`PROMPTS`): a changed prompt is a new entry, and its version is
part of every request's cache key and of every pair, so replies to different prompts are
never mixed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llava_lite.claude.cache import request_key
from llava_lite.claude.client import usage_from_message
from llava_lite.claude.prices import Usage
from llava_lite.claude.replies import read_reply
from llava_lite.claude.settings import DEFAULT_MODEL
from llava_lite.evaluation.judge import SCORE_RANGE, printable
from llava_lite.evaluation.judging import JudgeError, PaidJudge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerPrompt:
    system: str
    instruction: str


PROMPTS: dict[str, AnswerPrompt] = {
    "answer-judge-v1": AnswerPrompt(
        system=(
            "You are a strict, impartial reviewer who checks answers about an image against what "
            "the image is known to show."
        ),
        instruction=(
            "An AI assistant answered the question above about an image. You cannot see the image; "
            "the context above (captions, then one line per object box as category: [x1, y1, x2, y2], "
            "coordinates from 0 to 1) describes what it shows. Score the answer from 1 to 10 for "
            "accuracy with respect to the context first (any object, attribute, count or position the "
            "context contradicts or does not support is a hallucination and costs most), then "
            "helpfulness and relevance. Do not reward length.\n"
            "Call the record_score tool with the score and a one-sentence reason. If you cannot call "
            "it, write the score alone on the first line and your reason below."
        ),
    ),
}
PROMPT_VERSION = "answer-judge-v1"

SCORE_TOOL: dict[str, Any] = {
    "name": "record_score",
    "description": "Record the answer's overall 1-10 score and the reason for it.",
    "input_schema": {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "description": "Why the answer got this score, in one sentence."},
            "score": {"type": "number", "minimum": 1, "maximum": 10},
        },
        "required": ["reason", "score"],
    },
}


@dataclass(frozen=True)
class AnswerRequest:
    """One answer to score. ``context`` is the image's symbolic context (a judge that reads the
    annotations themselves, like the synthetic world's, finds them by ``image``)."""

    question_id: int | str
    image: str
    question: str
    answer: str
    context: str = ""


@dataclass
class AnswerJudgement:
    request: AnswerRequest
    score: float | None  # None when the reply held none
    reason: str = ""
    error: str | None = None  # the counted reason when score is None
    stored: bool = True  # False: the call itself failed (nothing paid or stored): a rerun asks again
    cached: bool = False
    usage: Usage = field(default_factory=Usage)


class AnswerJudge(Protocol):
    """Any judge of single answers: Claude (:class:`ClaudeAnswerJudge`) or one that checks the
    annotations offline. ``model`` and ``prompt_version`` are recorded in every pair."""

    model: str
    prompt_version: str
    needs_context: bool  # whether requests must carry the symbolic context

    async def judge(self, request: AnswerRequest, semaphore: Any = None) -> AnswerJudgement: ...


def prompt_for(version: str) -> AnswerPrompt:
    try:
        return PROMPTS[version]
    except KeyError:
        raise KeyError(f"unknown answer-judge prompt_version {version!r}; valid: {sorted(PROMPTS)}") from None


def render_prompt(request: AnswerRequest, prompt: AnswerPrompt) -> str:
    return (
        f"[Context]\n{request.context.strip()}\n\n"
        f"[Question]\n{request.question.strip()}\n\n"
        f"[Answer]\n{request.answer.strip()}\n\n[End of Answer]\n\n"
        f"[Instruction]\n{prompt.instruction}"
    )


def build_body(request: AnswerRequest, prompt: AnswerPrompt, model: str, max_tokens: int) -> dict[str, Any]:
    """A complete ``messages.create`` body with the score tool forced."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": prompt.system}],
        "messages": [{"role": "user", "content": render_prompt(request, prompt)}],
        "tools": [SCORE_TOOL],
        "tool_choice": {"type": "tool", "name": SCORE_TOOL["name"]},
    }


_FIRST_LINE = re.compile(r"^\s*(?:score\s*:\s*)?(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$", re.IGNORECASE)


def checked_score(value: Any) -> float:
    """A number within :data:`SCORE_RANGE`, or ``JudgeError``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise JudgeError("malformed_score", f"score {value!r} is not a number")
    try:
        score = float(value)
    except ValueError:
        raise JudgeError("malformed_score", f"score {value!r} is not a number") from None
    lo, hi = SCORE_RANGE
    if not lo <= score <= hi:
        raise JudgeError("out_of_range", f"score {score:g} outside {lo:g}..{hi:g}")
    return score


def parse_reply(message: Mapping[str, Any]) -> tuple[float, str]:
    """``(score, reason)`` from a Messages reply, or ``JudgeError`` with a counted reason."""
    content = read_reply(message, SCORE_TOOL["name"], error=JudgeError)
    if content.called:
        data = content.tool_input
        if not isinstance(data, dict):
            raise JudgeError("malformed_score", "tool input is not an object")
        return checked_score(data.get("score")), printable(str(data.get("reason") or ""))
    first, _, rest = content.text.partition("\n")
    match = _FIRST_LINE.match(first)
    if match is None:
        raise JudgeError("unparseable", f"first line is not a score: {first[:80]!r}")
    return checked_score(match.group(1)), printable(rest.strip())


class ClaudeAnswerJudge(PaidJudge[AnswerRequest, AnswerJudgement]):
    """Scores single answers through ``AsyncAnthropic`` (cache, budget, batches: :class:`PaidJudge`)."""

    reply_log = log
    needs_context = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        prompt_version: str = PROMPT_VERSION,
        api_key: str | None = None,
        base_url: str | None = None,
        **paying: Any,
    ) -> None:
        """``api_key`` / ``base_url``: None lets the SDK read its environment / config; ``paying``:
        :class:`~llava_lite.claude.paying.PaysForMessages`' settings (``max_tokens``, ``concurrency``,
        retries and timeouts, ``cache``, ``budget``, ``prices``)."""
        self.prompt = prompt_for(prompt_version)
        self.prompt_version = prompt_version
        client_kwargs = {k: v for k, v in (("api_key", api_key), ("base_url", base_url)) if v is not None}
        super().__init__(model, client_kwargs=client_kwargs, **paying)

    def __repr__(self) -> str:  # never shows the key
        return f"ClaudeAnswerJudge(model={self.model!r}, prompt_version={self.prompt_version!r})"

    def body(self, request: AnswerRequest) -> dict[str, Any]:
        if not request.context.strip():
            raise ValueError(
                f"question {request.question_id!r} ({request.image}): no context to judge against"
            )
        return build_body(request, self.prompt, self.model, self.max_tokens)

    def key(self, request: AnswerRequest, body: dict[str, Any]) -> str:
        return request_key(body, kind="answer_judge", prompt_version=self.prompt_version)

    def read(self, request: AnswerRequest, message: dict[str, Any], cached: bool) -> AnswerJudgement:
        score, reason = parse_reply(message)
        usage = usage_from_message(message) or Usage()
        return AnswerJudgement(request, score, reason=reason, cached=cached, usage=usage)

    def failed(self, request: AnswerRequest, error: JudgeError, cached: bool) -> AnswerJudgement:
        # a reply that was read (stored in the cache) fails the same way on every rerun; a call
        # that got no reply (api_*) or had no batch result was not stored: a rerun asks again
        stored = cached or not (error.reason.startswith("api_") or error.reason == "no_batch_result")
        return AnswerJudgement(request, None, error=error.reason, stored=stored, cached=cached)

    def copied(self, judgement: AnswerJudgement, request: AnswerRequest) -> AnswerJudgement:
        return replace(judgement, request=request, cached=True, usage=Usage())
