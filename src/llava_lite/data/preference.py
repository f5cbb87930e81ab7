"""Preference pairs: the field's record formats, read as one LLaVA conversation and a rejected answer.

A pair is a prompt (one or more turns, with the images' markers) and two answers to its last
user turn. Every format below becomes a LLaVA record whose ``conversations`` end with the
chosen answer and whose ``rejected`` holds the other, so the chosen side goes through the
same checks, template, image slots and over-long policy as any stage-2 sample, and the
rejected side differs only in its last turn:

- **TRL** ``prompt`` / ``chosen`` / ``rejected`` (+ ``images`` or ``image``): plain strings
  (LLaVA-NeXT's DPO files too), or TRL's conversational lists of ``{"role", "content"}``
  messages whose content may be a list of ``{"type": "image"}`` / ``{"type": "text"}`` parts;
- **RLAIF-V**: ``question`` / ``chosen`` / ``rejected`` with ``image`` (a path, or
  ``{"path": ...}``) or ``image_path``;
- **VLFeedback**: ``prompt`` and ``completions``, each with a ``response`` and a numeric
  ``score`` or ``annotations`` whose ``Rating`` values are averaged; the best and the worst
  completion make the pair;
- this library's ``llava-lite-pairs`` output is the TRL string form with judge scores beside.

A prompt without an ``<image>`` marker gets one in front of its first turn for each image, as
LLaVA's records do. Bad pairs are bad samples (``llava_lite.data.bad_samples``): a record
that is no pair (``not_a_pair``), equal answers (``identical_pair``), an empty answer
(``empty_answer``), and everything a stage-2 record can be (a missing image, too long, ...).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import torch

from llava_lite.config import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleError, SkipReport
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.dataset import LlavaDataset, LlavaStreamingDataset
from llava_lite.data.processor import LlavaProcessor
from llava_lite.data.schema import RawRecord, check_record
from llava_lite.templates import Message

__all__ = [
    "PreferenceCollator",
    "PreferenceDataset",
    "PreferenceStreamingDataset",
    "as_llava_pair",
    "build_pair_sample",
    "check_pair",
]

PAIR_KEY = "llava_lite_pair"  # set on a record already read as a LLaVA pair


def as_llava_pair(record: dict[str, Any], image_token: str = IMAGE_TOKEN) -> dict[str, Any]:
    """Any supported preference record → ``{"id", "image"?, "video"?, "conversations", "rejected"}``."""
    if record.get(PAIR_KEY):
        return record
    if "completions" in record:
        chosen, rejected = _best_and_worst(record["completions"])
        prompt: Any = record.get("prompt")
    else:
        chosen, rejected = record.get("chosen"), record.get("rejected")
        prompt = record.get("prompt", record.get("question"))
    if prompt is None or chosen is None or rejected is None:
        missing = [
            k for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if v is None
        ]
        raise BadSampleError(
            "not_a_pair",
            f"no {missing}; valid: prompt (or question) with chosen and rejected, or prompt with completions",
        )
    out: dict[str, Any] = {PAIR_KEY: True}
    if record.get("id") is not None:
        out["id"] = record["id"]
    images = _image_paths(record)
    if images:
        out["image"] = images[0] if len(images) == 1 else images
    if record.get("video"):
        out["video"] = record["video"]
    turns = _turns(prompt, "prompt", image_token)
    if not turns or turns[-1][0] != "user":
        raise BadSampleError("not_a_pair", "the prompt must end with a user turn")
    out["conversations"] = [
        {"from": "human" if role == "user" else role, "value": text} for role, text in turns
    ] + [{"from": "gpt", "value": _answer(chosen, "chosen", image_token)}]
    out["rejected"] = _answer(rejected, "rejected", image_token)
    return out


def _image_paths(record: dict[str, Any]) -> list[str]:
    """``images`` (TRL), ``image`` (LLaVA, RLAIF-V: a path, a list, or ``{"path": ...}``), ``image_path``."""
    value = record.get("images", record.get("image", record.get("image_path")))
    items = value if isinstance(value, list) else [value] if value else []
    paths = []
    for item in items:
        path = item.get("path") if isinstance(item, dict) else item
        if not isinstance(path, str) or not path:
            raise BadSampleError("missing_image", f"an image entry is {item!r}, not a path")
        paths.append(path)
    return paths


def _turns(prompt: Any, field: str, image_token: str) -> list[Message]:
    """A string (one user turn) or TRL's message list → ``(role, text)`` turns."""
    if isinstance(prompt, str):
        return [("user", prompt)]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise BadSampleError(
            "not_a_pair", f"{field!r} is {type(prompt).__name__}, not a string or a message list"
        )
    turns: list[Message] = []
    for m in prompt:
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise BadSampleError("not_alternating", f"{field!r} has a message with role {role!r}")
        turns.append((role, _content_text(m.get("content"), field, image_token)))
    return turns


