"""Make a tiny "pretrained LLM" offline: a text-only warm-up on the world's language.

LLaVA starts from Vicuna, which already reads, refers and answers; a random 2-layer Llama
does not, and learning to find one object among several takes more steps than stage 2 can
pay for on CPU, so this warm-up teaches it on text, without pixels:

* the image's place holds **scene cells**: one position per grid cell, in the raster order
  of the vision tower's nine patch tokens, so where a cell is is where its token is, as for
  patch tokens. Each cell's input vector is learned: the sum of a size, a colour and a shape
  embedding, or one "nothing" vector, plus a row and a column vector, read from the same
  captions and boxes a teacher sees;
* documents are the *drills* (``synthetic.tasks.drill_records``), one closed-form question
  each, a share of the teacher's sentence-answer turns (``long_answer_sample``), one each,
  with the chat template, and the stage-1 caption pairs (``plain`` template), with scene
  cells where ``<image>``'s slots go; next-token loss on every text token;
* batches are drawn at random, so every step mixes captions and questions, and packed into
  rows (positions restart per document, no attention across documents), so no padding is
  paid for;
* it trains through the library's ``training.ObjectiveModule`` (AdamW groups, warm-up +
  cosine, norm clipping), as the vision pretraining does.

The cell embeddings are dropped afterwards. LLaVA's stage 1 then does what the paper says it
does, train the projector to turn visual features into vectors the frozen LLM reads, and
stage 2 tunes both on images. Saved like a hub checkpoint (model + tokenizer with the image
token), so the LLaVA config names the folder as ``llm.name_or_path``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from llava_lite.config import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data import (
    BadSampleError,
    PackingCollator,
    encode_conversation,
    expand_image_slots,
    get_template,
    normalize_conversation,
)
from llava_lite.demo.settings import LLMWarmupSettings
from llava_lite.demo.vision import LOOKS
from llava_lite.modeling import (
    build_tiny_tokenizer,
    check_packed_attention,
    prepare_tokenizer,
    splice_features,
)
from llava_lite.synthetic.questions import SHORT_ANSWER_PROMPT
from llava_lite.synthetic.scene import COLORS, GRID, SHAPES, SIZES
from llava_lite.training import ObjectiveModule, fit_objective

NOTHING_LOOK = LOOKS.index(None)  # an empty cell's index
# Above every stage's model_max_length: the LLM's positions never run out in LLaVA's stages.
MAX_POSITIONS = 512


@dataclass
class LLMWarmupResult:
    path: Path
    losses: list[tuple[int, float]]  # (step, loss)
    documents: int
    seconds: float
    scene: SceneEmbedding  # the cell embeddings, for scoring the LLM on symbolic scenes; not saved


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
    """Input vectors for scene cells: size + colour + shape embeddings, or a learned "nothing",
    plus the cell's row and column vectors, as patch tokens carry their place."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.row = nn.Embedding(GRID, hidden_size)
        self.column = nn.Embedding(GRID, hidden_size)
        self.size = nn.Embedding(len(SIZES), hidden_size)
        self.color = nn.Embedding(len(COLORS), hidden_size)
        self.shape = nn.Embedding(len(SHAPES), hidden_size)
        self.nothing = nn.Parameter(torch.zeros(hidden_size))
        for p in (
            self.row.weight,
            self.column.weight,
            self.size.weight,
            self.color.weight,
            self.shape.weight,
            self.nothing,
        ):
            nn.init.normal_(p, std=0.02)  # the LLM's own initializer range
        looks = [look or (SIZES[0], next(iter(COLORS)), SHAPES[0]) for look in LOOKS]
        self.register_buffer("size_of", torch.tensor([SIZES.index(x[0]) for x in looks]), persistent=False)
        self.register_buffer(
            "color_of", torch.tensor([list(COLORS).index(x[1]) for x in looks]), persistent=False
        )
        self.register_buffer("shape_of", torch.tensor([SHAPES.index(x[2]) for x in looks]), persistent=False)

    def forward(self, cells: Tensor) -> Tensor:
        """``cells``: indices into LOOKS, one image's cells row-major in the last dim [..., C] ->
        vectors [..., C, D]."""
        x = (
            self.size(self.size_of[cells])
            + self.color(self.color_of[cells])
            + self.shape(self.shape_of[cells])
        )
        x = torch.where((cells == NOTHING_LOOK).unsqueeze(-1), self.nothing, x)
        k = torch.arange(cells.shape[-1], device=cells.device)  # row-major: row k // GRID, column k % GRID
        return x + self.row(k // GRID) + self.column(k % GRID)


def _one_turn_records(records: list[dict[str, Any]], short: bool) -> list[dict[str, Any]]:
    """Each turn whose question does (``short``) or does not end with the short-answer prompt,
    as a one-turn record about the same image."""
    turns = []
    for r in records:
        c = r["conversations"]
        for k in range(0, len(c) - 1, 2):
            question = c[k]["value"].replace(IMAGE_TOKEN, "").strip()
            if question.endswith(SHORT_ANSWER_PROMPT) == short:
                turns.append(
                    {
                        "id": f"{r.get('id')}_turn{k // 2}",
                        "image": r.get("image"),
                        "conversations": [
                            {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                            {"from": "gpt", "value": c[k + 1]["value"]},
                        ],
                    }
                )
    return turns


def short_answer_turns(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every closed-form turn of the conversations (its question ends with the short-answer
    prompt) as a one-turn record about the same image: the shortest documents that ask to
    find an object and report one thing about it."""
    return _one_turn_records(records, short=True)


def long_answer_turns(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other turn (sentence answers, descriptions, reasoning) as a one-turn record: what
    the chats ask for, which the one-word drills never show."""
    return _one_turn_records(records, short=False)


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
            ids, _ = expand_image_slots(encoded.input_ids, encoded.labels, image_id, len(cells), 1)
        except BadSampleError as e:  # teacher output always encodes; say which record did not
            raise ValueError(f"record {record.get('id')}: {e}") from e
        docs.append(Document(str(record.get("id")), ids, cells, image_id))
    return docs


def embed_documents(
    model: LlamaForCausalLM, scene: SceneEmbedding, ids: Tensor, cells: Tensor, image_id: int
) -> Tensor:
    """Token embeddings with the image positions holding the documents' scene cells, in order.

    ``ids`` [R, T] holds one run of nine ``image_id`` per document; ``cells`` [N, 9] the
    documents' cells in the row-major order of those runs (``splice_features``'s order).
    """
    return splice_features(model.get_input_embeddings()(ids), ids == image_id, scene(cells))  # [R, T, D]


def _random_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless random batches of document indices: every step mixes the kinds of document."""
    rng = random.Random(seed)
    while True:
        yield rng.sample(range(n), min(batch_size, n))


def _packed(collate: PackingCollator, docs: list[Document], batch: list[int]) -> dict[str, Any]:
    """One step's documents packed into rows; an over-long one raises, naming the record."""
    padded = collate(
        [
            {
                "id": str(i),
                "input_ids": torch.tensor(docs[i].input_ids),
                "labels": torch.tensor(docs[i].labels),
            }
            for i in batch
        ]
    )
    if padded["skipped"]:
        raise ValueError(f"LLM warm-up: {padded['skipped'][0]}")
    padded["cells"] = torch.tensor([docs[int(i)].cells for i in padded["ids"]])  # [N, 9], row order
    return padded


def warmup_llm(
    conversations: list[dict[str, Any]],
    captions: list[dict[str, Any]],
    drills: list[dict[str, Any]],
    scenes: dict[str, list[int]],
    out_dir: str | Path,
    settings: LLMWarmupSettings,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> LLMWarmupResult:
    """Train the tiny LLM (and its tokenizer) on the world's text; save both to ``out_dir``.

    ``conversations``: the teacher's records (``settings.template``), of whose sentence-answer
    turns ``settings.long_answer_sample`` is read; ``captions``: stage-1 caption records
    (``plain``); ``drills``: ``synthetic.tasks.drill_records``, each question a document;
    ``scenes``: scene cells per image (``demo.vision.cell_targets``).
    """
    s = settings
    start = time.perf_counter()
    torch.manual_seed(seed)
    # The template's fixed text is in every document: show it to the tokenizer often enough
    # that its words become single tokens.
    fixed = [get_template(s.template).default_system or "", "USER: ASSISTANT:"] * 200
    texts = turn_texts(conversations[:3000] + captions[:3000])
    tokenizer = build_tiny_tokenizer("sentencepiece", vocab_size=s.vocab_size, extra_texts=texts + fixed)
    image_id = prepare_tokenizer(tokenizer, IMAGE_TOKEN)
    long = long_answer_turns(conversations)
    chats = short_answer_turns(drills) + random.Random(f"{seed}:long_answers").sample(
        long, round(s.long_answer_sample * len(long))
    )
    docs = build_documents(
        [(r, s.template) for r in chats] + [(r, "plain") for r in captions], scenes, tokenizer
    )
    if not docs:
        raise ValueError("LLM warm-up: no documents (no drills, captions or sentence answers to read)")
    longest = max(docs, key=lambda d: len(d.input_ids))
    if len(longest.input_ids) > s.max_tokens_per_row:  # a packed row never cuts a document
        raise ValueError(
            f"LLM warm-up: record {longest.id} has {len(longest.input_ids)} tokens > "
            f"max_tokens_per_row={s.max_tokens_per_row}; raise it"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    check_packed_attention(model, "LLM warm-up packing")
    scene = SceneEmbedding(s.hidden_size)
    collate = PackingCollator(tokenizer.pad_token_id, s.max_tokens_per_row, image_token_id=image_id)

    def objective(batch: dict[str, Any]) -> tuple[Tensor, tuple[Tensor]]:
        # Packed rows: positions restart per document and no attention mask, so transformers
        # keeps documents apart; the loss is the token mean over the whole step.
        loss = model(
            inputs_embeds=embed_documents(model, scene, batch["input_ids"], batch["cells"], image_id),
            position_ids=batch["position_ids"],
            labels=batch["labels"],
            use_cache=False,
        ).loss
        return loss, (loss.detach(),)

    module = ObjectiveModule(
        {"llm": model, "scene": scene},
        objective,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        progress=progress,
    )
    batches = (_packed(collate, docs, b) for b in _random_batches(len(docs), s.batch_size, seed))
    fit_objective(module, batches, s.steps, seed=seed)
    losses = [(int(step), value) for step, value in module.losses]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return LLMWarmupResult(out, losses, len(docs), time.perf_counter() - start, scene)
