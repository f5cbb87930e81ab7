"""The LLaVA record: what a source yields, and its conversation normalised once.

A source (:mod:`llava_lite.data.sources`) yields a :class:`RawRecord` per record, malformed
ones included. :func:`check_record` is the one place a record's structure is checked: it
normalises the conversation into ``(role, content)`` messages and keeps them on the record
(``RawRecord.messages``), so the dataset, the processor and the length grouping all read the
same messages and a map-style record is normalised once, when the dataset is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llava_lite.config import IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.templates import Message

__all__ = ["RawRecord", "check_record", "normalize_conversation"]

_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def normalize_conversation(
    conversations: Any, image_token: str = IMAGE_TOKEN, has_image: bool = False
) -> list[Message]:
    """LLaVA ``conversations`` → validated ``(role, content)`` messages.

    Roles alternate user/assistant (after an optional leading system message) and end with
    the assistant. A leading assistant turn is dropped, as LLaVA's ``preprocess`` does (some
    ShareGPT records in ``llava_v1_5_mix665k.json`` open with a "gpt" turn). With an image,
    the first user turn carries exactly one ``image_token``, moved to the front and followed
    by a newline as LLaVA does ("<image>\\nquestion"); a record with an image but no marker
    gets one. Without an image, no marker may appear. An empty answer is rejected
    (``empty_answer``): it would train only an end-of-turn token.
    """
    if not isinstance(conversations, list) or not conversations:
        raise BadSampleError("no_conversations", "'conversations' must be a non-empty list")
    messages: list[Message] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadSampleError("no_conversations", f"turn {i} is not {{'from': ..., 'value': str}}")
        role = _ROLE_ALIASES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise BadSampleError("not_alternating", f"turn {i} has unknown speaker {turn.get('from')!r}")
        messages.append((role, turn["value"]))
    system = [messages.pop(0)] if messages[0][0] == "system" else []
    if messages and messages[0][0] == "assistant":
        messages.pop(0)
    if not any(role == "assistant" for role, _ in messages):
        raise BadSampleError("no_assistant_turn", "the conversation has no assistant ('gpt') turn")
    for i, (role, _) in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise BadSampleError(
                "not_alternating", f"turn {i + len(system)} is {role!r}, expected {expected!r}"
            )
    if len(messages) % 2:
        raise BadSampleError("not_alternating", "the conversation ends with a user turn")
    for i, (role, content) in enumerate(messages):
        if role == "assistant" and not content.strip():
            raise BadSampleError("empty_answer", f"turn {i + len(system)} (assistant) has no text")

    markers = sum(content.count(image_token) for _, content in messages)
    if has_image:
        if markers > 1:
            raise BadSampleError("image_token_mismatch", f"{markers} {image_token} markers for one image")
        if markers == 1 and image_token not in messages[0][1]:
            raise BadSampleError("image_token_mismatch", f"{image_token} is not in the first user turn")
        question = messages[0][1].replace(image_token, "").strip()
        messages[0] = ("user", f"{image_token}\n{question}")
    elif markers:
        raise BadSampleError("image_token_mismatch", f"{image_token} marker but the record has no image")
    return system + messages


@dataclass
class RawRecord:
    """One record as read, before any tokenisation or image loading."""

    record: dict[str, Any] | None
    source: str  # the file or shard it came from
    index: int  # position within that file (list index or line number - 1)
    image_bytes: bytes | None = None  # set when the image travels with the record (WebDataset)
    error: BadSampleError | None = None
    # set by check_record: the normalised conversation, and the image token it was normalised for
    messages: list[Message] | None = None
    messages_image_token: str | None = None

    @property
    def record_id(self) -> str:
        if self.record is not None and self.record.get("id") is not None:
            return str(self.record["id"])
        return f"#{self.index}"

    @property
    def has_image(self) -> bool:
        return self.record is not None and bool(self.record.get("image"))

    @property
    def image_path(self) -> str:
        """The record's one image path; a list of exactly one path is accepted too."""
        assert self.record is not None
        image = self.record["image"]
        if isinstance(image, list):
            if len(image) != 1:
                raise BadSampleError(
                    "image_token_mismatch", f"{len(image)} images; one image per record is supported"
                )
            image = image[0]
        if not isinstance(image, str):
            raise BadSampleError("missing_image", f"'image' is {type(image).__name__}, not a path")
        return image


def check_record(raw: RawRecord, image_token: str = IMAGE_TOKEN) -> list[Message]:
    """Structural checks that need no tokenizer, and the normalised messages they produce.

    The messages are kept on ``raw``, so checking the same record again (for the same image
    token) normalises nothing twice. Raises a ``BadSampleError`` that names record and file.
    """
    if raw.messages is not None and raw.messages_image_token == image_token:
        return raw.messages
    try:
        if raw.error is not None:
            raise raw.error
        assert raw.record is not None
        if raw.has_image:
            _ = raw.image_path  # validates the field
        messages = normalize_conversation(raw.record.get("conversations"), image_token, raw.has_image)
    except BadSampleError as err:
        raise err.located(raw.record_id, raw.source) from None
    raw.messages, raw.messages_image_token = messages, image_token
    return messages