def _content_text(content: Any, field: str, image_token: str) -> str:
    """A message's content: a string, or TRL / OpenAI parts where each image part is a marker."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadSampleError("not_a_pair", f"{field!r} has message content {content!r}")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append(image_token)
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            raise BadSampleError("not_a_pair", f"{field!r} has a content part {part!r}")
    return "\n".join(parts) if any(p == image_token for p in parts) else "".join(parts)


def _answer(value: Any, field: str, image_token: str) -> str:
    """An answer: a string, or TRL's list of one assistant message."""
    if isinstance(value, str):
        return value
    turns = _turns(value, field, image_token)
    if len(turns) != 1 or turns[0][0] != "assistant":
        raise BadSampleError(
            "not_a_pair", f"{field!r} must be one assistant message, got {len(turns)} messages"
        )
    return turns[0][1]


def _best_and_worst(completions: Any) -> tuple[str, str]:
    """VLFeedback: the highest- and lowest-scored responses (a tie is no preference)."""
    if not isinstance(completions, list) or len(completions) < 2:
        raise BadSampleError("not_a_pair", "'completions' must list at least two responses")
    scored = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str):
            raise BadSampleError("not_a_pair", f"completion {i} has no 'response' text")
        scored.append((_score(c, i), i, c["response"]))
    best, worst = max(scored), min(scored)
    if best[0] == worst[0]:
        raise BadSampleError("identical_pair", f"every completion scores {best[0]}: no preference")
    return best[2], worst[2]


def _score(completion: dict[str, Any], index: int) -> float:
    if isinstance(completion.get("score"), int | float):
        return float(completion["score"])
    ratings = []
    for aspect in (completion.get("annotations") or {}).values():
        rating = aspect.get("Rating") if isinstance(aspect, dict) else None
        try:
            ratings.append(float(rating))
        except (TypeError, ValueError):
            continue  # "N/A" and the like: not a rating
    if not ratings:
        raise BadSampleError("not_a_pair", f"completion {index} has no numeric score or annotation rating")
    return sum(ratings) / len(ratings)


def check_pair(
    raw: RawRecord, image_token: str = IMAGE_TOKEN, video_token: str | None = None
) -> tuple[list[Message], list[Message]]:
    """The chosen and the rejected conversation of a pair record (read once, then kept on ``raw``)."""
    try:
        if raw.error is None and raw.record is not None:
            raw.record = as_llava_pair(raw.record, image_token)
    except BadSampleError as err:
        raise err.located(raw.record_id, raw.source) from None
    chosen = check_record(raw, image_token, video_token)
    assert raw.record is not None
    answer = raw.record["rejected"]
    problem = None
    if not answer.strip():
        problem = BadSampleError("empty_answer", "the rejected answer has no text")
    elif answer.strip() == chosen[-1][1].strip():
        problem = BadSampleError("identical_pair", "chosen and rejected answers are the same text")
    if problem is not None:
        raise problem.located(raw.record_id, raw.source)
    return chosen, [*chosen[:-1], ("assistant", answer)]


