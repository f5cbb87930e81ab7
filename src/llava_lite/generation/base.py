"""The small interface every teacher implements (Claude, offline rules, recorded replies).

The pipeline owns everything around a teacher (prompt versions, caching, validation,
output); a teacher only turns one request into question/answer turns or raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llava_lite.claude.prices import Usage
from llava_lite.symbolic import SymbolicContext

RESPONSE_TYPES = ("conversation", "detail", "complex_reasoning")


@dataclass(frozen=True)
class GenerationRequest:
    context: SymbolicContext
    response_type: str  # one of RESPONSE_TYPES
    sample_index: int = 0  # several samples of one type per image get different indices
    instruction: str | None = None  # the fixed question for "detail" (drawn by the pipeline)
    attempt: int = 0  # retries after a rejected reply are new requests with their own cache key


@dataclass
class TeacherReply:
    turns: list[tuple[str, str]]  # (question, answer) pairs, in order; no "<image>" marker
    model: str
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None
    cached: bool = False  # replayed from the request cache: already paid for, costs nothing now
    batch: bool = False  # paid at the Message Batches discount


class TeacherError(Exception):
    """A reply that is not data (refusal, cut by max_tokens, unparseable); ``reason`` is counted."""

    def __init__(
        self, reason: str, message: str = "", usage: Usage | None = None, cached: bool = False, batch: bool = False
    ) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.usage = usage or Usage()  # a refused or truncated reply is still billed
        self.cached = cached
        self.batch = batch


class Teacher(Protocol):
    name: str

    async def generate(self, request: GenerationRequest) -> TeacherReply: ...
