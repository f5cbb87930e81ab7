"""Message Batches mode: buy replies at the batch discount, into the same request cache.

``fill_cache`` submits every request that has no stored reply (``custom_id`` = its cache
key), records each batch id in the cache database the moment it exists, polls until the
batch ends, stores succeeded replies, and resubmits errored / expired / canceled ones, for a
bounded number of rounds. The pipeline then reads the replies exactly as in live mode. A
killed run finds its open batches in the database and collects them instead of paying
again.

Results are read line by line from the results file and trusted only as far as they check
out: a line that is not JSON, a ``custom_id`` that was not submitted in that batch, a second
result for one id, or a "succeeded" item that is not a Message is counted and skipped; a
submitted id without a result is counted and requeued. Creating a batch is retried only
when the server says it did not take it (429 / 529): after a lost reply or a 5xx it may
exist already, and submitting again would pay for every request twice. A batch the API no
longer knows (404) is given up and its requests requeued. Polling stops at ``max_wait_s``; a
batch that ends without a ``results_url`` (or with one on another host: the SDK would send
it the API key) or an API error while collecting stops the run with a :class:`BatchError`
and leaves the batch open for the rerun to collect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anthropic
import httpx2

from llava_lite.claude.client import (
    ApiCallError,
    RetryOnlyUnprocessed,
    describe_error,
    message_problem,
    usage_from_message,
)
from llava_lite.claude.prices import Budget, BudgetExceeded, Prices, Usage
from llava_lite.generation.base import BatchSettings, BatchStats

if TYPE_CHECKING:
    from llava_lite.claude.cache import RequestCache

log = logging.getLogger(__name__)


class BuysReplies(Protocol):
    """What a batch runner needs of its buyer: the teacher (:class:`~llava_lite.generation.base.PaidTeacher`)
    or a judge (:class:`~llava_lite.evaluation.judging.PaidJudge`). ``client`` is built on first
    use, so it is read only when a batch is submitted or collected."""

    budget: Budget
    cache: RequestCache | None
    prices: Prices
    usage: Usage

    @property
    def client(self) -> anthropic.AsyncAnthropic: ...

    def body(self, request: Any) -> dict[str, Any]: ...

    def key(self, request: Any, body: dict[str, Any]) -> str: ...

    def worst_case_usd(self, body: dict[str, Any], batch: bool = False) -> float: ...


class BatchError(RuntimeError):
    """A batch that cannot be submitted or collected now; open batches stay open for a rerun."""


class BatchRunner:
    """Buys a paid teacher's (or judge's) replies in Message Batches, through its SDK client
    (``client``, which :class:`~llava_lite.claude.paying.PaysForMessages` builds on first use
    and so is no member of the ``PaidTeacher`` check: that would build it)."""

    def __init__(
        self,
        teacher: BuysReplies,
        *,
        max_requests_per_batch: int = 10_000,
        poll_interval_s: float = 30.0,
        max_wait_s: float = 26 * 3600.0,
        max_rounds: int = 3,
    ) -> None:
        if teacher.cache is None:
            raise ValueError("batch mode needs a request cache (results are collected into it)")
        self.teacher = teacher
        self.cache = teacher.cache
        self.max_requests_per_batch = max_requests_per_batch
        self.poll_interval_s = poll_interval_s
        self.max_wait_s = max_wait_s
        self.max_rounds = max_rounds
        self.stats = BatchStats()
        self._bodies: dict[str, dict[str, Any]] = {}  # key -> body, to charge a reply without usage
        self.bought: set[str] = set()  # keys whose replies this runner stored (bought, or collected)

    @classmethod
    def from_settings(cls, teacher: BuysReplies, settings: BatchSettings) -> BatchRunner:
        """A runner with the ``batch.*`` settings of a run's config."""
        return cls(
            teacher,
            max_requests_per_batch=settings.max_requests_per_batch,
            poll_interval_s=settings.poll_interval_s,
            max_wait_s=settings.max_wait_s,
            max_rounds=settings.max_rounds,
        )

    async def fill_cache(self, requests: Sequence[Any]) -> BatchStats:
        """Make a stored reply exist for as many of ``requests`` as rounds and budget allow."""
        try:
            await self._fill(requests)
        except (anthropic.APIError, ApiCallError, json.JSONDecodeError) as e:
            if isinstance(e, anthropic.APIStatusError):
                detail = describe_error(e, self.teacher.client)
            elif isinstance(e, ApiCallError):
                detail = str(e)
            elif isinstance(e, anthropic.APIConnectionError):
                detail = "no connection, or every attempt timed out"
            else:
                detail = f"a reply that is not the expected JSON ({type(e).__name__})"
            raise BatchError(f"Message Batches API: {detail}; a rerun collects the open batches") from None
        return self.stats

    async def _fill(self, requests: Sequence[Any]) -> None:
        self._without_reply(requests)  # learns every request's body first
        for batch_id, keys in self.cache.open_batches():  # left by an interrupted run
            log.info("resuming batch %s (%d requests)", batch_id, len(keys))
            await self._collect(batch_id, keys, reserved_usd=0.0)
        for round_ in range(self.max_rounds):
            pending = self._without_reply(requests)
            if not pending or self.stats.budget_stopped:
                break
            log.info("batch round %d: %d requests without a stored reply", round_ + 1, len(pending))
            for start in range(0, len(pending), self.max_requests_per_batch):
                chunk, reserved = self._affordable(pending[start : start + self.max_requests_per_batch])
                if chunk:
                    await self._submit_and_collect(chunk, reserved)
                if self.stats.budget_stopped:
                    break

    def _without_reply(self, requests: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
        pending: dict[str, dict[str, Any]] = {}
        for request in requests:
            body = self.teacher.body(request)
            key = self.teacher.key(request, body)
            self._bodies[key] = body
            if key not in self.cache:
                pending[key] = body
        return list(pending.items())

    def _affordable(
        self, chunk: list[tuple[str, dict[str, Any]]]
    ) -> tuple[list[tuple[str, dict[str, Any]]], float]:
        kept, reserved = [], 0.0
        for key, body in chunk:
            usd = self.teacher.worst_case_usd(body, batch=True)
            try:
                self.teacher.budget.reserve(usd)
            except BudgetExceeded as e:
                log.warning("budget cap: not submitting %d more requests (%s)", len(chunk) - len(kept), e)
                self.stats.budget_stopped = True
                break
            kept.append((key, body))
            reserved += usd
        return kept, reserved

    async def _submit_and_collect(self, chunk: list[tuple[str, dict[str, Any]]], reserved: float) -> None:
        keys = [key for key, _ in chunk]
        client = self.teacher.client
        once = client.with_options(middleware=[RetryOnlyUnprocessed(), *client.middleware])  # outermost
        try:
            batch = await once.messages.batches.create(
                requests=[{"custom_id": key, "params": body} for key, body in chunk]
            )
        except BaseException:
            self.teacher.budget.settle(reserved, 0.0)
            raise
        if not isinstance(batch.id, str) or not batch.id:
            self.teacher.budget.settle(reserved, 0.0)
            raise BatchError(f"batches.create returned no batch id (status {batch.processing_status!r})")
        self.cache.add_batch(batch.id, keys)
        self.stats.submitted += len(chunk)
        self.stats.batches += 1
        log.info("submitted batch %s with %d requests", batch.id, len(chunk))
        await self._collect(batch.id, keys, reserved)

    async def _collect(self, batch_id: str, keys: list[str], reserved_usd: float) -> None:
        client = self.teacher.client
        deadline = time.monotonic() + self.max_wait_s
        spent = 0.0
        try:
            try:
                batch = await client.messages.batches.retrieve(batch_id)
            except anthropic.NotFoundError:  # e.g. deleted, or older than the API keeps batches
                log.warning("batch %s no longer exists; its %d requests are requeued", batch_id, len(keys))
                self.stats.unfinished["batch_not_found"] += len(keys)
                self.cache.mark_collected(batch_id)
                return
            while batch.processing_status != "ended":
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"batch {batch_id} still {batch.processing_status} after {self.max_wait_s}s"
                    )
                await asyncio.sleep(self.poll_interval_s)
                batch = await client.messages.batches.retrieve(batch_id)
            if not batch.results_url:
                raise BatchError(f"batch {batch_id} ended without a results_url; a rerun collects it")
            if not _same_origin(batch.results_url, str(client.base_url)):
                raise BatchError(  # the SDK would send the API key to whatever host it names
                    f"batch {batch_id}: results_url is not on the API host {client.base_url}; "
                    "credentials are not sent elsewhere"
                )
            expected, seen = set(keys), set[str]()
            try:
                async with asyncio.timeout(self.max_wait_s):  # a results file trickled forever
                    async with client.messages.batches.with_streaming_response.results(batch_id) as response:
                        lineno = 0
                        async for line in response.iter_lines():
                            lineno += 1
                            if line.strip():
                                where = f"batch {batch_id} results line {lineno}"
                                spent += self._take(where, line, expected, seen)
            except TimeoutError:
                raise TimeoutError(
                    f"results of batch {batch_id} not read within {self.max_wait_s}s"
                ) from None
            missing = len(expected - seen)
            if missing:
                log.warning("batch %s: no result for %d submitted requests (requeued)", batch_id, missing)
                self.stats.unfinished["missing"] += missing
            self.cache.mark_collected(batch_id)
        finally:
            self.teacher.budget.settle(reserved_usd, spent)

    def _take(self, where: str, line: str, expected: set[str], seen: set[str]) -> float:
        """Store one results line if it checks out; returns its cost."""
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            return self._skip(where, "malformed_line")
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if custom_id not in expected:
            return self._skip(where, "unknown_id")
        if custom_id in seen:
            return self._skip(where, "duplicate")
        seen.add(custom_id)
        result = item.get("result")
        kind = str(result.get("type")) if isinstance(result, dict) else "no_result"
        if kind != "succeeded":
            self.stats.unfinished[kind] += 1
            return 0.0
        message = result.get("message")
        if custom_id in self.cache:  # collected before an interruption: already counted and charged
            return 0.0
        problem = message_problem(message)
        if problem:
            log.warning("%s: %s (requeued; charged its worst case)", where, problem)
            self.stats.unfinished["malformed_result"] += 1
            return self._worst_case(custom_id)
        self.cache.put(custom_id, message, batch=True)
        self.bought.add(custom_id)
        self.stats.succeeded += 1
        usage = usage_from_message(message)
        if usage is None:
            log.warning("%s: no usable usage; charged its worst case", where)
            return self._worst_case(custom_id)
        self.teacher.usage = self.teacher.usage + usage
        return self.teacher.prices.cost(usage, batch=True)

    def _worst_case(self, key: str) -> float:
        """What a billed result of unknown size may have cost (0 for a request not in this run)."""
        body = self._bodies.get(key)
        return self.teacher.worst_case_usd(body, batch=True) if body is not None else 0.0

    def _skip(self, where: str, reason: str) -> float:
        log.warning("%s: skipped (%s)", where, reason)
        self.stats.skipped_results[reason] += 1
        return 0.0


def _same_origin(url: str, base_url: str) -> bool:
    """A relative URL, or one with the scheme, host and port of ``base_url``."""
    target, base = httpx2.URL(url), httpx2.URL(base_url)
    if target.is_relative_url:
        return True
    return (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)
