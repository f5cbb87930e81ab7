"""A text-only judge (Claude through the ``anthropic`` SDK) that scores two answers 1-10.

As in LLaVA-Bench, the judge reads a textual stand-in for the image (captions, and boxes
when available), the question, a reference answer (Assistant 1) and the model's answer
(Assistant 2), and gives each an overall score from 1 to 10. Scores come from a forced tool
call; a reply with text instead is read the paper's way, from a first line holding the two
numbers. Anything else is a :class:`JudgeError` with a reason that the caller counts — a
failed judgement is never scored as 0.

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

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llava_lite.claude.cache import RequestCache, request_key
from llava_lite.claude.client import ApiCallError, ApiFatalError, usage_from_message
from llava_lite.claude.paying import PaysForMessages
from llava_lite.claude.prices import Budget, Usage
from llava_lite.claude.replies import ReplyError, read_reply
from llava_lite.claude.settings import DEFAULT_MODEL, ClaudeSettings

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


class JudgeError(ReplyError):
    """A judge reply (or call) that yields no scores; ``reason`` is counted by the caller."""


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
        return scores, _printable(str(data.get("explanation") or ""))
    return parse_score_line(content.text), _printable(content.text)


def _printable(text: str) -> str:
    """The review as writable UTF-8: a server may send lone surrogates, which no file accepts."""
    return text.encode("utf-8", "replace").decode("utf-8")


# ---- the client -----------------------------------------------------------------------
class ClaudeJudge(PaysForMessages):
    """Judges requests through ``AsyncAnthropic`` with caching, a budget and bounded concurrency."""

    reply_label = "judge reply"
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
        self._fatal: ApiFatalError | None = None  # once the API refuses this client, send nothing more

    def __repr__(self) -> str:  # never shows the key
        return f"ClaudeJudge(model={self.model!r}, max_tokens={self.max_tokens})"

    @classmethod
    def from_settings(
        cls, settings: ClaudeSettings, *, cache: RequestCache | None = None, budget: Budget | None = None
    ) -> ClaudeJudge:
        """A judge configured by ``settings`` (``ValueError`` for a model without prices)."""
        return cls(
            settings.model, base_url=settings.base_url, cache=cache, budget=budget, **settings.paying()
        )

    @property
    def spent_usd(self) -> float:
        return self.budget.spent_usd

    async def judge(self, request: JudgeRequest, semaphore: asyncio.Semaphore | None = None) -> Judgement:
        """One judgement; API and parse failures become a ``Judgement`` with ``error`` set."""
        body = build_body(request, self.model, self.max_tokens)
        key = cache_key(body)
        hit = self.cache.get(key) if self.cache is not None else None
        cached = hit is not None
        try:
            if hit is not None:
                self.cache_hits += 1
                message = hit[0]
            else:
                message = await self._call(body, key, semaphore)
            scores, review = parse_reply(message)
        except JudgeError as e:
            log.warning("judge: question %r not scored (%s)", request.question_id, e)
            return Judgement(request, None, error=e.reason, cached=cached, judge_model=self.model)
        usage = usage_from_message(message) or Usage()
        if request.model_first:  # the judge scored (model, reference)
            scores = (scores[1], scores[0])
        return Judgement(request, scores, review=review, cached=cached, usage=usage, judge_model=self.model)

    async def _call(
        self, body: dict[str, Any], key: str, semaphore: asyncio.Semaphore | None
    ) -> dict[str, Any]:
        if self._fatal is not None:
            raise self._fatal
        try:
            # the slot first: requests waiting for one hold no budget; BudgetExceeded before sending
            return await self.paid_message(body, key, slot=semaphore)
        except ApiCallError as e:
            raise JudgeError(e.reason, e.detail) from None
        except ApiFatalError as e:
            self._fatal = e
            raise

    async def judge_all(
        self, requests: Sequence[JudgeRequest], cache_file: str | Path | None = None
    ) -> list[Judgement]:
        """Every request, at most ``concurrency`` in flight, results in request order.

        Requests with the same body are judged once (sent together, each would be paid for);
        the others reuse that judgement as a cached one. A fatal error (budget exhausted, bad
        credentials) is raised only after every request already sent has returned, so each
        paid reply is in the cache for the rerun; after an :class:`ApiFatalError` nothing
        more is sent.

        ``cache_file`` (for a judge built without a cache): the request cache of this call,
        closed at its end and created only once the model check passed, so a refused start
        leaves no new file behind. The model is checked unless every reply is stored.
        """
        if cache_file is not None and self.cache is not None:
            raise ValueError(f"cache_file={cache_file}: this judge already has a cache ({self.cache.path})")
        keys = [cache_key(build_body(r, self.model, self.max_tokens)) for r in requests]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        semaphore = asyncio.Semaphore(self.concurrency)
        try:
            if cache_file is not None and Path(cache_file).is_file():
                self.cache = RequestCache(cache_file)  # an earlier run's: are all replies stored?
            if self.cache is None or any(key not in self.cache for key in first):
                await self.check_model()  # before any paid work; ApiFatalError for a retired model
            if cache_file is not None and self.cache is None:
                self.cache = RequestCache(cache_file)
            results = await asyncio.gather(
                *(self.judge(requests[i], semaphore) for i in first.values()), return_exceptions=True
            )
        finally:
            await self.aclose()
            if cache_file is not None and self.cache is not None:
                self.cache.close()
                self.cache = None
        for r in results:
            if isinstance(r, BaseException):
                raise r
        judged = dict(zip(first, results, strict=True))
        out = []
        for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
            j = judged[key]
            assert isinstance(j, Judgement)
            out.append(j if first[key] == i else replace(j, request=request, cached=True, usage=Usage()))
        return out
