"""The bad-sample policy: every rejected record has a reason, a record id and a file.

Records are rejected, never silently repaired: with ``on_bad_sample="skip"`` a rejection
becomes a :class:`SkipReport` that travels with the batches (DataLoader workers are separate
processes) and is counted once per distinct record in the main process; with ``"raise"`` the
:class:`BadSampleError` propagates, naming the record and the file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("skip", "raise")
BAD_SAMPLE_REASONS = (
    "malformed_json",  # a JSONL line (or JSON list item) that is not a JSON object
    "no_conversations",  # missing, empty or non-list "conversations"
    "not_alternating",  # turns are not user/assistant/user/... ending with the assistant
    "no_assistant_turn",  # nothing to train on
    "image_token_mismatch",  # <image> markers do not match the record's image (none, or several)
    "missing_image",  # image file not found
    "unreadable_image",  # corrupt, truncated or not an image
    "missing_video",  # video file or frame folder not found
    "unreadable_video",  # not a video PyAV can open and decode, or a frame folder without readable images
    "short_video",  # fewer frames than min_frames (an empty video included)
    "label_mismatch",  # the template's turn boundaries do not survive tokenisation
    "empty_answer",  # an assistant turn with no text
    "special_token_text",  # a turn's text spells a special token or template marker ("</s>", "[/INST]")
    "too_long",  # over model_max_length (policy "skip" / "raise"), or the cut would split an image block
    "no_trained_tokens",  # after truncation no assistant token is left to train on
    "not_a_pair",  # a preference record without a prompt and two answers (llava_lite.data.preference)
    "identical_pair",  # a preference pair whose answers are the same text (or equally scored)
)
# How torch's DataLoader re-raises a worker's exception: ``type(message)``, the message ending
# with the original "...BadSampleError: <reason>: ..." line.
_RERAISED = re.compile(r"BadSampleError: ([a-z_]+): ")


def check_policy(on_bad_sample: str) -> str:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; valid: {list(BAD_SAMPLE_POLICIES)}")
    return on_bad_sample


class BadSampleError(ValueError):
    """A record that cannot become a training sample; ``reason`` is one of ``BAD_SAMPLE_REASONS``."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        record_id: str | None = None,
        source: str | None = None,
        policy: str | None = None,
    ):
        if reason not in BAD_SAMPLE_REASONS:
            # A DataLoader worker's error comes back as BadSampleError(<worker traceback>): keep
            # its type (so ``except BadSampleError`` works) and its whole message.
            found = _RERAISED.findall(reason) if not (detail or record_id or source) else []
            if not found or found[-1] not in BAD_SAMPLE_REASONS:
                raise ValueError(f"unknown bad-sample reason {reason!r}; valid: {list(BAD_SAMPLE_REASONS)}")
            self.reason, self.detail, self.record_id, self.source = found[-1], reason, None, None
            self.policy = "raise"  # it was raised
            super().__init__(reason)
            return
        if policy is not None:
            check_policy(policy)
        self.reason = reason
        self.detail = detail
        self.record_id = record_id
        self.source = source
        self.policy = policy
        super().__init__(self._message())

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None, str | None, str | None]]:
        # Exceptions pickle as type(*args); ours rebuild from their fields instead.
        return (type(self), (self.reason, self.detail, self.record_id, self.source, self.policy))

    def raises(self, on_bad_sample: str) -> bool:
        """Whether this rejection stops the run: its own ``policy`` (over-long samples follow
        ``data.overlong``), else the dataset's ``on_bad_sample``."""
        return (self.policy or on_bad_sample) == "raise"

    def _message(self) -> str:
        where = f"record {self.record_id!r} in {self.source}" if self.source else f"record {self.record_id!r}"
        return f"{self.reason}: {where}" + (f": {self.detail}" if self.detail else "")

    def located(self, record_id: str | None, source: str | None) -> BadSampleError:
        """The same error with the record id and file filled in where they were unknown."""
        return BadSampleError(
            self.reason, self.detail, self.record_id or record_id, self.source or source, self.policy
        )

    def report(self) -> SkipReport:
        return SkipReport(self.reason, str(self.record_id), str(self.source), self.detail)


@dataclass(frozen=True)
class SkipReport:
    """A picklable record of one skipped sample, carried from workers to the main process."""

    reason: str
    record_id: str
    source: str
    detail: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.reason, self.source, self.record_id)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class BadSampleCounter:
    """Counts distinct skipped records by reason.

    Deduplicated by (reason, file, record id), so a missing image met again in every epoch,
    or a report seen twice, is still one bad record.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], SkipReport] = {}

    def add(self, report: SkipReport, quiet: bool = False) -> bool:
        """Record a report; returns True (and logs it) the first time this record is reported."""
        if report.key() in self._seen:
            return False
        self._seen[report.key()] = report
        if not quiet:
            log.warning(
                "skipped bad sample (%s): record %r in %s%s",
                report.reason,
                report.record_id,
                report.source,
                f": {report.detail}" if report.detail else "",
            )
        return True

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self._seen.values()).items()))

    def reports(self) -> list[SkipReport]:
        return list(self._seen.values())

    def total(self) -> int:
        return len(self._seen)
