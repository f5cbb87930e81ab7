"""Make a tiny "pretrained LLM" offline: a text-only warm-up on the world's language.

LLaVA starts from Vicuna, which already reads, refers and answers; a random 4-layer Llama
does not, and learning to find one object among several takes more steps than stage 2 can
pay for on CPU, so this warm-up teaches it on text, without pixels (measurements behind the
recipe: ``docs/demo.md``):

* the image's place holds **scene cells**: one position per grid cell, in the raster order
  of the vision tower's nine patch tokens, so where a cell is is where its token is, as for
  patch tokens. Each cell's input vector is learned: the sum of a size, a colour and a shape
  embedding, or one "nothing" vector, read from the same captions and boxes a teacher sees;
* documents are the instruction conversations (chat template) and the stage-1 caption pairs
  (``plain`` template) with scene cells where ``<image>``'s tokens go; next-token loss on
  every text token;
* batches are drawn at random, so every step mixes captions, descriptions and conversations,
  and each is cut into length-sorted micro-batches whose summed loss is the batch's token
  mean: the random batch's gradient with less padding.

The cell embeddings are dropped afterwards. LLaVA's stage 1 then does what the paper says it
does, train the projector to turn visual features into vectors the frozen LLM reads, and
stage 2 tunes both on images. Saved like a hub checkpoint (model + tokenizer with the image
token), so the LLaVA config names the folder as ``llm.name_or_path``.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from llava_lite.config import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.sampler import ModalityLengthGroupedSampler
from llava_lite.data.schema import normalize_conversation
from llava_lite.data.tokenize import encode_conversation
from llava_lite.demo.vision import LOOKS
from llava_lite.modeling.llava import splice_features
from llava_lite.modeling.llm import prepare_tokenizer
from llava_lite.modeling.tokenizer import build_tiny_tokenizer
from llava_lite.synthetic.scene import COLORS, SHAPES, SIZES
from llava_lite.templates import get_template

NOTHING_LOOK = LOOKS.index(None)  # an empty cell's index


@dataclass
class LLMWarmupSettings:
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 512
    max_position_embeddings: int = 512
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    template: str = "vicuna_v1"
    # Random batches measured better than length-grouped ones (docs/demo.md); micro-batches
    # keep a random batch's gradient and pad less.
    group_by_length: bool = False
    micro_batches: int = 4
    seed: int = 0


@dataclass
class LLMWarmupResult:
    path: Path
    losses: list[tuple[int, float]]  # (step, loss)
    documents: int
    seconds: float


@dataclass
class Document:
    id: str
    input_ids: list[int]  # one IMAGE_TOKEN id per grid cell where the image goes
    cells: list[int]  # index into LOOKS of each cell, row-major (demo.vision.cell_targets)
    image_id: int  # IMAGE_TOKEN's id

    @property
    def labels(self) -> list[int]:
        """Next-token targets: every text token, never the cells."""
        return [IGNORE_INDEX if t == self.image_id else t for t in self.input_ids]


class SceneEmbedding(nn.Module):
    """Input vectors for scene cells: size + colour + shape embeddings, or a learned "nothing"."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.size = nn.Embedding(len(SIZES), hidden_size)
        self.color = nn.Embedding(len(COLORS), hidden_size)
        self.shape = nn.Embedding(len(SHAPES), hidden_size)
        self.nothing = nn.Parameter(torch.zeros(hidden_size))
        for p in (self.size.weight, self.color.weight, self.shape.weight, self.nothing):
            nn.init.normal_(p, std=0.02)  # the LLM's own initializer range
        looks = [look or (SIZES[0], next(iter(COLORS)), SHAPES[0]) for look in LOOKS]
        self.register_buffer("size_of", torch.tensor([SIZES.index(x[0]) for x in looks]), persistent=False)
        self.register_buffer(
            "color_of", torch.tensor([list(COLORS).index(x[1]) for x in looks]), persistent=False
        )
        self.register_buffer("shape_of", torch.tensor([SHAPES.index(x[2]) for x in looks]), persistent=False)

    def forward(self, cells: Tensor) -> Tensor:
        """``cells``: indices into LOOKS, any shape [...] -> vectors [..., D]."""
        x = (
            self.size(self.size_of[cells])
            + self.color(self.color_of[cells])
            + self.shape(self.shape_of[cells])
        )
        return torch.where((cells == NOTHING_LOOK).unsqueeze(-1), self.nothing, x)


def turn_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every turn's text without the image marker (to train the tokenizer on)."""
    return [t["value"].replace(IMAGE_TOKEN, "").strip() for r in records for t in r["conversations"]]


