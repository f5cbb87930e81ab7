"""Reading a Messages API reply: its stop reason, the forced tool call, the text fallback.

The teacher and the judge both force one tool (``tool_choice`` names it) and read its
input; a reply carrying text instead is handed back for the caller's own text fallback.
Only ``text`` and ``tool_use`` blocks are read; thinking blocks that may come first (and
other block types) are skipped. Only a reply that says it finished (:data:`FINISHED_STOPS`)
can be data: one cut by ``max_tokens``, refused, paused, or with a missing or unknown stop
reason raises, with the reason named once in :data:`FAILED_STOPS`, as does one with several
calls of the tool or with neither a call nor text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# stop reasons of a finished answer; any other (or none) means the reply is not data
FINISHED_STOPS = frozenset({"end_turn", "tool_use", "stop_sequence"})
# the counted reason of each known unfinished stop; any other stop counts as "unexpected_stop"
FAILED_STOPS = {
    "max_tokens": "max_tokens",
    "refusal": "refusal",
    "model_context_window_exceeded": "context_window",
    "pause_turn": "pause_turn",
}


class ReplyError(Exception):
    """A reply (or call) that is not data; ``reason`` is what the caller counts."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


@dataclass(frozen=True)
class ReplyContent:
    """What a finished reply holds: the forced tool's input when it was called, else the text."""

    called: bool
    tool_input: Any = None  # the call's ``input`` as sent (any JSON value); checked by the caller
    text: str = ""  # the text blocks, joined and stripped, when the tool was not called


def stop_problem(message: Mapping[str, Any]) -> str | None:
    """The counted reason why ``message`` did not finish, or None when it did."""
    stop = message.get("stop_reason")
    if stop in FINISHED_STOPS:
        return None
    return FAILED_STOPS.get(str(stop), "unexpected_stop")


def read_reply(
    message: Mapping[str, Any], tool_name: str, error: type[ReplyError] = ReplyError
) -> ReplyContent:
    """The tool call or the text of a finished reply; otherwise raises ``error(reason, ...)``."""
    problem = stop_problem(message)
    if problem is not None:
        raise error(problem, f"stop_reason={message.get('stop_reason')!r}")
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    calls = [b for b in blocks if b.get("type") == "tool_use" and b.get("name") == tool_name]
    if len(calls) > 1:
        raise error("malformed_reply", f"{len(calls)} calls of {tool_name}, expected one")
    if calls:
        return ReplyContent(called=True, tool_input=calls[0].get("input"))
    text = "\n".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text").strip()
    if not text:
        raise error("empty_reply", "no text or tool_use block")
    return ReplyContent(called=False, text=text)
