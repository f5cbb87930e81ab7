"""Paying for one reply: what the teacher and the judge share around :func:`create_message`.

:class:`PaysForMessages` holds the client (built on first use, so a dry run needs no
credentials), the prices of its model (:func:`~llava_lite.claude.prices.prices_for`,
checked when it is built), the budget, the request cache and the token estimator, and
pays for a reply in :meth:`~PaysForMessages.paid_message`: a free slot first, then the
worst case reserved (waiting while requests in flight may leave room), one bounded call,
the reply stored before anything parses it, its usage charged (its worst case when it
reports none, or when a 200 could not be read at all). :meth:`~PaysForMessages.check_model`
asks the Models API before any paid work. When calls keep failing to connect with no reply
since, the API is declared unreachable (:class:`ApiFatalError`) instead of counting every
remaining request as a failure.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import anthropic

from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import (
    ApiCallError,
    ApiFatalError,
    build_client,
    call_deadline_s,
    create_message,
    usage_from_message,
)
from llava_lite.claude.estimate import TokenEstimator
from llava_lite.claude.lifecycle import check_model
from llava_lite.claude.prices import Budget, Prices, Usage, prices_for

log = logging.getLogger(__name__)

UNREACHABLE_AFTER = 3  # consecutive calls that failed to connect (each after the SDK's retries)


class PaysForMessages:
    """Base of the teacher and the judge: their constructors pass these settings on and map
    the :class:`ApiCallError` that :meth:`paid_message` lets through to their own errors
    (:class:`ApiFatalError` stops the run)."""

    reply_label = "reply"  # names a reply in the log
    reply_log = log  # the subclass's module logger, so its records keep their logger name

    model: str
    max_tokens: int
    concurrency: int
    cache: RequestCache | None
    budget: Budget
    prices: Prices
    deadline_s: float
    paid_requests: int
    cache_hits: int
    usage: Usage
    lifecycle: str | None
    _client: anthropic.AsyncAnthropic | None
    _client_kwargs: dict[str, Any]
    _estimator: TokenEstimator | None
    _connect_failures: int

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = 1024,
        concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 120.0,
        max_retry_wait_s: float = 60.0,
        cache: RequestCache | None = None,
        budget: Budget | None = None,
        prices: Prices | None = None,
        estimator: TokenEstimator | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Sets the attributes above. ``ValueError`` for limits that bound nothing
        (:func:`call_deadline_s`), for ``concurrency < 1`` and for a model without prices (none
        given and no entry in the table); no budget: no cap. ``client_kwargs`` (``base_url``,
        ``api_key`` for tests and proxies) go to ``AsyncAnthropic`` only."""
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency}; valid: >= 1")
        self.model = model
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.prices = prices_for(model, prices)
        self.cache = cache
        self.budget = budget or Budget(None)
        self._estimator = estimator
        self._client = client
        # Held only to build the client: the SDK's limits, and base_url / api_key for tests and
        # proxies (without api_key the SDK reads its environment / config).
        self._client_kwargs = {
            "max_retries": max_retries,
            "timeout_s": timeout_s,
            "max_retry_wait_s": max_retry_wait_s,
            **(client_kwargs or {}),
        }
        self.deadline_s = call_deadline_s(max_retries, timeout_s, max_retry_wait_s)
        self.paid_requests = 0
        self.cache_hits = 0
        self.usage = Usage()  # billed tokens of this run (replays from the cache cost nothing)
        self.lifecycle = None  # set by check_model
        self._connect_failures = 0

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """Built on first use, so a dry run needs no credentials."""
        if self._client is None:
            self._client = build_client(**self._client_kwargs)
        return self._client

    @property
    def estimator(self) -> TokenEstimator:
        if self._estimator is None:
            self._estimator = TokenEstimator()
        return self._estimator

    def worst_case_usd(self, body: dict[str, Any], batch: bool = False) -> float:
        return self.prices.cost(self.estimator.worst_case(body), batch=batch)

    async def check_model(self) -> str:
        """The model's lifecycle stage, asked once (see :func:`~llava_lite.claude.lifecycle.check_model`)."""
        if self.lifecycle is None:
            self.lifecycle = await check_model(self.client, self.model)
        return self.lifecycle

    async def paid_message(
        self, body: dict[str, Any], key: str, slot: contextlib.AbstractAsyncContextManager[Any] | None = None
    ) -> dict[str, Any]:
        """One paid call of :func:`create_message` under ``key``.

        Waits for ``slot`` (a semaphore, when given) first, so queued requests hold no
        reservation; then reserves the request's worst case (:meth:`Budget.acquire`:
        ``BudgetExceeded`` before anything is sent), calls, stores the reply in the cache
        before anything parses it (a bad reply is still paid for), counts it, and charges its
        reported usage, or its worst case when it reports none or cannot be read. The
        reservation is settled whatever happens.
        """
        reserved = self.worst_case_usd(body)
        async with slot if slot is not None else contextlib.nullcontext():
            await self.budget.acquire(reserved)
            spent = 0.0
            try:
                message = await self._create(body)
                if self.cache is not None:
                    self.cache.put(key, message)  # stored before parsing: a bad reply is still paid for
                self.paid_requests += 1
                usage = usage_from_message(message)
                if usage is None:
                    self.reply_log.warning(
                        "%s %s reports no usable usage; charged its worst case", self.reply_label, key[:12]
                    )
                    spent = reserved
                else:
                    self.usage = self.usage + usage
                    spent = self.prices.cost(usage)
                return message
            except ApiCallError as e:
                if e.billed:  # a 200 nobody can read was still billed: count it, charge its worst case
                    self.paid_requests += 1
                    spent = reserved
                    self.reply_log.warning(
                        "%s %s: %s; charged its worst case", self.reply_label, key[:12], e.detail
                    )
                raise
            finally:
                self.budget.settle(reserved, spent)

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        """:func:`create_message`, counting calls that could not connect since the last reply."""
        try:
            message = await create_message(self.client, body, self.deadline_s)
        except ApiCallError as e:
            if e.reason == "api_connection":
                self._connect_failures += 1
                if self._connect_failures >= UNREACHABLE_AFTER:
                    raise ApiFatalError(
                        "api_unreachable",
                        f"{self._connect_failures} requests in a row could not connect to "
                        f"{self.client.base_url}; check base_url / ANTHROPIC_BASE_URL and the network",
                    ) from None
            else:
                self._connect_failures = 0
            raise
        self._connect_failures = 0
        return message

    async def aclose(self) -> None:
        """Close the client if one was built; a later call builds a new one."""
        if self._client is not None:
            await self._client.close()
            self._client = None
