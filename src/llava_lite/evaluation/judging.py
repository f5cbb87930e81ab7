"""What every Claude judge shares: one request, one paid (or replayed) reply, one judgement.

A judge differs only in what it asks and how it reads the reply (:meth:`PaidJudge.body`,
:meth:`PaidJudge.key`, :meth:`PaidJudge.read`, :meth:`PaidJudge.failed`); the rest is here
once: the request cache lookup (a stored reply is replayed, never bought twice), one bounded
paid call through :class:`~llava_lite.claude.paying.PaysForMessages` (budget reservation,
reply stored before parsing), a latch that sends nothing more once the API refuses the
client, identical requests judged once, the model lifecycle check before any paid work,
and buying replies in Message Batches (:class:`~llava_lite.generation.batches.BatchRunner`,
the teacher's) into the same cache. A reply that yields no judgement is a
:class:`JudgeError` the judge turns into a counted failure, never a score.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiCallError, ApiFatalError
from llava_lite.claude.paying import PaysForMessages
from llava_lite.claude.replies import ReplyError
from llava_lite.generation.base import BatchSettings, BatchStats

log = logging.getLogger(__name__)

R = TypeVar("R")  # a request
J = TypeVar("J")  # its judgement


class JudgeError(ReplyError):
    """A judge reply (or call) that yields no judgement; ``reason`` is counted by the caller."""


class PaidJudge(PaysForMessages, Generic[R, J]):
    """Base of the Claude judges: subclasses say what a request asks and how a reply reads."""

    reply_label = "judge reply"

    def __init__(self, model: str, **paying: Any) -> None:
        """``paying``: :class:`~llava_lite.claude.paying.PaysForMessages`' settings."""
        super().__init__(model, **paying)
        self._fatal: ApiFatalError | None = None  # once the API refuses this client, send nothing more
        self.replay_only = False  # after buying in batches: never a full-price live call
        self.batch_replies = 0

    # ---- what a subclass defines -----------------------------------------------------
    def body(self, request: R) -> dict[str, Any]:
        """The complete ``messages.create`` body (also a Message Batches ``params``)."""
        raise NotImplementedError

    def key(self, request: R, body: dict[str, Any]) -> str:
        """The request cache key of ``request`` sent as ``body``."""
        raise NotImplementedError

    def read(self, request: R, message: dict[str, Any], cached: bool) -> J:
        """The judgement a reply holds, or :class:`JudgeError`."""
        raise NotImplementedError

    def failed(self, request: R, error: JudgeError, cached: bool) -> J:
        """The counted failure of ``request`` (no score)."""
        raise NotImplementedError

    def copied(self, judgement: J, request: R) -> J:
        """``judgement`` given again to an identical ``request`` (free: judged once)."""
        raise NotImplementedError

    # ---- judging ---------------------------------------------------------------------
    async def judge(self, request: R, semaphore: asyncio.Semaphore | None = None) -> J:
        """One judgement; API and parse failures become :meth:`failed` judgements."""
        body = self.body(request)
        key = self.key(request, body)
        hit = self.cache.get(key) if self.cache is not None else None
        cached = hit is not None
        try:
            if hit is not None:
                self.cache_hits += 1
                message = hit[0]
            elif self.replay_only:
                raise JudgeError("no_batch_result", f"no stored reply for {key[:12]}")
            else:
                message = await self._call(body, key, semaphore)
            return self.read(request, message, cached)
        except JudgeError as e:
            log.warning("judge: question %r not scored (%s)", getattr(request, "question_id", "?"), e)
            return self.failed(request, e, cached)

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

    def stored(self, requests: Sequence[R]) -> bool:
        """Whether the cache holds a reply for every request (then no model check is needed)."""
        return self.cache is not None and all(self.key(r, self.body(r)) in self.cache for r in requests)

    async def fill_by_batches(self, requests: Sequence[R], settings: BatchSettings) -> BatchStats:
        """Buy replies for ``requests`` in Message Batches into the cache; from then on
        :meth:`judge` only replays them (a request without a stored reply fails as
        ``no_batch_result``, never a full-price call)."""
        from llava_lite.generation.batches import BatchRunner

        runner = BatchRunner.from_settings(self, settings)
        stats = await runner.fill_cache(list(requests))
        self.batch_replies += stats.succeeded
        self.replay_only = True
        return stats

    async def judge_all(self, requests: Sequence[R], cache_file: str | Path | None = None) -> list[J]:
        """Every request, at most ``concurrency`` in flight, results in request order.

        Requests with the same body are judged once (sent together, each would be paid for);
        the others get a :meth:`copied` judgement. A fatal error (budget exhausted, bad
        credentials) is raised only after every request already sent has returned, so each
        paid reply is in the cache for the rerun; after an :class:`ApiFatalError` nothing
        more is sent.

        ``cache_file`` (for a judge built without a cache): the request cache of this call,
        closed at its end and created only once the model check passed, so a refused start
        leaves no new file behind. The model is checked unless every reply is stored.
        """
        if cache_file is not None and self.cache is not None:
            raise ValueError(f"cache_file={cache_file}: this judge already has a cache ({self.cache.path})")
        keys = [self.key(r, self.body(r)) for r in requests]
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
        judged: dict[str, Any] = dict(zip(first, results, strict=True))
        return [
            judged[key] if first[key] == i else self.copied(judged[key], request)
            for i, (request, key) in enumerate(zip(requests, keys, strict=True))
        ]
