"""Make a tiny "pretrained CLIP" offline: contrastive image-text pretraining on the world.

LLaVA starts from CLIP; offline there is none, so the demo trains a small
``transformers.CLIPModel`` on the world's training images with two losses:

* **global**: the image embedding against the embedding of one of its captions (symmetric
  InfoNCE with a learned temperature, as CLIP), captions drawn at random among the five;
* **regional**: the patch tokens of each 3x3 grid cell, from the layer LLaVA reads
  (``feature_layer`` = ``select_layer``), classified by small linear heads into *what* is
  there (one of the 48 looks "a small red circle" or "nothing") and *where* the cell is
  ("in the top left"): dense supervision from the boxes, as detection-style pretraining
  does. Labels come from the captions and boxes through ``synthetic.context.parse_context``,
  the same symbolic data a teacher sees; the heads are dropped after pretraining.

Global CLIP alone ignores counts and positions (measured: ``docs/demo_history.md``); the regional
losses are what put "what is where" into the tokens LLaVA's projector reads. The result is
trained through the library's ``training.objective`` (AdamW groups, warm-up + cosine, norm
clipping) and saved the way hub CLIP checkpoints are (``CLIPModel`` + ``CLIPImageProcessor`` + tokenizer),
so the LLaVA config names the folder as ``vision.name_or_path``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from llava_lite.demo.settings import VisionPretrainSettings
from llava_lite.modeling import build_tiny_tokenizer
from llava_lite.symbolic import SymbolicContext, load_coco
from llava_lite.synthetic.context import parse_context
from llava_lite.synthetic.language import article, located
from llava_lite.synthetic.scene import COLORS, GRID, SHAPES, SIZES, cell_phrase
from llava_lite.synthetic.world import WorldPaths
from llava_lite.training import ObjectiveModule, fit_objective

log = logging.getLogger(__name__)

NOTHING = "nothing"
# What can fill a cell: nothing, or one (size, colour, shape); cell targets index this.
LOOKS: tuple[tuple[str, str, str] | None, ...] = (
    None,
    *((size, color, shape) for size in SIZES for color in COLORS for shape in SHAPES),
)
# The same looks in words, and where each cell is (row-major, the order of the patch grid).
WHAT_PHRASES: tuple[str, ...] = tuple(NOTHING if look is None else article(" ".join(look)) for look in LOOKS)
WHERE_PHRASES: tuple[str, ...] = tuple(located(cell_phrase((r, c))) for r in range(GRID) for c in range(GRID))


@dataclass
class VisionPretrainResult:
    path: Path
    losses: list[tuple[int, float, float]]  # (step, global loss, region loss)
    object_accuracy: float  # "what" of held-out cells that hold an object
    position_accuracy: float  # "where" of held-out cells that hold an object
    seconds: float


def cell_targets(context: SymbolicContext) -> list[int]:
    """Index into ``WHAT_PHRASES`` of each of the 9 cells (row-major), read from captions + boxes."""
    by_cell = {o.cell: o.noun() for o in parse_context(context).objects}
    return [
        WHAT_PHRASES.index(article(by_cell[(r, c)]) if (r, c) in by_cell else NOTHING)
        for r in range(GRID)
        for c in range(GRID)
    ]


def pixel_statistics(
    world: WorldPaths, split: str = "train", max_images: int = 500
) -> dict[str, list[float]]:
    """Per-channel mean and std of a split's pixels, for the image processor.

    OpenAI's CLIP statistics put this world's dark background far from zero, where the
    small objects drown in one shared component of every patch token (``docs/demo_history.md``);
    the data's own statistics, as for any new domain, avoid that.
    """
    data = json.loads(world.captions(split).read_text())
    files = [world.image_root / im["file_name"] for im in data["images"][:max_images]]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files])
    return {
        "image_mean": [round(float(v), 4) for v in pixels.mean(axis=(0, 1, 2))],
        "image_std": [round(float(v), 4) for v in pixels.std(axis=(0, 1, 2))],
    }


class _Data:
    """A split's images preprocessed once (they are tiny), captions tokenised once."""

    def __init__(self, world: WorldPaths, split: str, processor: CLIPImageProcessor, tokenizer) -> None:
        contexts = load_coco(world.captions(split), world.instances(split))
        images = [Image.open(world.image_root / c.file_name).convert("RGB") for c in contexts]
        self.pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # [N, 3, H, W]
        self.what = torch.tensor([cell_targets(c) for c in contexts])  # [N, 9]
        self.captions = [[_encode(tokenizer, t) for t in c.captions] for c in contexts]

    def __len__(self) -> int:
        return len(self.captions)


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids ending with EOS, where CLIP's text tower pools."""
    return [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id]


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask  # [B, L], [B, L]


