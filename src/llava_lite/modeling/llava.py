"""LlavaModel: vision tower -> projector -> causal LM, with image features spliced into the text.

The processor has already expanded every ``<image>`` into as many copies of the image-token
id as the image has tokens (``image_grid.num_tokens``: fixed for one square view, by image
size under AnyRes). The model embeds the text, encodes the images, and scatters the projected
image features into those slots in row-major order, so one image's features fill one block
of slots. Text-only rows simply have no slots.

With ``image_aspect="anyres"`` the batch's ``pixel_values`` hold every image's tiles
``[N_tiles, 3, H, W]`` (base view, then the grid) and ``image_sizes`` ``[N, 2]`` each image's
(height, width); the tower and projector run on all tiles at once, and
``llava_lite.modeling.anyres`` lays each image's tiles out as LLaVA-NeXT does.

Several images and video (LLaVA-OneVision): a row may hold any number of image blocks, in
order; ``image_tiled`` ``[N]`` says which images are read as their base view alone (one of
several images under ``anyres.multi_image="base"``). Videos fill their own slots (the
``video_token`` id): ``pixel_values_videos`` ``[F, 3, H, W]`` holds every video's frames and
``video_frames`` ``[V]`` how many each has; ``llava_lite.modeling.video`` pools them. The tower
runs once over every tile and frame of the batch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoTokenizer, AutoVideoProcessor, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_lite.config import IGNORE_INDEX, NO_VIDEO, LlavaConfig
from llava_lite.image_grid import ImageGrid
from llava_lite.modeling.anyres import ImageNewline, pack_tiles
from llava_lite.modeling.hf_config import config_from_dict
from llava_lite.modeling.llm import (
    build_llm,
    last_hidden_state,
    load_tokenizer,
    plain_lm_head,
    prepare_tokenizer,
)
from llava_lite.modeling.projector import build_projector
from llava_lite.modeling.video import pack_video
from llava_lite.modeling.vision import VisionTower, tiling_image_processor, video_processor_for
from llava_lite.templates import get_template

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VIDEO_PROCESSOR_NAME = "video_preprocessor_config.json"
FORMAT_VERSION = 1
__version__ = version("llava_lite")
# The batch keys that carry images and videos into the model (collators, generation, evaluation).
VISUAL_INPUTS = ("pixel_values", "image_sizes", "image_tiled", "pixel_values_videos", "video_frames")


class LossTerms(NamedTuple):
    """What :meth:`LlavaModel.loss_terms` returns: the summed loss, its token count, the logits used."""

    loss_sum: Tensor  # [] summed cross-entropy over trained tokens
    num_tokens: int  # trained tokens (labels != -100 after the shift, image slots excluded)
    logits: Tensor | None  # [N, V] logits at the trained positions only; None with a fused loss
    trained: Tensor | None = None  # [B, T-1] bool: where the N trained positions are (shifted)


class ImageTokenMismatch(ValueError):
    """Image-token slots and image features disagree; ``row`` is the first batch row that does, if known."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


def mismatched_row(slots_per_row: list[int], tokens_per_image: list[int]) -> int | None:
    """The first row whose slots the images, taken in row-major order, cannot fill exactly."""
    image = 0
    for row, slots in enumerate(slots_per_row):
        filled = 0
        while filled < slots and image < len(tokens_per_image):
            filled += tokens_per_image[image]
            image += 1
        if filled != slots:
            return row
    return len(slots_per_row) - 1 if image < len(tokens_per_image) and slots_per_row else None


def as_size_list(image_sizes: Tensor | list[Any] | None) -> list[tuple[int, int]]:
    """``[N, 2]`` sizes (tensor, array or pairs) as plain ``(height, width)`` ints, never tensors."""
    if image_sizes is None:
        return []
    rows = image_sizes.tolist() if hasattr(image_sizes, "tolist") else list(image_sizes)
    return [(int(h), int(w)) for h, w in rows]


def as_flag_list(flags: Tensor | list[Any] | None, count: int) -> list[bool]:
    """Per-image ``image_tiled`` flags as plain bools; None means every image is tiled."""
    if flags is None:
        return [True] * count
    values = [bool(f) for f in (flags.tolist() if hasattr(flags, "tolist") else flags)]
    if len(values) != count:
        raise ImageTokenMismatch(f"image_tiled has {len(values)} flags for {count} images")
    return values


