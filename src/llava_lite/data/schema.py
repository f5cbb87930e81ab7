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
    conversations: Any,
    image_token: str = IMAGE_TOKEN,
    has_image: bool | int = False,
    video_token: str | None = None,
    has_video: bool = False,
) -> list[Message]:
    """LLaVA ``conversations`` → validated ``(role, content)`` messages.

    Roles alternate user/assistant (after an optional leading system message) and end with
    the assistant. A leading assistant turn is dropped, as LLaVA's ``preprocess`` does (some
    ShareGPT records in ``llava_v1_5_mix665k.json`` open with a "gpt" turn). With one image,
    the first user turn carries exactly one ``image_token``, moved to the front and followed
    by a newline as LLaVA does ("<image>\\nquestion"); a record with an image but no marker
    gets one. With several images (``has_image`` is their count), the text holds one marker
    per image, where each image belongs (LLaVA-Interleave / OneVision), left in place. A video
    is marked by one ``video_token``, or, in a record without images, by one ``image_token``
    (LLaVA-Video-178K's records write ``<image>``); the marker moves to the front of the first
    user turn like a single image's. Without an image, no marker may appear. An empty answer
    is rejected (``empty_answer``): it would train only an end-of-turn token.
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

    images = int(has_image)
    if has_video:
        if video_token is None:
            raise BadSampleError(
                "image_token_mismatch", "the record has a video, but this model reads no video"
            )
        if not images:  # LLaVA-Video-178K marks its video with <image>
            messages = [(role, content.replace(image_token, video_token)) for role, content in messages]
        messages = _marker_first(messages, video_token, "video")
    elif video_token is not None and any(video_token in content for _, content in messages):
        raise BadSampleError("image_token_mismatch", f"{video_token} marker but the record has no video")
    if images == 1:
        messages = _marker_first(messages, image_token, "image")
    else:
        markers = sum(content.count(image_token) for _, content in messages)
        if markers != images:
            have = f"{images} images" if images else "the record has no image"
            raise BadSampleError("image_token_mismatch", f"{markers} {image_token} markers but {have}")
    return system + messages


def _marker_first(messages: list[Message], marker: str, kind: str) -> list[Message]:
    """One ``marker`` for the record's one image or video, at the front of the first user turn."""
    markers = sum(content.count(marker) for _, content in messages)
    if markers > 1:
        raise BadSampleError("image_token_mismatch", f"{markers} {marker} markers for one {kind}")
    if markers == 1 and marker not in messages[0][1]:
        raise BadSampleError("image_token_mismatch", f"{marker} is not in the first user turn")
    question = messages[0][1].replace(marker, "").strip()
    return [("user", f"{marker}\n{question}"), *messages[1:]]


@dataclass
class RawRecord:
    """One record as read, before any tokenisation or image loading."""

    record: dict[str, Any] | None
    source: str  # the file or shard it came from
    index: int  # position within that file (list index or line number - 1)
    # set when the images travel with the record (WebDataset), one entry per image, in order
    image_bytes: list[bytes] | None = None
    video_bytes: bytes | None = None  # the video file's bytes, when it travels with the record
    error: BadSampleError | None = None
    # set by check_record: the normalised conversation, and the image and video tokens it was normalised for
    messages: list[Message] | None = None
    messages_tokens: tuple[str, str | None] | None = None

    @property
    def record_id(self) -> str:
        if self.record is not None and self.record.get("id") is not None:
            return str(self.record["id"])
        return f"#{self.index}"

    @property
    def has_image(self) -> bool:
        return self.record is not None and bool(self.record.get("image"))

    @property
    def has_video(self) -> bool:
        return self.record is not None and bool(self.record.get("video"))

    @property
    def image_paths(self) -> list[str]:
        """The record's image paths: ``"image"`` is one path or a list of them (several images)."""
        assert self.record is not None
        image = self.record.get("image")
        paths = image if isinstance(image, list) else [image] if image else []
        bad = [p for p in paths if not isinstance(p, str) or not p]
        if bad:
            raise BadSampleError("missing_image", f"'image' holds {bad[0]!r}, not a path")
        return paths

    @property
    def image_path(self) -> str:
        """The record's one image path (a list of exactly one path is accepted too)."""
        paths = self.image_paths
        if len(paths) != 1:
            raise BadSampleError("image_token_mismatch", f"{len(paths)} images where one was expected")
        return paths[0]

    @property
    def video_path(self) -> str:
        """The record's video: a file or a folder of frame images (LLaVA-Video-178K's ``"video"``)."""
        assert self.record is not None
        video = self.record.get("video")
        if not isinstance(video, str) or not video:
            raise BadSampleError("missing_video", f"'video' is {video!r}, not a path")
        return video


def check_record(
    raw: RawRecord, image_token: str = IMAGE_TOKEN, video_token: str | None = None
) -> list[Message]:
    """Structural checks that need no tokenizer, and the normalised messages they produce.

    The messages are kept on ``raw``, so checking the same record again (for the same image
    token) normalises nothing twice. Raises a ``BadSampleError`` that names record and file.
    """
    if raw.messages is not None and raw.messages_tokens == (image_token, video_token):
        return raw.messages
    try:
        if raw.error is not None:
            raise raw.error
        assert raw.record is not None
        images = len(raw.image_paths) if raw.image_bytes is None else len(raw.image_bytes)
        if raw.has_video:
            _ = raw.video_path  # validates the field
        messages = normalize_conversation(
            raw.record.get("conversations"), image_token, images, video_token, raw.has_video
        )
    except BadSampleError as err:
        raise err.located(raw.record_id, raw.source) from None
    raw.messages, raw.messages_tokens = messages, (image_token, video_token)
    return messages
