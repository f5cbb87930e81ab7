"""Checks that a teacher's turns make a usable LLaVA training sample.

The pipeline turns (question, answer) pairs into LLaVA ``conversations`` (``<image>`` added
once, to the first human turn) and then checks the result: alternating turns, the image
marker exactly once and in the first human turn, length bounds, and no leak of the symbolic
source (the teacher read captions and boxes; the student sees pixels, so "the caption says"
or ``[0.123, 0.456, ...]`` would teach it to talk about text it never saw), and text that
is not clean Unicode (lone surrogates cannot be written as UTF-8; control characters are
noise). Repeated questions are dropped, not rejected; a sample left with no turns is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llava_lite.config import IMAGE_TOKEN

DEFAULT_LEAK_PATTERNS = (
    r"\bcaptions?\b",
    r"\bbounding[- ]box(es)?\b",
    r"\bcoordinates?\b",
    r"\bannotations?\b",
    r"\bsymbolic\b",
    r"\[\s*-?\d*\.\d+\s*,\s*-?\d*\.\d+",  # [0.123, 0.456, ...
)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def is_clean_text(text: str) -> bool:
    """Encodable as UTF-8 (no lone surrogates) and free of control characters but tab/newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None


class SampleRejected(Exception):
    """A generated sample that must not become data; ``reason`` is counted in the summary."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


@dataclass
class ValidationConfig:
    min_turns: int = 1
    max_turns: int = 10
    min_question_chars: int = 5
    max_question_chars: int = 600
    min_answer_chars: int = 1
    max_answer_chars: int = 6000
    leak_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_LEAK_PATTERNS))


def normalise_question(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", re.sub(r"\s+", " ", text.lower())).strip()


def dedupe_turns(
    turns: Iterable[tuple[str, str]], seen: set[str] | None = None
) -> tuple[list[tuple[str, str]], int]:
    """Drop turns whose question was already asked (here or in ``seen``); returns kept, dropped."""
    turns = list(turns)
    seen = set() if seen is None else seen
    kept: list[tuple[str, str]] = []
    for q, a in turns:
        key = normalise_question(q)
        if key in seen:
            continue
        seen.add(key)
        kept.append((q, a))
    return kept, len(turns) - len(kept)


def to_conversations(turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """LLaVA ``conversations``: human/gpt alternating, ``<image>`` on its own line before the first question."""
    if any(IMAGE_TOKEN in q or IMAGE_TOKEN in a for q, a in turns):
        raise SampleRejected("image_token_in_text", "the teacher wrote the image marker itself")
    conv: list[dict[str, str]] = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q.strip()}" if i == 0 else q.strip()})
        conv.append({"from": "gpt", "value": a.strip()})
    return conv


class SampleValidator:
    def __init__(self, config: ValidationConfig | None = None) -> None:
        self.config = config or ValidationConfig()
        self._leaks = [re.compile(p, re.IGNORECASE) for p in self.config.leak_patterns]

    def validate(self, conversations: Sequence[dict[str, str]]) -> None:
        """Raise :class:`SampleRejected` naming the first problem found."""
        cfg = self.config
        if not conversations:
            raise SampleRejected("empty", "no turns")
        if len(conversations) % 2:
            raise SampleRejected("not_alternating", "odd number of turns")
        for i, turn in enumerate(conversations):
            expected = "human" if i % 2 == 0 else "gpt"
            if turn.get("from") != expected or not isinstance(turn.get("value"), str):
                raise SampleRejected(
                    "not_alternating", f"turn {i} is {turn.get('from')!r}, expected {expected!r}"
                )
        n_turns = len(conversations) // 2
        if not cfg.min_turns <= n_turns <= cfg.max_turns:
            raise SampleRejected("turn_count", f"{n_turns} turns, allowed {cfg.min_turns}..{cfg.max_turns}")
        markers = [t["value"].count(IMAGE_TOKEN) for t in conversations]
        if sum(markers) != 1 or markers[0] != 1:
            raise SampleRejected(
                "image_token", f"'{IMAGE_TOKEN}' counts per turn {markers}; need one, in turn 0"
            )
        for i, turn in enumerate(conversations):
            if not is_clean_text(turn["value"]):
                raise SampleRejected("invalid_text", f"turn {i}: lone surrogates or control characters")
            text = turn["value"].replace(IMAGE_TOKEN, "").strip()
            if turn["from"] == "human":
                lo, hi, what = cfg.min_question_chars, cfg.max_question_chars, "question"
            else:
                lo, hi, what = cfg.min_answer_chars, cfg.max_answer_chars, "answer"
            if len(text) < lo:
                raise SampleRejected(f"{what}_too_short", f"turn {i}: {len(text)} chars < {lo}")
            if len(text) > hi:
                raise SampleRejected(f"{what}_too_long", f"turn {i}: {len(text)} chars > {hi}")
            for pattern in self._leaks:
                m = pattern.search(text)
                if m:
                    raise SampleRejected("source_leak", f"turn {i} mentions {m.group(0)!r}")
