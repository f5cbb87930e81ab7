"""Dollar cost from reported usage, prices per model id, and a hard budget.

Prices are USD per million tokens and belong to a model id: :data:`PRICES` holds the list
prices of the models this library knows (checked against Anthropic's price page when they
were added; they change, so check before a large run). :func:`prices_for` is asked at the
start of every paid run: a model without an entry is an error unless the run gives its
prices. Cache writes (5-minute) and reads are billed at their own rates; Message Batches
get a discount on everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields


@dataclass
class Usage:
    """Billed tokens of one reply or a run, as the Messages API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass
class Prices:
    """USD per million tokens."""

    input: float = 3.0
    output: float = 15.0
    cache_write: float = 3.75
    cache_read: float = 0.30
    batch_discount: float = 0.5  # batch price = (1 - discount) x standard price

    def cost(self, usage: Usage, batch: bool = False) -> float:
        usd = (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_input_tokens * self.cache_write
            + usage.cache_read_input_tokens * self.cache_read
        ) / 1e6
        return usd * (1.0 - self.batch_discount) if batch else usd


# List prices per model id (USD per million tokens; 5-minute cache writes).
PRICES: dict[str, Prices] = {
    "claude-sonnet-4-6": Prices(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-5": Prices(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20),
    "claude-haiku-4-5": Prices(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10),
    "claude-opus-4-6": Prices(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
}


def prices_for(model: str, given: Prices | None = None) -> Prices:
    """``given`` when set, else the table entry for ``model``; ``ValueError`` names the setting."""
    if given is not None:
        return given
    try:
        return PRICES[model]
    except KeyError:
        raise ValueError(
            f"model={model!r} has no price in llava_lite.claude.prices.PRICES; valid: {sorted(PRICES)} "
            "(or give its prices: {input, output, cache_write, cache_read} USD per million tokens)"
        ) from None


class BudgetExceeded(Exception):
    """No new request fits in the remaining budget; finished work is kept."""


class Budget:
    """Spent dollars plus reservations for requests in flight, against a hard cap.

    A request reserves its worst case (estimated input, ``max_tokens`` output) before it is
    sent and settles to the billed cost when it returns, so concurrent requests cannot
    jointly spend past the cap (up to the error of the input-token estimate). A request
    that does not fit only because others are in flight waits for them (:meth:`acquire`):
    they usually settle far below their worst case, so the run stops only when the next
    request cannot fit even with nothing in flight.
    """

    def __init__(self, limit_usd: float | None) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._waiters: list[asyncio.Future[None]] = []

    def _fits(self, usd: float, reserved_usd: float) -> bool:
        return self.limit_usd is None or self.spent_usd + reserved_usd + usd <= self.limit_usd

    def _exceeded(self, usd: float) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget ${self.limit_usd:.4f}: spent ${self.spent_usd:.4f}, in flight ${self.reserved_usd:.4f}, "
            f"next request may cost up to ${usd:.4f}"
        )

    def reserve(self, usd: float) -> None:
        """Reserve now or raise :class:`BudgetExceeded` (for a batch submitted as a whole)."""
        if not self._fits(usd, self.reserved_usd):
            raise self._exceeded(usd)
        self.reserved_usd += usd

    async def acquire(self, usd: float) -> None:
        """Reserve ``usd``, waiting while requests in flight may still leave room for it;
        :class:`BudgetExceeded` once it cannot fit even if they cost nothing more."""
        while not self._fits(usd, self.reserved_usd):
            if self.reserved_usd <= 0.0 or not self._fits(usd, 0.0):
                raise self._exceeded(usd)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self.reserved_usd += usd

    def settle(self, reserved_usd: float, spent_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += spent_usd
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)
