"""Make a tiny "pretrained CLIP" offline: contrastive image-text pretraining on the world.

LLaVA starts from CLIP; offline there is none, so the demo trains a small
``transformers.CLIPModel`` on the world's training images with two CLIP-style losses:

* **global**: the image embedding against the embedding of one of its captions (symmetric
  InfoNCE with a learned temperature, as CLIP), captions drawn at random among the five;
* **regional**: each 3x3 grid cell's pooled patch features (from the layer LLaVA reads,
  ``feature_layer`` = ``select_layer``) against the text embeddings of every region phrase
  ("a small red circle in the top left", "nothing in the center", ...), a CLIP zero-shot
  classifier over regions (as region-text pretraining does). Region phrases come from the
  captions and boxes through the offline teacher's parser, the same symbolic data a teacher sees.

Global CLIP alone is known to ignore counts and positions; the regional loss is what puts
"what is where" into the patch tokens LLaVA's projector reads. The result is saved the way
hub CLIP checkpoints are (``CLIPModel`` + ``CLIPImageProcessor`` + tokenizer), so the LLaVA
config simply names the folder as ``vision.name_or_path``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, get_cosine_schedule_with_warmup

from llava_lite.generation.offline import parse_context
from llava_lite.generation.symbolic import SymbolicContext, load_coco
from llava_lite.modeling.tokenizer import build_tiny_tokenizer
from llava_lite.synthetic.language import article, located
from llava_lite.synthetic.scene import CELL_PHRASES, COLORS, GRID, SHAPES, SIZES, cell_phrase
from llava_lite.synthetic.world import WorldPaths

log = logging.getLogger(__name__)


@dataclass
class VisionPretrainSettings:
    image_size: int = 96
    patch_size: int = 32  # 96 / 32 = 3: one patch token per grid cell
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    text_hidden_size: int = 128
    text_layers: int = 2
    projection_dim: int = 128
    feature_layer: int = -2  # the hidden layer LLaVA's tower will select
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    region_weight: float = 1.0
    region_positions: bool = False  # phrases name the cell too (441 classes instead of 49)
    seed: int = 0


@dataclass
class VisionPretrainResult:
    path: Path
    losses: list[tuple[int, float, float]]  # (step, global loss, region loss)
    region_accuracy: float  # zero-shot classification of held-out cells that hold an object
    seconds: float


def region_phrase(cell: tuple[int, int], obj: tuple[str, str, str] | None, with_position: bool) -> str:
    """'a small red circle in the top left' / 'nothing in the top left' (or without the position)."""
    what = "nothing" if obj is None else article(" ".join(obj))
    return f"{what} {located(cell_phrase(cell))}" if with_position else what


def all_region_phrases(with_position: bool) -> list[str]:
    """Every region phrase: 'nothing' plus each size x colour x shape (per cell, with positions)."""
    objs: list[tuple[str, str, str] | None] = [
        None,
        *((s, c, h) for s in SIZES for c in COLORS for h in SHAPES),
    ]
    cells = list(CELL_PHRASES.values()) if with_position else [(1, 1)]
    return [region_phrase(cell, o, with_position) for cell in cells for o in objs]


def region_targets(context: SymbolicContext, phrase_index: dict[str, int], with_position: bool) -> list[int]:
    """The phrase index of each of the 9 cells (row-major), read from captions + boxes."""
    scene = parse_context(context)
    by_cell = {o.cell: (o.size, o.color, o.shape) for o in scene.objects}
    return [
        phrase_index[region_phrase((r, c), by_cell.get((r, c)), with_position)]
        for r in range(GRID)
        for c in range(GRID)
    ]


class _Data:
    """Training images preprocessed once (they are tiny), captions tokenised once."""

    def __init__(
        self,
        world: WorldPaths,
        split: str,
        processor: CLIPImageProcessor,
        tokenizer,
        phrases: list[str],
        with_position: bool,
    ) -> None:
        contexts = load_coco(world.captions(split), world.instances(split))
        index = {p: i for i, p in enumerate(phrases)}
        images = [Image.open(world.image_root / c.file_name).convert("RGB") for c in contexts]
        self.pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # [N, 3, H, W]
        self.regions = torch.tensor([region_targets(c, index, with_position) for c in contexts])  # [N, 9]
        self.captions = [[_encode(tokenizer, t) for t in c.captions] for c in contexts]

    def __len__(self) -> int:
        return len(self.captions)


def _encode(tokenizer, text: str) -> list[int]:
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
    """Pools patch tokens into the 3x3 grid cells and projects them into the joint space."""

    def __init__(self, hidden_size: int, projection_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, projection_dim, bias=False)

    def forward(self, patches: Tensor) -> Tensor:
        n, p, d = patches.shape  # [N, P, D]
        side = math.isqrt(p)
        grid = patches.transpose(1, 2).reshape(n, d, side, side)  # [N, D, s, s]
        cells = F.adaptive_avg_pool2d(grid, GRID).flatten(2).transpose(1, 2)  # [N, 9, D]
        return F.normalize(self.proj(self.norm(cells)), dim=-1)  # [N, 9, E]


def build_clip(settings: VisionPretrainSettings, vocab_size: int, pad_id: int, eos_id: int) -> CLIPModel:
    s = settings
    if s.image_size % s.patch_size or (s.image_size // s.patch_size) % GRID:
        raise ValueError(
            f"image_size / patch_size must be a multiple of {GRID}; got {s.image_size}/{s.patch_size}"
        )
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": s.text_hidden_size,
            "intermediate_size": 2 * s.text_hidden_size,
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
            "image_size": s.image_size,
            "patch_size": s.patch_size,
        },
        projection_dim=s.projection_dim,
    )
    return CLIPModel(config)


def pretrain_vision(
    world: WorldPaths,
    out_dir: str | Path,
    settings: VisionPretrainSettings,
    progress: Callable[[int, float, float], None] | None = None,
) -> VisionPretrainResult:
    """Train the tiny CLIP on the world's train split and save it to ``out_dir``."""
    s = settings
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    out = Path(out_dir)
    caption_texts = [c for ctx in load_coco(world.captions("train")) for c in ctx.captions]
    phrases = all_region_phrases(s.region_positions)
    tokenizer = build_tiny_tokenizer("bpe", vocab_size=384, extra_texts=caption_texts[:2000] + phrases)
    processor = CLIPImageProcessor(
        size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size}
    )
    model = build_clip(s, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    head = RegionHead(s.hidden_size, s.projection_dim)
    train = _Data(world, "train", processor, tokenizer, phrases, s.region_positions)
    phrase_ids, phrase_mask = _pad([_encode(tokenizer, p) for p in phrases], tokenizer.pad_token_id)

    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, s.warmup_steps, s.steps)
    losses: list[tuple[int, float, float]] = []
    model.train()
    for step in range(1, s.steps + 1):
        idx = torch.tensor(rng.sample(range(len(train)), min(s.batch_size, len(train))))
        caps = [rng.choice(train.captions[i]) for i in idx.tolist()]
        g_loss, r_loss = _losses(model, head, train.pixels[idx], train.regions[idx], caps, phrase_ids, phrase_mask,
                                 tokenizer.pad_token_id, s.feature_layer)  # fmt: skip
        loss = g_loss + s.region_weight * r_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append((step, g_loss.item(), r_loss.item()))
        if progress is not None:
            progress(step, float(g_loss), float(r_loss))

    accuracy = region_accuracy(model, head, world, "val", processor, tokenizer, phrases, s)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return VisionPretrainResult(out, losses, accuracy, time.perf_counter() - start)