class RegionHead(nn.Module):
    """Pools patch tokens into the 3x3 grid cells and classifies what is in each and where it is."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.what = nn.Linear(hidden_size, len(WHAT_PHRASES))
        self.where = nn.Linear(hidden_size, len(WHERE_PHRASES))

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        n, p, d = patches.shape  # [N, P, D]
        side = math.isqrt(p)
        grid = patches.transpose(1, 2).reshape(n, d, side, side)  # [N, D, s, s]
        cells = self.norm(F.adaptive_avg_pool2d(grid, GRID).flatten(2).transpose(1, 2))  # [N, 9, D]
        return self.what(cells), self.where(cells)  # [N, 9, 49], [N, 9, 9]


def build_clip(
    settings: VisionPretrainSettings, image_size: int, vocab_size: int, pad_id: int, eos_id: int
) -> CLIPModel:
    """A CLIP whose text tower and projection are as wide as its vision tower."""
    s = settings
    if image_size % s.patch_size or (image_size // s.patch_size) % GRID:
        raise ValueError(
            f"image size / vision.patch_size must be a multiple of {GRID}; got {image_size}/{s.patch_size}"
        )
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": s.hidden_size,
            "intermediate_size": 2 * s.hidden_size,
            "num_hidden_layers": s.text_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": 96,
            "pad_token_id": pad_id,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
        },
        vision_config={
            "hidden_size": s.hidden_size,
            "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads,
            "image_size": image_size,
            "patch_size": s.patch_size,
        },
        projection_dim=s.hidden_size,
    )
    return CLIPModel(config)


class _Objective:
    """The global (contrastive) and regional (supervised) losses for one batch."""

    def __init__(self, model: CLIPModel, head: RegionHead, pad_id: int, feature_layer: int) -> None:
        self.model, self.head, self.pad_id, self.layer = model, head, pad_id, feature_layer

    def forward_image(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Image embeddings [B, E] and per-cell logits over what [B, 9, 49] and where [B, 9, 9]."""
        vision = self.model.vision_model(pixel_values=pixels, output_hidden_states=True)
        image = F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)  # [B, E]
        what, where = self.head(vision.hidden_states[self.layer][:, 1:])
        return image, what, where

    def __call__(self, pixels: Tensor, what: Tensor, captions: list[list[int]]) -> tuple[Tensor, Tensor]:
        image, what_logits, where_logits = self.forward_image(pixels)
        ids, mask = _pad(captions, self.pad_id)
        pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # [B, D_text]
        text = F.normalize(self.model.text_projection(pooled), dim=-1)  # [B, E]
        logits = self.model.logit_scale.exp().clamp(max=100.0) * image @ text.T  # [B, B]
        target = torch.arange(len(image))
        global_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        where = torch.arange(GRID * GRID).expand_as(what)  # [B, 9]
        region_loss = F.cross_entropy(what_logits.flatten(0, 1), what.flatten()) + F.cross_entropy(
            where_logits.flatten(0, 1), where.flatten()
        )
        return global_loss, region_loss

    @torch.no_grad()
    def accuracy(self, data: _Data) -> tuple[float, float]:
        """What / where accuracy over cells that hold an object."""
        _, what_logits, where_logits = self.forward_image(data.pixels)
        occupied = data.what != WHAT_PHRASES.index(NOTHING)  # [N, 9]
        where = torch.arange(GRID * GRID).expand_as(data.what)
        what_ok = (what_logits.argmax(-1) == data.what)[occupied]
        where_ok = (where_logits.argmax(-1) == where)[occupied]
        return float(what_ok.float().mean()), float(where_ok.float().mean())


def pretrain_vision(
    world: WorldPaths,
    out_dir: str | Path,
    settings: VisionPretrainSettings,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> VisionPretrainResult:
    """Train the tiny CLIP on the world's train split, score it on val, save it to ``out_dir``."""
    s = settings
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    image_size = int(json.loads(world.meta.read_text())["image_size"])
    caption_texts = [c for ctx in load_coco(world.captions("train")) for c in ctx.captions]
    tokenizer = build_tiny_tokenizer(
        "bpe", vocab_size=384, extra_texts=caption_texts[:2000] + list(WHAT_PHRASES + WHERE_PHRASES)
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        **pixel_statistics(world),
    )
    model = build_clip(s, image_size, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    head = RegionHead(s.hidden_size)
    objective = _Objective(model, head, tokenizer.pad_token_id, s.feature_layer)
    train = _Data(world, "train", processor, tokenizer)

    def batches() -> Iterator[tuple[Tensor, Tensor, list[list[int]]]]:
        while True:  # random images, one of each image's five captions at random
            idx = torch.tensor(rng.sample(range(len(train)), min(s.batch_size, len(train))))
            yield train.pixels[idx], train.what[idx], [rng.choice(train.captions[i]) for i in idx.tolist()]

    def loss(batch: tuple[Tensor, Tensor, list[list[int]]]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        global_loss, region_loss = objective(*batch)
        return global_loss + s.region_weight * region_loss, (global_loss.detach(), region_loss.detach())

    module = ObjectiveModule(
        {"clip": model, "region_head": head},
        loss,
        lr=s.lr,
        weight_decay=s.weight_decay,
        warmup_steps=s.warmup_steps,
        progress=progress,
    )
    fit_objective(module, batches(), s.steps, seed=seed)
    losses = [(int(step), g, r) for step, g, r in module.losses]

    model.eval()
    val = _Data(world, "val", processor, tokenizer)
    what_acc, where_acc = objective.accuracy(val) if len(val) else (float("nan"), float("nan"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return VisionPretrainResult(out, losses, what_acc, where_acc, time.perf_counter() - start)