def build_pair_sample(
    raw: RawRecord, processor: LlavaProcessor, image_root: str | None = None
) -> dict[str, Any]:
    """``{"id", "source", "chosen": sample, "rejected": sample}``; the images are opened once and
    shared by both sides. Raises a ``BadSampleError`` that names record and file."""
    chosen, rejected = check_pair(raw, processor.image_token, processor.video_token)
    try:
        sources = raw.image_bytes if raw.image_bytes is not None else raw.image_paths
        images = processor.prepare_images(sources, image_root)
        video = raw.video_bytes if raw.video_bytes is not None else raw.video_path if raw.has_video else None
        prepared_video = None if video is None else processor.prepare_video(video, image_root)
        sides = {
            name: processor.process_messages(
                messages, images, raw.record_id, image_root, video=prepared_video
            )
            for name, messages in (("chosen", chosen), ("rejected", rejected))
        }
    except BadSampleError as err:
        raise err.located(raw.record_id, raw.source) from None
    for side in sides.values():
        side["id"], side["source"] = raw.record_id, raw.source
    return {"id": raw.record_id, "source": raw.source, **sides}


def pair_key(sample: dict[str, Any]) -> str:
    """A pair's key across files: its file's name and its record id (ids repeat across files)."""
    return f"{posixpath.basename(str(sample.get('source', '')))}:{sample.get('id', '')}"


class PreferenceDataset(LlavaDataset):
    """Pair records in memory: ``LlavaDataset``'s bad-sample policy, sampler and length grouping
    (by the chosen conversation's length)."""

    check_raw = staticmethod(check_pair)
    build = staticmethod(build_pair_sample)


class PreferenceStreamingDataset(LlavaStreamingDataset):
    """Pair records streamed with ``LlavaStreamingDataset``'s exact, resumable sharding."""

    build = staticmethod(build_pair_sample)


class PreferenceCollator:
    """Pairs → one batch of the chosen sequences, then the rejected ones, in the same pair order.

    ``inner`` is the stage's collator (padded :class:`LlavaCollator` or packed
    ``PackingCollator``); each side is admitted by it, and a pair one of whose sides it refuses
    is skipped whole, under its report. Adds ``pairs`` (P), ``chosen_tokens`` (the chosen
    side's trained tokens, for the optional SFT term) and ``sequence_ids [R, T]``: the
    sequence (0..P-1 chosen, P..2P-1 rejected) each token belongs to, -1 for padding. ``ids``
    are the pairs' ids, ``pair_keys`` their keys across files (:func:`pair_key`).
    """

    def __init__(self, inner: LlavaCollator) -> None:
        self.inner = inner

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        skipped: list[SkipReport] = []
        positions: list[Any] = []
        chosen: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for item in items:
            skipped += item.get("skipped", [])
            if "stream_position" in item:
                positions.append(item["stream_position"])
            if "chosen" not in item:
                continue
            sides = [self.inner.admit(item["chosen"]), self.inner.admit(item["rejected"])]
            refused = [s for s in sides if isinstance(s, SkipReport)]
            if refused:
                skipped.append(refused[0])
                continue
            chosen.append(sides[0])
            rejected.append(sides[1])
        pairs = len(chosen)
        batch = self.inner.assemble(chosen + rejected, skipped, positions)
        if "sequence_ids" not in batch:  # padded rows: row r is sequence r
            mask = batch["attention_mask"].bool()  # [2P, T]
            rows = torch.arange(mask.shape[0])[:, None].expand_as(mask)
            batch["sequence_ids"] = rows.masked_fill(~mask, -1)  # [2P, T]
        batch["ids"] = [str(s.get("id", "")) for s in chosen]
        batch["pair_keys"] = [pair_key(s) for s in chosen]
        batch["pairs"] = pairs
        sides_of = batch["sequence_ids"][:, 1:]  # [R, T-1]: the sequence of each shifted label
        labels = batch["labels"][:, 1:]
        batch["chosen_tokens"] = int(((sides_of >= 0) & (sides_of < pairs) & (labels != IGNORE_INDEX)).sum())
        return batch