def _text_embeds(model: CLIPModel, ids: Tensor, mask: Tensor) -> Tensor:
    pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # [B, D_text]
    return F.normalize(model.text_projection(pooled), dim=-1)  # [B, E]


def _losses(
    model: CLIPModel,
    head: RegionHead,
    pixels: Tensor,
    regions: Tensor,
    captions: list[list[int]],
    phrase_ids: Tensor,
    phrase_mask: Tensor,
    pad_id: int,
    feature_layer: int,
) -> tuple[Tensor, Tensor]:
    vision = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    image = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)  # [B, E]
    text = _text_embeds(model, *_pad(captions, pad_id))  # [B, E]
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * image @ text.T  # [B, B]
    target = torch.arange(len(image))
    global_loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    cells = head(vision.hidden_states[feature_layer][:, 1:])  # [B, 9, E]
    classes = _text_embeds(model, phrase_ids, phrase_mask)  # [K, E]
    region_logits = scale * cells @ classes.T  # [B, 9, K]
    region_loss = F.cross_entropy(region_logits.flatten(0, 1), regions.flatten())
    return global_loss, region_loss


@torch.no_grad()
def region_accuracy(
    model: CLIPModel,
    head: RegionHead,
    world: WorldPaths,
    split: str,
    processor: CLIPImageProcessor,
    tokenizer,
    phrases: list[str],
    settings: VisionPretrainSettings,
) -> float:
    """Share of cells holding an object whose nearest region phrase is the true one (zero-shot, CLIP style)."""
    model.eval()
    data = _Data(world, split, processor, tokenizer, phrases, settings.region_positions)
    if len(data) == 0:
        return float("nan")
    classes = _text_embeds(model, *_pad([_encode(tokenizer, p) for p in phrases], tokenizer.pad_token_id))
    hidden = model.vision_model(pixel_values=data.pixels, output_hidden_states=True).hidden_states
    cells = head(hidden[settings.feature_layer][:, 1:])  # [N, 9, E]
    predicted = (cells @ classes.T).argmax(-1)  # [N, 9]
    occupied = torch.tensor([not p.startswith("nothing") for p in phrases])[data.regions]  # [N, 9]
    return float((predicted == data.regions)[occupied].float().mean())