def build_documents(
    records: list[tuple[dict[str, Any], str]], scenes: dict[str, list[str]], tokenizer
) -> list[Document]:
    """Encode ``(record, template)`` pairs with one image position per cell of the record's scene.

    ``scenes`` maps a record's ``image`` to its 9 cells (``demo.vision.cell_targets``); the tokenizer
    must know ``IMAGE_TOKEN``.
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    docs = []
    for record, template in records:
        name = str(record.get("image"))
        if name not in scenes:
            raise ValueError(f"record {record.get('id')}: no scene cells for image {name!r}")
        cells = list(scenes[name])
        try:
            messages = normalize_conversation(record["conversations"], IMAGE_TOKEN, has_image=True)
            encoded = encode_conversation(messages, tokenizer, template, IMAGE_TOKEN)
        except BadSampleError as e:  # teacher output always encodes; say which record did not
            raise ValueError(f"record {record.get('id')}: {e}") from e
        at = encoded.input_ids.index(image_id)
        ids = encoded.input_ids[:at] + [image_id] * len(cells) + encoded.input_ids[at + 1 :]
        docs.append(Document(str(record.get("id")), ids, cells, image_id))
    return docs


def _embed(model: LlamaForCausalLM, scene: SceneEmbedding, ids: Tensor, docs: list[Document]) -> Tensor:
    """Token embeddings with the image positions holding each document's scene cells, in order."""
    # [B, T]: nine per row, one run where build_documents put the one <image> marker
    slots = ids == docs[0].image_id
    cells = scene(torch.tensor([d.cells for d in docs]))  # [B, 9, D]
    return splice_features(model.get_input_embeddings()(ids), slots, cells)  # [B, T, D]


def _batches(docs: list[Document], batch_size: int, seed: int, by_length: bool) -> Iterator[list[int]]:
    """Endless batches: random, or of similar-length documents (a caption is a quarter of a
    conversation), which pads less, as LLaVA's length grouping does."""
    if not by_length:
        rng = random.Random(seed)
        while True:
            yield rng.sample(range(len(docs)), min(batch_size, len(docs)))
    sampler = ModalityLengthGroupedSampler(
        [len(d.input_ids) for d in docs], [True] * len(docs), batch_size, seed=seed
    )
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from sampler.global_batches()


def _collate(collate: LlavaCollator, docs: list[Document]) -> dict[str, Any]:
    """Pad documents into one batch; an over-long one raises, naming the record."""
    padded = collate(
        [{"id": d.id, "input_ids": torch.tensor(d.input_ids), "labels": torch.tensor(d.labels)} for d in docs]
    )
    if padded["skipped"]:
        raise ValueError(f"LLM warm-up: {padded['skipped'][0]}")
    return padded


def warmup_llm(
    conversations: list[dict[str, Any]],
    captions: list[dict[str, Any]],
    scenes: dict[str, list[int]],
    out_dir: str | Path,
    settings: LLMWarmupSettings,
    progress: Callable[[int, float], None] | None = None,
) -> LLMWarmupResult:
    """Train the tiny LLM (and its tokenizer) on the world's text; save both to ``out_dir``.

    ``conversations``: instruction records (``settings.template``); ``captions``: stage-1
    caption records (``plain``); ``scenes``: scene cells per image (``demo.vision.cell_targets``).
    """
    s = settings
    if s.micro_batches < 1:
        raise ValueError(f"micro_batches must be at least 1, got {s.micro_batches}")
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    # The template's fixed text is in every document: show it to the tokenizer often enough
    # that its words become single tokens.
    fixed = [get_template(s.template).default_system or "", "USER: ASSISTANT:"] * 200
    texts = turn_texts(conversations[:3000] + captions[:3000])
    tokenizer = build_tiny_tokenizer("sentencepiece", vocab_size=s.vocab_size, extra_texts=texts + fixed)
    image_id = prepare_tokenizer(tokenizer, IMAGE_TOKEN)
    docs = build_documents(
        [(r, s.template) for r in conversations] + [(r, "plain") for r in captions], scenes, tokenizer
    )
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
    scene = SceneEmbedding(s.hidden_size)
    params = [*model.parameters(), *scene.parameters()]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, s.warmup_steps, s.steps)
    losses: list[tuple[int, float]] = []
    model.train()
    collate = LlavaCollator(tokenizer.pad_token_id, s.max_position_embeddings, image_token_id=image_id)
    batches = _batches(docs, s.batch_size, s.seed, s.group_by_length)
    for step in range(1, s.steps + 1):
        # Sorted by length and cut into micro-batches: a random batch's gradient with less padding.
        batch = sorted((docs[i] for i in next(batches)), key=lambda d: len(d.input_ids))
        size = -(-len(batch) // s.micro_batches)
        chunks = [batch[k : k + size] for k in range(0, len(batch), size)]
        padded = [_collate(collate, chunk) for chunk in chunks]
        targets = sum(int((p["labels"][:, 1:] != IGNORE_INDEX).sum()) for p in padded)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for chunk, p in zip(chunks, padded, strict=True):
            ids = p["input_ids"]  # [b, T]
            part = model(
                inputs_embeds=_embed(model, scene, ids, chunk),
                attention_mask=p["attention_mask"],
                labels=p["labels"],
                num_items_in_batch=targets,  # token mean over the whole batch, not per chunk
            ).loss
            part.backward()
            loss += part.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append((step, loss))
        if progress is not None:
            progress(step, loss)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return LLMWarmupResult(out, losses, len(docs), time.perf_counter() - start)