def as_int_list(values: Tensor | list[Any] | None) -> list[int]:
    """``[V]`` counts (tensor or list) as plain ints."""
    if values is None:
        return []
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def splice_features(inputs_embeds: Tensor, slots: Tensor, features: Tensor) -> Tensor:
    """Scatter ``features`` ``[N, P, D]`` into the ``slots`` ``[B, T]`` of ``inputs_embeds`` ``[B, T, D]``.

    Row-major, so the n-th image's P features fill the n-th block of P slots. Also used by the
    demo's text warm-up, whose "image" features are learned scene cells instead of pixels.
    """
    flat = features.reshape(-1, features.shape[-1]).to(inputs_embeds.dtype)  # [N*P, D]
    return inputs_embeds.masked_scatter(slots.unsqueeze(-1), flat)


class LlavaModel(nn.Module):
    """A LLaVA model built from a :class:`LlavaConfig`; see the module docstring for the data flow."""

    def __init__(
        self,
        config: LlavaConfig,
        tokenizer: Any = None,
        image_processor: Any = None,
        video_processor: Any = None,
        *,
        vision_hf_config: PretrainedConfig | None = None,
        llm_hf_config: PretrainedConfig | None = None,
    ) -> None:
        """Build every part from ``config``.

        ``vision_hf_config`` / ``llm_hf_config`` rebuild exact architectures with random weights
        instead of reading ``name_or_path``; ``from_pretrained`` uses them so a saved model
        reloads from its own folder with no network.
        """
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config.vision, hf_config=vision_hf_config, dtype=config.llm.dtype)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.llm)
        self.image_token_id = prepare_tokenizer(self.tokenizer, config.image_token)
        # Videos fill their own slots; a model without a video token reads none.
        self.video_token_id = (
            prepare_tokenizer(self.tokenizer, config.video_token) if config.video_token is not None else None
        )
        self.llm = build_llm(config.llm, self.tokenizer, hf_config=llm_hf_config)
        llm_hidden = int(self.llm.get_input_embeddings().weight.shape[1])
        self.projector = build_projector(
            config.projector.type,
            self.vision_tower.hidden_size,
            llm_hidden,
            self.vision_tower.num_image_tokens,
        ).to(self.llm.get_input_embeddings().weight.dtype)
        tower = self.vision_tower
        anyres = config.image_aspect == "anyres"
        self.image_grid = ImageGrid(
            tile=tower.image_size,
            patches=math.isqrt(tower.num_patches),
            base_tokens=tower.num_image_tokens,
            pinpoints=tuple((int(h), int(w)) for h, w in config.anyres.grid_pinpoints) if anyres else None,
            max_tiles=config.anyres.max_tiles,
            video_pool=config.video.pool,
        )
        # The learned row separator of AnyRes grids; it trains with the projector.
        self.image_newline = (
            ImageNewline(llm_hidden).to(self.llm.get_input_embeddings().weight.dtype) if anyres else None
        )
        if image_processor is None:
            image_processor = tower.build_image_processor()
        if anyres:
            image_processor = tiling_image_processor(
                image_processor, config.anyres.grid_pinpoints, tower.image_size, config.anyres.multi_image
            )
        self.image_processor = image_processor
        if video_processor is None and config.video_token is not None:
            video_processor = video_processor_for(image_processor, tower.image_size)
        self.video_processor = video_processor
        self.num_image_tokens = tower.num_image_tokens  # one view's tokens; AnyRes images have more

    def components(self) -> dict[str, nn.Module]:
        """The three trainable parts, by the names freezing and optimiser groups use.

        AnyRes's ``image_newline`` belongs to the projector part: both map vision into the LLM.
        """
        projector: nn.Module = self.projector
        if self.image_newline is not None:
            projector = nn.ModuleList([self.projector, self.image_newline])
        return {"vision_tower": self.vision_tower, "projector": projector, "llm": self.llm}

    # ---- forward --------------------------------------------------------------------
    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` views or tiles -> projected features ``[N, P, D_llm]``."""
        features = self.vision_tower(pixel_values)  # [N, P, D_vision]
        features = features.to(next(self.projector.parameters(), features).dtype)
        return self.projector(features)  # [N, P, D_llm]

    def image_features(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor | list[Any] | None = None,
        image_tiled: Tensor | list[Any] | None = None,
        features: Tensor | None = None,
    ) -> list[Tensor]:
        """Each image's token features ``[num_tokens_i, D_llm]``; the tower runs once on all tiles.

        ``features`` ``[N_tiles, P, D_llm]``: the tiles already encoded (:meth:`embed_inputs`
        encodes images and video frames in one tower call).
        """
        if features is None:
            features = self.encode_images(pixel_values)  # [N_tiles, P, D]
        if self.image_newline is None:
            return list(features)
        sizes = as_size_list(image_sizes)
        tiled = as_flag_list(image_tiled, len(sizes))
        tiles = [self.image_grid.num_tiles(h, w, t) for (h, w), t in zip(sizes, tiled, strict=True)]
        return [
            pack_tiles(chunk, size, self.image_grid, self.image_newline.weight, t)
            for chunk, size, t in zip(features.split(tiles), sizes, tiled, strict=True)
        ]

    def video_features(
        self, pixel_values_videos: Tensor, video_frames: Tensor | list[Any], features: Tensor | None = None
    ) -> list[Tensor]:
        """Each video's token features ``[video_tokens_i, D_llm]`` from its frames ``[F, 3, H, W]``."""
        if features is None:
            features = self.encode_images(pixel_values_videos)  # [F, P, D]
        newline = None if self.image_newline is None else self.image_newline.weight
        return [
            pack_video(chunk, self.image_grid, newline) for chunk in features.split(as_int_list(video_frames))
        ]

    def image_token_counts(
        self,
        pixel_values: Tensor | None,
        image_sizes: Tensor | list[Any] | None,
        image_tiled: Tensor | list[Any] | None = None,
    ) -> list[int]:
        """Slots each image of a batch fills, checked against the tiles ``pixel_values`` holds."""
        if pixel_values is None:
            return []
        if self.image_newline is None:
            return [self.num_image_tokens] * int(pixel_values.shape[0])
        sizes = as_size_list(image_sizes)
        if not sizes:
            raise ValueError(
                "this model reads images at any resolution (image_aspect='anyres'): pass image_sizes"
            )
        tiled = as_flag_list(image_tiled, len(sizes))
        grid = self.image_grid
        tiles = sum(grid.num_tiles(h, w, t) for (h, w), t in zip(sizes, tiled, strict=True))
        if tiles != pixel_values.shape[0]:
            raise ImageTokenMismatch(
                f"pixel_values hold {pixel_values.shape[0]} tiles but image_sizes {sizes} make {tiles}"
            )
        return [grid.num_tokens(h, w, t) for (h, w), t in zip(sizes, tiled, strict=True)]

    def video_token_counts(
        self, pixel_values_videos: Tensor | None, video_frames: Tensor | list[Any] | None
    ) -> list[int]:
        """Slots each video of a batch fills, checked against the frames ``pixel_values_videos`` holds."""
        if pixel_values_videos is None:
            return []
        if self.video_token_id is None:
            raise ValueError(NO_VIDEO)
        frames = as_int_list(video_frames)
        if not frames or sum(frames) != pixel_values_videos.shape[0] or min(frames) < 1:
            raise ImageTokenMismatch(
                f"pixel_values_videos hold {pixel_values_videos.shape[0]} frames but video_frames is {frames}"
            )
        return [self.image_grid.video_tokens(n) for n in frames]

    def slot_mask(self, input_ids: Tensor) -> Tensor:
        """``[B, T]`` True at image and video slots, which the loss never trains."""
        slots = input_ids == self.image_token_id
        if self.video_token_id is not None:
            slots |= input_ids == self.video_token_id
        return slots

    def _check_slots(self, input_ids: Tensor, token_id: int, counts: list[int], kind: str) -> Tensor:
        """The ``[B, T]`` slots of ``token_id``; :class:`ImageTokenMismatch` naming a row if they
        are not exactly what ``counts`` (one per image or video, in row order) fill."""
        slots = input_ids == token_id  # [B, T]
        if int(slots.sum()) != sum(counts):
            per_row = slots.sum(dim=1).tolist()
            row = mismatched_row(per_row, counts)
            raise ImageTokenMismatch(
                f"{kind} tokens do not match {kind}s: input_ids hold {int(slots.sum())} {kind}-token slots "
                f"(id {token_id}; per row {per_row}) but the {len(counts)} {kind}(s) make "
                f"{sum(counts)} ({counts})"
                + ("" if row is None else f"; row {row} is the first that disagrees"),
                row,
            )
        return slots

    def embed_inputs(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | list[Any] | None = None,
        image_tiled: Tensor | list[Any] | None = None,
        pixel_values_videos: Tensor | None = None,
        video_frames: Tensor | list[Any] | None = None,
    ) -> Tensor:
        """Token embeddings with image and video features scattered into their slots, ``[B, T, D]``.

        Slots and images (videos) are compared before the tower runs; a mismatch raises
        :class:`ImageTokenMismatch` naming the first row that disagrees.
        """
        embed = self.llm.get_input_embeddings()
        inputs_embeds = embed(input_ids)  # [B, T, D]
        image_counts = self.image_token_counts(pixel_values, image_sizes, image_tiled)
        image_slots = self._check_slots(input_ids, self.image_token_id, image_counts, "image")
        video_counts = self.video_token_counts(pixel_values_videos, video_frames)
        if self.video_token_id is not None:
            video_slots = self._check_slots(input_ids, self.video_token_id, video_counts, "video")
        views = [v for v in (pixel_values, pixel_values_videos) if v is not None]
        if not views:
            return inputs_embeds
        encoded = self.encode_images(torch.cat(views) if len(views) > 1 else views[0])  # [N_tiles + F, P, D]
        if pixel_values is not None:
            tiles, encoded = encoded[: pixel_values.shape[0]], encoded[pixel_values.shape[0] :]
            images = torch.cat(self.image_features(pixel_values, image_sizes, image_tiled, tiles))  # [sum, D]
            inputs_embeds = splice_features(inputs_embeds, image_slots, images)
        if pixel_values_videos is not None:
            assert video_frames is not None
            videos = torch.cat(self.video_features(pixel_values_videos, video_frames, encoded))  # [sum, D]
            inputs_embeds = splice_features(inputs_embeds, video_slots, videos)
        return inputs_embeds  # [B, T, D]

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        image_sizes: Tensor | list[Any] | None = None,
        image_tiled: Tensor | list[Any] | None = None,
        pixel_values_videos: Tensor | None = None,
        video_frames: Tensor | list[Any] | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Full logits ``[B, T, V]`` and, with ``labels`` ``[B, T]``, the mean next-token loss.

        Image slots never count in the loss, whatever ``labels`` says there. For training,
        :meth:`loss_terms` gives the same loss without computing logits nobody trains on.
        Packed rows pass ``position_ids`` that restart at 0 per sample and no ``attention_mask``.
        """
        visual = (pixel_values, image_sizes, image_tiled, pixel_values_videos, video_frames)
        inputs_embeds = self.embed_inputs(input_ids, *visual)
        if labels is not None:
            labels = labels.masked_fill(self.slot_mask(input_ids), IGNORE_INDEX)
        kwargs.setdefault("use_cache", False)  # a cache here is never read, and disables packed masking
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **kwargs,
        )

    def loss_terms(
        self,
        input_ids: Tensor,
        labels: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        linear_cross_entropy: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        image_sizes: Tensor | list[Any] | None = None,
        image_tiled: Tensor | list[Any] | None = None,
        pixel_values_videos: Tensor | None = None,
        video_frames: Tensor | list[Any] | None = None,
    ) -> LossTerms:
        """Summed next-token cross-entropy over the trained positions, their count and their logits.

        The LM head runs only where a shifted label is trained (one gather of hidden states
        before the head), so image slots, prompts and padding cost no logits: the same loss
        and gradients as the full forward, with logits ``[N, V]`` instead of ``[B, T, V]``.
        Callers divide ``loss_sum`` by the trained tokens of a whole optimiser step.
        ``linear_cross_entropy(head_weight [V, D], hidden [N, D], targets [N])`` -> summed loss
        replaces head + cross-entropy with a fused kernel (e.g. Liger's), so no logits exist.
        """
        visual = (pixel_values, image_sizes, image_tiled, pixel_values_videos, video_frames)
        inputs_embeds = self.embed_inputs(input_ids, *visual)  # [B, T, D]
        targets = labels.masked_fill(self.slot_mask(input_ids), IGNORE_INDEX)[:, 1:]  # [B, T-1]
        trained = targets != IGNORE_INDEX  # [B, T-1]
        mask_kw = {"attention_mask": attention_mask, "position_ids": position_ids}
        plain = plain_lm_head(self.llm)
        if linear_cross_entropy is not None and not (plain and self.llm.get_output_embeddings().bias is None):
            raise ValueError(
                "a fused linear cross-entropy needs a plain LM head without bias or logit post-processing; "
                f"this LLM ({self.llm.config.model_type}) has another: use the plain loss"
            )
        if plain:
            hidden = last_hidden_state(self.llm, inputs_embeds, **mask_kw)[:, :-1][trained]  # [N, D]
            head = self.llm.get_output_embeddings()
            if linear_cross_entropy is not None:
                loss = linear_cross_entropy(head.weight, hidden, targets[trained])
                return LossTerms(loss, int(trained.sum()), None, trained)
            logits = head(hidden)  # [N, V]
        else:
            logits = self.llm(inputs_embeds=inputs_embeds, use_cache=False, **mask_kw).logits[:, :-1][trained]
        loss_sum = nn.functional.cross_entropy(logits.float(), targets[trained], reduction="sum")
        return LossTerms(loss_sum, int(trained.sum()), logits, trained)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        use_cache: bool = True,
        streamer: Any = None,  # a transformers streamer (chat's TextIteratorStreamer): gets each new token
        image_sizes: Tensor | list[Any] | None = None,
        image_tiled: Tensor | list[Any] | None = None,
        pixel_values_videos: Tensor | None = None,
        video_frames: Tensor | list[Any] | None = None,
    ) -> Tensor:
        """New tokens only, ``[B, T_new]`` (rows that stop early are padded with the pad id).

        Batches must be left-padded; ``attention_mask`` then carries the padding, and the LLM's
        ``generate`` derives positions from it, so a padded row decodes as it would alone.
        ``eos_token_id`` defaults to the end-of-turn tokens of ``config.conv_template`` (chatml's
        ``<|im_end|>``, vicuna's ``</s>``), so a reply ends where its training answers ended.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate() needs left padding: some rows end with padding (attention_mask 0)")
        visual = (pixel_values, image_sizes, image_tiled, pixel_values_videos, video_frames)
        inputs_embeds = self.embed_inputs(input_ids, *visual)
        sampling: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p)
        return self.llm.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids() if eos_token_id is None else eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=use_cache,
            streamer=streamer,
            **sampling,
        )

    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer under ``config.conv_template`` (the default stop of :meth:`generate`)."""
        return get_template(self.config.conv_template).stop_token_ids(self.tokenizer)

    # ---- save / load ----------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` (LlavaConfig + architectures + version), ``model.safetensors``,
        tokenizer and image-processor files. Everything needed to rebuild offline."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "llava_lite": self.config.to_dict(),
            "llava_lite_version": __version__,
            "format_version": FORMAT_VERSION,
            "llm_config": self.llm.config.to_dict(),
        }
        if self.config.vision.backend == "hf":
            meta["vision_config"] = self.vision_tower.model.config.to_dict()
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        save_model(self, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        if self.video_processor is not None:
            self.video_processor.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False) -> LlavaModel:
        """Rebuild a model saved by :meth:`save_pretrained`, from that folder alone.

        llava-hf and original LLaVA folders load through ``llava_lite.modeling.load_pretrained``,
        which picks the format (it sits above this class; the importers build on it).
        """
        folder = Path(path)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a llava_lite model folder")
        meta = json.loads(config_file.read_text())
        if "llava_lite" not in meta:
            raise ValueError(
                f"{config_file} has no 'llava_lite' key: not a llava_lite model folder; "
                "llava_lite.modeling.load_pretrained(dir) also reads llava-hf and original LLaVA folders"
            )
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(
                f"{config_file} has format_version {meta['format_version']}, newer than this "
                f"llava_lite ({__version__}) reads ({FORMAT_VERSION}); upgrade llava_lite"
            )
        config = LlavaConfig.from_dict(meta["llava_lite"])
        config.llm.trust_remote_code = trust_remote_code
        # Build the architecture only: the weights come from this folder, never from the
        # original checkpoints the config names (which may be remote).
        build_config = copy.deepcopy(config)
        build_config.vision.timm_pretrained = False
        build_config.vision.checkpoint_path = None
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(folder)
        video_processor = None
        if (folder / VIDEO_PROCESSOR_NAME).is_file():
            video_processor = AutoVideoProcessor.from_pretrained(folder)
        model = cls(
            build_config,
            tokenizer=tokenizer,
            image_processor=image_processor,
            video_processor=video_processor,
            vision_hf_config=config_from_dict(meta["vision_config"]) if "vision_config" in meta else None,
            llm_hf_config=config_from_dict(meta["llm_config"]),
        )
        load_model(model, str(folder / WEIGHTS_NAME), strict=True)
        model.config = config
        model.vision_tower.config = config.vision
        return model
