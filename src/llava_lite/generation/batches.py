"""Message Batches mode: buy replies at the batch discount, into the same request cache.

``fill_cache`` submits every request that has no stored reply (``custom_id`` = its cache
key), records each batch id in the cache database the moment it exists, polls until the
batch ends, stores succeeded replies, and resubmits errored / expired / canceled ones, for a
bounded number of rounds. The pipeline then reads the replies exactly as in live mode. A
killed run finds its open batches in the database and collects them instead of paying
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llava_lite.generation.base import GenerationRequest
from llava_lite.generation.cost import BudgetExceeded
from llava_lite.generation.teacher import ClaudeTeacher, usage_from_message

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    submitted: int = 0
    succeeded: int = 0
    batches: int = 0
    unfinished: Counter[str] = field(default_factory=Counter)  # errored / expired / canceled, per type
    budget_stopped: bool = False


class BatchRunner:
    def __init__(
        self,
        teacher: ClaudeTeacher,
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

    async def fill_cache(self, requests: list[GenerationRequest]) -> BatchStats:
        """Make a stored reply exist for as many of ``requests`` as rounds and budget allow."""
        for batch_id, keys in self.cache.open_batches():  # left by an interrupted run
            log.info("resuming batch %s (%d requests)", batch_id, len(keys))
            await self._collect(batch_id, reserved_usd=0.0)
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
        return self.stats

    def _without_reply(self, requests: list[GenerationRequest]) -> list[tuple[str, dict[str, Any]]]:
        pending: dict[str, dict[str, Any]] = {}
        for request in requests:
            body = self.teacher.body(request)
            key = self.teacher.key(request, body)
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
        batch = await self.teacher.client.messages.batches.create(
            requests=[{"custom_id": key, "params": body} for key, body in chunk]
        )
        self.cache.add_batch(batch.id, [key for key, _ in chunk])
        self.stats.submitted += len(chunk)
        self.stats.batches += 1
        log.info("submitted batch %s with %d requests", batch.id, len(chunk))
        await self._collect(batch.id, reserved)

    async def _collect(self, batch_id: str, reserved_usd: float) -> None:
        client = self.teacher.client
        deadline = time.monotonic() + self.max_wait_s
        spent = 0.0
        try:
            batch = await client.messages.batches.retrieve(batch_id)
            while batch.processing_status != "ended":
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"batch {batch_id} still {batch.processing_status} after {self.max_wait_s}s"
                    )
                await asyncio.sleep(self.poll_interval_s)
                batch = await client.messages.batches.retrieve(batch_id)
            async for item in await client.messages.batches.results(batch_id):
                result = item.result
                if result.type == "succeeded":
                    message = result.message.model_dump(mode="json", exclude_none=True)
                    self.cache.put(item.custom_id, message, batch=True)
                    usage = usage_from_message(message)
                    self.teacher.usage = self.teacher.usage + usage
                    spent += self.teacher.prices.cost(usage, batch=True)
                    self.stats.succeeded += 1
                else:
                    self.stats.unfinished[result.type] += 1
            self.cache.mark_collected(batch_id)
        finally:
            self.teacher.budget.settle(reserved_usd, spent)
