"""Dollar cost from reported usage, and a hard budget that in-flight requests cannot overrun.

Prices are per million tokens and come from config (they change; check the provider's
price page). Cache writes and reads are billed at their own rates; Message Batches get a
discount on everything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Usage:
    """Billed tokens of one reply or a run, as the Messages API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


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


class BudgetExceeded(Exception):
    """No new request fits in the remaining budget; finished work is kept."""


class Budget:
    """Spent dollars plus reservations for requests in flight, against a hard cap.

    A request reserves its worst case (estimated input, ``max_tokens`` output) before it is
    sent and settles to the billed cost when it returns, so concurrent requests cannot
    jointly spend past the cap (up to the error of the input-token estimate).
    """

    def __init__(self, limit_usd: float | None) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0

    def reserve(self, usd: float) -> None:
        if self.limit_usd is not None and self.spent_usd + self.reserved_usd + usd > self.limit_usd:
            raise BudgetExceeded(
                f"budget ${self.limit_usd:.4f}: spent ${self.spent_usd:.4f}, in flight ${self.reserved_usd:.4f}, "
                f"next request may cost up to ${usd:.4f}"
            )
        self.reserved_usd += usd

    def settle(self, reserved_usd: float, spent_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += spent_usd
