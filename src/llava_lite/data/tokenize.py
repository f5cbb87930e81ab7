"""Tokenisation and labels: normalised messages to token ids with exact, per-turn label masking.

A template (:mod:`llava_lite.templates`) renders a conversation as text segments, each
trained or not. :func:`encode_conversation` tokenises the whole text once and finds every
segment boundary in token ids: the text up to the boundary is tokenised on its own and must
be an exact prefix of the full token sequence. If a boundary does not survive tokenisation
(a merge across it), the sample is rejected with ``label_mismatch`` — it is never trained
with wrong or empty labels, unlike LLaVA's "tokenization mismatch ... (ignored)".

The same boundary check makes generation consistent with training: the prompt built by
``llava_lite.templates.prompt_for_generation`` is the tokenised text up to an assistant
answer, which in training was verified to be a prefix of the full sequence.

Tokens: ``<image>`` is a special token here and the text is tokenised once, as
transformers' ``LlavaProcessor`` does; LLaVA's ``tokenizer_image_token`` tokenises the text
after the image on its own, so a non-legacy sentencepiece tokenizer (Vicuna v1.5) gives it
one extra ``"▁"`` token there. Text that spells a token the tokenizer splits out whole
(``</s>``, ``<|im_end|>``) or a template marker (``[/INST]``) is rejected
(``special_token_text``): tokenised, it would be that token, an end of turn inside an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava_lite.config import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.templates import (
    ChatTemplate,
    Message,
    TemplateError,
    get_template,
    tokenize_texts,
)

__all__ = [
    "EncodedConversation",
    "check_reserved_text",
    "encode_conversation",
    "expand_image_slots",
    "fit_length",
]

log = logging.getLogger(__name__)


@dataclass
class EncodedConversation:
    """Token ids and labels of one conversation; ``turn_spans`` are the trained [start, end) ranges."""

    input_ids: list[int]
    labels: list[int]
    turn_spans: list[tuple[int, int]]


def encode_conversation(
    messages: Sequence[Message], tokenizer: Any, template: str | ChatTemplate, image_token: str = IMAGE_TOKEN
) -> EncodedConversation:
    """Token ids and labels for a whole conversation; labels are ``IGNORE_INDEX`` outside answers.

    Raises ``BadSampleError("label_mismatch")`` when a segment boundary does not fall on a
    token boundary, and ``BadSampleError("no_trained_tokens")`` when nothing is trained.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    try:
        segments = tpl.segments(messages, tokenizer, add_generation_prompt=False, image_token=image_token)
    except TemplateError as err:
        raise BadSampleError(err.reason, str(err)) from None
    # Only boundaries between trained and untrained text matter; the text up to each one and
    # the whole text are tokenised in one batch, after the BOS the whole text gets (untrained).
    ends = [
        i
        for i in range(len(segments))
        if i == len(segments) - 1 or segments[i + 1].trained != segments[i].trained
    ]
    texts = ["".join(s.text for s in segments[: i + 1]) for i in ends]
    prefixes = tokenize_texts(tokenizer, texts, tpl.bos_ids(tokenizer, texts[-1]) if texts else [])
    input_ids = prefixes[-1]
    labels = [IGNORE_INDEX] * len(input_ids)
    spans: list[tuple[int, int]] = []
    start = 0
    for i, prefix in zip(ends, prefixes, strict=True):
        seg = segments[i]
        if input_ids[: len(prefix)] != prefix:
            raise BadSampleError(
                "label_mismatch",
                f"{tpl.name}: the text before segment {i + 1} does not end on a token boundary",
            )
        end = len(prefix)
        if seg.trained:
            if end <= start:
                raise BadSampleError("label_mismatch", f"{tpl.name}: an assistant turn tokenised to nothing")
            labels[start:end] = input_ids[start:end]
            spans.append((start, end))
        start = end
    if not spans:
        raise BadSampleError("no_trained_tokens", f"{tpl.name}: no assistant token to train on")
    return EncodedConversation(input_ids, labels, spans)


def check_reserved_text(
    messages: Sequence[Message], reserved: Sequence[str], markers: str | Sequence[str]
) -> None:
    """Reject text that spells one of ``reserved`` (``ChatTemplate.reserved_text``), the image
    and video markers excepted (``llava_lite.data.schema.normalize_conversation`` places and
    counts them)."""
    allowed = {markers} if isinstance(markers, str) else set(markers)
    for i, (role, content) in enumerate(messages):
        for token in reserved:
            if token not in allowed and token in content:
                raise BadSampleError(
                    "special_token_text",
                    f"turn {i} ({role}) spells {token!r}, a special token or template marker; "
                    "tokenised it would be that token, not text",
                )


def expand_image_slots(
    ids: list[int],
    labels: list[int],
    image_token_id: int,
    num_image_tokens: int | Sequence[int],
    n_images: int | None = None,
) -> tuple[list[int], list[int]]:
    """Each image-token id becomes ignored image slots: ``num_image_tokens`` each, or the n-th
    of a list of counts for the n-th image (images of different sizes, or videos)."""
    counts = (
        [num_image_tokens] * (n_images or 0) if isinstance(num_image_tokens, int) else list(num_image_tokens)
    )
    found = ids.count(image_token_id)
    if found != len(counts):
        raise BadSampleError(
            "image_token_mismatch", f"{found} image tokens after tokenisation, {len(counts)} images"
        )
    out_ids: list[int] = []
    out_labels: list[int] = []
    slots = iter(counts)
    for tok, lab in zip(ids, labels, strict=True):
        if tok == image_token_id:
            n = next(slots)
            out_ids += [tok] * n
            out_labels += [IGNORE_INDEX] * n
        else:
            out_ids.append(tok)
            out_labels.append(lab)
    return out_ids, out_labels


def fit_length(
    ids: list[int],
    labels: list[int],
    limit: int,
    overlong: str,
    slot_ids: int | Sequence[int],
    record_id: str,
) -> tuple[list[int], list[int]]:
    """Ids and labels within ``limit`` tokens under the ``overlong`` policy (``LlavaProcessor``'s)."""
    if len(ids) <= limit:
        return ids, labels
    why = f"{len(ids)} tokens > model_max_length={limit}"
    if overlong != "truncate":  # "skip" / "raise": the policy of this rejection
        raise BadSampleError("too_long", f"{why} (overlong={overlong})", policy=overlong)
    slots = {slot_ids} if isinstance(slot_ids, int) else set(slot_ids)
    image_end = max((i + 1 for i, t in enumerate(ids) if t in slots), default=0)
    if image_end > limit:
        raise BadSampleError("too_long", f"{why}; truncating would cut the image block")
    cut = sum(lab != IGNORE_INDEX for lab in labels[limit:])
    ids, labels = ids[:limit], labels[:limit]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise BadSampleError("no_trained_tokens", f"nothing to train in the first {limit} tokens")
    log.warning(
        "truncated record %r (overlong=truncate): %s; %d trained tokens cut, the answer is trained without its end",
        record_id,
        why,
        cut,
    )
    return ids, labels
