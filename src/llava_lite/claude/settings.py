"""One typed settings dataclass for a paid Claude client; the teacher and judge extend it.

No secrets live here: the API key comes only from the environment or the SDK's own
configuration. ``prices`` null means the entry for ``model`` in
:data:`~llava_lite.claude.prices.PRICES` (a model without one is refused at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llava_lite.claude.prices import Prices

# A current, active Sonnet that accepts a forced tool call and no thinking by default
# (claude-sonnet-5-5 refuses forced tool_choice; claude-sonnet-5 thinks by default).
DEFAULT_MODEL = "claude-sonnet-4-6"


@dataclass
class ClaudeSettings:
    model: str = DEFAULT_MODEL
    max_tokens: int = 1024
    concurrency: int = 8  # requests in flight
    max_retries: int = 4  # the SDK's retries per request (408 / 409 / 429 / 5xx / timeouts)
    timeout_s: float = 120.0  # wall clock of one attempt, the whole reply included
    max_retry_wait_s: float = 60.0  # longest retry-after honoured; one call takes at most
    # (max_retries + 1) * timeout_s + max_retries * max_retry_wait_s
    base_url: str | None = None  # None: the SDK default or ANTHROPIC_BASE_URL
    prices: Prices | None = None  # None: PRICES[model]

    def paying(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~llava_lite.claude.paying.PaysForMessages` that these
        settings hold (the model, ``base_url``, cache and budget are passed on their own)."""
        return {
            "max_tokens": self.max_tokens,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
            "max_retry_wait_s": self.max_retry_wait_s,
            "prices": self.prices,
        }

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency}; valid: >= 1")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}; valid: >= 1")
