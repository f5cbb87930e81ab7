"""LlavaModel: vision tower -> projector -> causal LM, with image features spliced into the text.

The processor has already expanded every ``<image>`` into ``num_image_tokens`` copies of the
image-token id. The model embeds the text, encodes the images, and scatters the projected
image features into those slots in row-major order, so one image's features fill one block
of slots. Text-only rows simply have no slots.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_lite.config import IGNORE_INDEX, LlavaConfig
from llava_lite.modeling.hf_config import config_from_dict
from llava_lite.modeling.llm import (
    build_llm,
    last_hidden_state,
    load_tokenizer,
    plain_lm_head,
    prepare_tokenizer,
)
from llava_lite.modeling.projector import build_projector
from llava_lite.modeling.vision import VisionTower
from llava_lite.templates import get_template

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
__version__ = version("llava_lite")


class LossTerms(NamedTuple):
    """What :meth:`LlavaModel.loss_terms` returns: the summed loss, its token count, the logits used."""

    loss_sum: Tensor  # [] summed cross-entropy over trained tokens
    num_tokens: int  # trained tokens (labels != -100 after the shift, image slots excluded)
    logits: Tensor | None  # [N, V] logits at the trained positions only; None with a fused loss


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
        self.llm = build_llm(config.llm, self.tokenizer, hf_config=llm_hf_config)
        llm_hidden = int(self.llm.get_input_embeddings().weight.shape[1])
        self.projector = build_projector(
            config.projector.type,
            self.vision_tower.hidden_size,
            llm_hidden,
            self.vision_tower.num_image_tokens,
        ).to(self.llm.get_input_embeddings().weight.dtype)
        self.image_processor = (
            image_processor if image_processor is not None else self.vision_tower.build_image_processor()
        )
        self.num_image_tokens = self.vision_tower.num_image_tokens

    def components(self) -> dict[str, nn.Module]:
        """The three trainable parts, by the names freezing and optimiser groups use."""
        return {"vision_tower": self.vision_tower, "projector": self.projector, "llm": self.llm}

    # ---- forward --------------------------------------------------------------------
    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> projected features ``[N, P, D_llm]``."""
        features = self.vision_tower(pixel_values)  # [N, P, D_vision]
        features = features.to(next(self.projector.parameters(), features).dtype)
        return self.projector(features)  # [N, P, D_llm]

    def embed_inputs(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Token embeddings with image features scattered into the image-token slots, ``[B, T, D]``."""
        embed = self.llm.get_input_embeddings()
        inputs_embeds = embed(input_ids)  # [B, T, D]
        slots = input_ids == self.image_token_id  # [B, T]
        n_slots = int(slots.sum())
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        expected = n_images * self.num_image_tokens
        if n_slots != expected:
            per_row = slots.sum(dim=1).tolist()
            raise ValueError(
                f"image tokens do not match images: input_ids hold {n_slots} image-token slots "
                f"(id {self.image_token_id}; per row {per_row}) but {n_images} image(s) x "
                f"{self.num_image_tokens} tokens each = {expected} were expected"
            )
        if n_images == 0:
            return inputs_embeds
        return splice_features(inputs_embeds, slots, self.encode_images(pixel_values))  # [B, T, D]

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Full logits ``[B, T, V]`` and, with ``labels`` ``[B, T]``, the mean next-token loss.

        Image slots never count in the loss, whatever ``labels`` says there. For training,
        :meth:`loss_terms` gives the same loss without computing logits nobody trains on.
        Packed rows pass ``position_ids`` that restart at 0 per sample and no ``attention_mask``.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
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
    ) -> LossTerms:
        """Summed next-token cross-entropy over the trained positions, their count and their logits.

        The LM head runs only where a shifted label is trained (one gather of hidden states
        before the head), so image slots, prompts and padding cost no logits: the same loss
        and gradients as the full forward, with logits ``[N, V]`` instead of ``[B, T, V]``.
        Callers divide ``loss_sum`` by the trained tokens of a whole optimiser step.
        ``linear_cross_entropy(head_weight [V, D], hidden [N, D], targets [N])`` -> summed loss
        replaces head + cross-entropy with a fused kernel (e.g. Liger's), so no logits exist.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)  # [B, T, D]
        targets = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)[:, 1:]  # [B, T-1]
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
                return LossTerms(loss, int(trained.sum()), None)
            logits = head(hidden)  # [N, V]
        else:
            logits = self.llm(inputs_embeds=inputs_embeds, use_cache=False, **mask_kw).logits[:, :-1][trained]
        loss_sum = nn.functional.cross_entropy(logits.float(), targets[trained], reduction="sum")
        return LossTerms(loss_sum, int(trained.sum()), logits)

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
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
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
        model = cls(
            build_config,
            tokenizer=tokenizer,
            image_processor=image_processor,
            vision_hf_config=config_from_dict(meta["vision_config"]) if "vision_config" in meta else None,
            llm_hf_config=config_from_dict(meta["llm_config"]),
        )
        load_model(model, str(folder / WEIGHTS_NAME), strict=True)
        model.config = config
        model.vision_tower.config = config.vision
        return model
