"""Claude as the teacher (``AsyncAnthropic``), and building the teacher a config chooses.

The teacher owns everything about paying for a reply: the request body, the cache lookup
(a stored reply is replayed, never bought twice), the budget reservation, the bounded
number of requests in flight, and one bounded call (:mod:`llava_lite.claude`: the SDK's
retries, a capped ``retry-after`` wait, a deadline on the whole call). A failed call is a
counted :class:`TeacherError`; an API that refuses the client (401 / 402 / 403 / 404), a
retired or unknown model, or an API that cannot be reached raises
:class:`~llava_lite.claude.client.ApiFatalError` for the run to stop on. A reply that does
not report its usage is charged its reserved worst case, so the budget cap holds. The API
key is never passed around by this code: the SDK reads it from the environment or its own
configuration unless a caller (a test) passes one explicitly, and it is never logged or
stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from llava_lite.claude.cache import RequestCache, request_key
from llava_lite.claude.client import ApiCallError, usage_from_message
from llava_lite.claude.paying import PaysForMessages
from llava_lite.claude.prices import Usage
from llava_lite.claude.settings import DEFAULT_MODEL
from llava_lite.generation.base import (
    BUILT_IN_TEACHER,
    RESPONSE_TYPES,
    TARGET_KEY,
    BatchSettings,
    BatchStats,
    GenerationRequest,
    Teacher,
    TeacherError,
    TeacherReply,
    teacher_from_target,
)
from llava_lite.generation.messages import (
    PAPER_CONTEXT,
    ContextOptions,
    build_request_body,
    few_shot_block,
    parse_reply,
)
from llava_lite.generation.prompts import PROMPT_VERSION, PromptSet, load_prompt_set
from llava_lite.generation.validation import is_clean_text
from llava_lite.symbolic import SymbolicContext

log = logging.getLogger(__name__)

TEACHERS = (BUILT_IN_TEACHER,)  # chosen by name; any other by a config `_target_` (build_teacher)


class ClaudeTeacher(PaysForMessages):
    """Turns a :class:`GenerationRequest` into turns through the Messages API."""

    name = "anthropic"
    reply_log = log

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        context: Mapping[str, ContextOptions] | None = None,
        prompt_version: str = PROMPT_VERSION,
        prompt_caching: bool = True,
        replay_only: bool = False,
        **paying: Any,
    ) -> None:
        """``paying``: :class:`~llava_lite.claude.paying.PaysForMessages`' settings (``max_tokens``,
        ``concurrency``, retries and timeouts, ``cache``, ``budget``, ``prices``, ``client_kwargs``)."""
        super().__init__(model, **paying)
        self.context = {**PAPER_CONTEXT, **(context or {})}
        self.prompt_version = prompt_version
        self.prompt_caching = prompt_caching
        self.prompts: dict[str, PromptSet] = {t: load_prompt_set(t, prompt_version) for t in RESPONSE_TYPES}
        # the few-shot block of each type, rendered once: part of every request's shared prefix
        self._examples = {t: few_shot_block(self.prompts[t], self.context[t]) for t in RESPONSE_TYPES}
        self.replay_only = replay_only  # batch mode: never fall back to a full-price live call
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self.batch_replies = 0
        self._bought_in_batches: set[str] = set()  # keys of replies bought in batches this run

    # ---- request identity ------------------------------------------------------------
    def body(self, request: GenerationRequest) -> dict[str, Any]:
        return build_request_body(
            request,
            self.prompts[request.response_type],
            self.model,
            request.max_tokens or self.max_tokens,
            self.context[request.response_type],
            self._examples[request.response_type],
            self.prompt_caching,
        )

    def key(self, request: GenerationRequest, body: dict[str, Any]) -> str:
        """The cache key of ``request`` sent as ``body`` (its :meth:`body`)."""
        return request_key(
            body,
            prompt_version=self.prompt_version,
            image_id=request.context.image_id,
            response_type=request.response_type,
            sample_index=request.sample_index,
            attempt=request.attempt,
        )

    # ---- the Teacher protocol --------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> TeacherReply:
        body = self.body(request)
        key = self.key(request, body)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            if key in self._bought_in_batches:
                self.batch_replies += 1
            else:
                self.cache_hits += 1
            message, batch = hit
        elif self.replay_only:
            raise TeacherError("no_batch_result", f"no stored reply for {key[:12]}")
        else:
            message, batch = await self._call(body, key), False
        return self._reply(message, request, cached=hit is not None, batch=batch)

    async def _call(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        try:
            return await self.paid_message(body, key, slot=self._semaphore)
        except ApiCallError as e:
            raise TeacherError(e.reason, e.detail) from None

    def _reply(
        self, message: dict[str, Any], request: GenerationRequest, cached: bool, batch: bool
    ) -> TeacherReply:
        usage = usage_from_message(message) or Usage()
        try:
            turns = parse_reply(message, request)
        except TeacherError as e:
            e.usage, e.cached, e.batch = usage, cached, batch
            raise
        model = message.get("model")  # shown in every output record: a string or ours
        return TeacherReply(
            turns=turns,
            model=model if isinstance(model, str) and model and is_clean_text(model) else self.model,
            usage=usage,
            cached=cached,
            batch=batch,
        )

    # ---- the PaidTeacher interface ---------------------------------------------------
    def shows(self, context: SymbolicContext, response_type: str) -> bool:
        options = self.context[response_type]
        return bool(context.render(captions=options.captions, boxes=options.boxes).strip())

    def use_cache(self, cache: RequestCache) -> None:
        self.cache = cache

    async def fill_by_batches(self, requests: list[GenerationRequest], settings: BatchSettings) -> BatchStats:
        """Buy replies in Message Batches into the cache; from then on :meth:`generate` only
        replays them (never a full-price live call)."""
        from llava_lite.generation.batches import BatchRunner

        runner = BatchRunner.from_settings(self, settings)
        stats = await runner.fill_cache(requests)
        self._bought_in_batches.update(runner.bought)
        self.replay_only = True
        return stats


def build_teacher(teacher: str | Mapping[str, Any], **kwargs: Any) -> Teacher:
    """``"anthropic"`` → :class:`ClaudeTeacher` (``kwargs`` as its constructor); a config node
    ``{_target_: <class path>, **arguments}`` → that teacher, built by ``hydra.utils.instantiate``
    (``kwargs`` added to its arguments; see :func:`~llava_lite.generation.base.teacher_from_target`).
    Teachers live where their data lives and are named in config, never imported here."""
    if isinstance(teacher, Mapping):
        return teacher_from_target(teacher, **kwargs)
    if teacher == BUILT_IN_TEACHER:
        return ClaudeTeacher(**kwargs)
    raise KeyError(
        f"unknown teacher {teacher!r}; valid names: {list(TEACHERS)}, any other teacher is a config node "
        f"with {TARGET_KEY} (conf/teacher/)"
    )
