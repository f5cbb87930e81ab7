"""Make a tiny "pretrained LLM" offline: a short text-only warm-up on the world's language.

LLaVA starts from Vicuna, which already speaks; a random Llama does not. The warm-up trains
a small ``LlamaForCausalLM`` (next-token loss on every token) on the training split's
captions and instruction conversations rendered in the chat template, with the image
marker removed: the model learns the template, the vocabulary and what answers look like,
but nothing about any particular image (it never sees one), so answering still has to come
from the visual tokens in stage 2. Saved like a hub checkpoint (model + tokenizer), so the
LLaVA config names the folder as ``llm.name_or_path``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.conversation import encode_conversation, get_template, normalize_conversation
from llava_lite.modeling.tokenizer import build_tiny_tokenizer

IGNORE_INDEX = -100


@dataclass
class LLMWarmupSettings:
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 512
    max_position_embeddings: int = 512
    steps: int = 120
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 12
    weight_decay: float = 0.0
    template: str = "vicuna_v1"
    seed: int = 0


@dataclass
class LLMWarmupResult:
    path: Path
    losses: list[tuple[int, float]]  # (step, loss)
    documents: int
    seconds: float


def text_only(
    conversations: list[dict[str, str]], in_place_of_image: str = "", image_token: str = "<image>"
) -> list[dict[str, str]]:
    """A LLaVA conversation with the image marker replaced by ``in_place_of_image`` (text)."""
    return [
        {**turn, "value": turn["value"].replace(image_token, in_place_of_image).strip()}
        for turn in conversations
    ]


def build_documents(
    records: list[dict[str, Any]],
    captions: list[str],
    tokenizer,
    template: str,
    image_text: dict[str, str] | None = None,
) -> list[list[int]]:
    """Token ids of every text document: templated conversations and bare captions.

    ``image_text`` maps a record's ``image`` to a text put where the image was (a caption
    of it): the warm-up then teaches answering from what precedes the question, the skill
    stage 2 needs once image tokens take the caption's place.
    """
    image_text = image_text or {}
    docs = []
    for record in records:
        scene = image_text.get(str(record.get("image")), "")
        messages = normalize_conversation(text_only(record["conversations"], scene))
        try:
            docs.append(encode_conversation(messages, tokenizer, template).input_ids)
        except BadSampleError as e:  # teacher output always encodes; say which record did not
            raise ValueError(f"record {record.get('id')}: {e}") from e
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    docs += [
        bos + tokenizer(c, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for c in captions
    ]
    return docs


def warmup_llm(
    records: list[dict[str, Any]],
    captions: list[str],
    out_dir: str | Path,
    settings: LLMWarmupSettings,
    progress: Callable[[int, float], None] | None = None,
    image_text: dict[str, str] | None = None,
) -> LLMWarmupResult:
    """Train the tiny LLM (and its tokenizer) on the world's text; save both to ``out_dir``.

    ``image_text``: see :func:`build_documents`.
    """
    s = settings
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    # The template's fixed text is in every document: show it to the tokenizer often enough
    # that its words become single tokens.
    fixed = [get_template(s.template).default_system or "", "USER: ASSISTANT:"] * 200
    turns = [t["value"] for r in records[:3000] for t in text_only(r["conversations"])]
    sample_texts = turns + captions[:3000] + fixed
    tokenizer = build_tiny_tokenizer("sentencepiece", vocab_size=s.vocab_size, extra_texts=sample_texts)
    docs = build_documents(records, captions, tokenizer, s.template, image_text)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=s.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, s.warmup_steps, s.steps)
    losses: list[tuple[int, float]] = []
    model.train()
    for step in range(1, s.steps + 1):
        batch = [
            docs[i][: s.max_position_embeddings]
            for i in rng.sample(range(len(docs)), min(s.batch_size, len(docs)))
        ]
        width = max(len(d) for d in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros_like(ids)
        for i, d in enumerate(batch):
            ids[i, : len(d)] = torch.tensor(d)
            mask[i, : len(d)] = 1
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)  # [B, T]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append((step, loss.item()))
        if progress is not None:
            progress(step, loss.item())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return LLMWarmupResult(out, losses, len(docs), time.perf_counter() - start)
