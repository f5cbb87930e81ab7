"""Vision towers: a transformers vision model or a timm ViT, with LLaVA's feature selection.

LLaVA feeds the projector one hidden layer of the encoder (``select_layer``, default -2,
the penultimate layer, where features are less specialised to CLIP's contrastive head), with
the CLS / prefix tokens dropped (``patch``) or kept (``cls_patch``). Layer indices follow the
transformers convention: ``hidden_states[0]`` is the embedding output, ``hidden_states[i]``
the output of block ``i``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    CLIPImageProcessor,
    LlavaNextImageProcessor,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionVideoProcessor,
    PretrainedConfig,
    SiglipImageProcessor,
)
from transformers.image_utils import PILImageResampling
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from llava_lite.config import VisionConfig
from llava_lite.modeling.dtypes import resolve_dtype

log = logging.getLogger(__name__)


def _vision_part(config: PretrainedConfig) -> PretrainedConfig:
    """A full CLIP/SigLIP config carries text and vision parts; the tower needs only the latter."""
    return getattr(config, "vision_config", None) or config


class VisionTower(nn.Module):
    """Wraps an image encoder and returns the selected layer's tokens, ``[N, P, D]``.

    Attributes used by the rest of the model: ``hidden_size`` (D), ``num_patches`` (patch
    tokens only), ``num_prefix_tokens`` (CLS / register tokens), ``num_image_tokens`` (what
    one image becomes after feature selection), ``image_size``.
    """

    def __init__(
        self,
        config: VisionConfig,
        hf_config: PretrainedConfig | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.config = config
        torch_dtype = resolve_dtype(dtype)
        if config.backend == "hf":
            self.model = self._build_hf(config, hf_config, torch_dtype)
            vcfg = self.model.config
            self.hidden_size = int(vcfg.hidden_size)
            self.image_size = int(vcfg.image_size)
            patch = int(vcfg.patch_size)
            self.num_patches = (self.image_size // patch) ** 2
            self.num_prefix_tokens = self._hf_prefix_tokens(self.model)
            self.num_layers = int(vcfg.num_hidden_layers)
        else:
            self.model = self._build_timm(config).to(torch_dtype)
            self.hidden_size = int(self.model.embed_dim)
            self.image_size = int(self.model.patch_embed.img_size[0])
            self.num_patches = int(self.model.patch_embed.num_patches)
            self.num_prefix_tokens = int(self.model.num_prefix_tokens)
            self.num_layers = len(self.model.blocks)
        if not -self.num_layers - 1 <= config.select_layer <= self.num_layers:
            raise ValueError(
                f"vision.select_layer={config.select_layer} out of range for a {self.num_layers}-layer encoder"
            )
        self.num_image_tokens = self.num_patches + (
            self.num_prefix_tokens if config.select_feature == "cls_patch" else 0
        )
        if config.freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    # ---- construction ---------------------------------------------------------------
    @staticmethod
    def _build_hf(config: VisionConfig, hf_config: PretrainedConfig | None, dtype: torch.dtype) -> nn.Module:
        if hf_config is not None:
            return AutoModel.from_config(_vision_part(hf_config), dtype=dtype)
        if config.name_or_path is None:
            built = AutoConfig.for_model(config.model_type, **config.arch)
            return AutoModel.from_config(_vision_part(built), dtype=dtype)
        full = AutoConfig.from_pretrained(config.name_or_path)
        vision_cfg = _vision_part(full)
        for key, value in config.arch.items():
            setattr(vision_cfg, key, value)
        # The class for the vision part (CLIPVisionModel for a full CLIP checkpoint); its
        # from_pretrained picks the vision weights out of the full checkpoint.
        model_cls = MODEL_MAPPING[type(vision_cfg)]
        return model_cls.from_pretrained(
            config.name_or_path,
            config=vision_cfg,
            dtype=dtype,
            use_safetensors=not config.allow_pickle or None,
        )

    @staticmethod
    def _build_timm(config: VisionConfig) -> nn.Module:
        import timm

        arch = dict(config.arch)
        name = config.name_or_path or arch.pop("model_name")
        arch.pop("model_name", None)
        kwargs: dict[str, Any] = {"pretrained": config.timm_pretrained or config.checkpoint_path is not None}
        if config.checkpoint_path is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": config.checkpoint_path}
        model = timm.create_model(name, num_classes=0, **kwargs, **arch)
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
            raise ValueError(f"timm model {name!r} is not a ViT-style encoder with forward_intermediates")
        return model

    @staticmethod
    def _hf_prefix_tokens(model: nn.Module) -> int:
        """CLS (CLIP, ViT, DINOv2) and register tokens come before the patches; SigLIP has none."""
        embeddings = getattr(model, "embeddings", None)
        if embeddings is None:
            embeddings = getattr(getattr(model, "vision_model", None), "embeddings", None)
        has_cls = any(hasattr(embeddings, name) for name in ("class_embedding", "cls_token"))
        registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        return int(has_cls) + registers

    # ---- forward --------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """Frozen means no parameter requires grad, so stage-wise freezing done elsewhere counts too."""
        return not any(p.requires_grad for p in self.model.parameters())

    def train(self, mode: bool = True) -> VisionTower:
        """A frozen tower stays in eval mode (dropout off, norms fixed) whatever the parent does."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> ``[N, num_image_tokens, D]``."""
        pixel_values = pixel_values.to(self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self._select_layer(pixel_values)  # [N, prefix + P, D]
        if self.config.select_feature == "patch":
            hidden = hidden[:, self.num_prefix_tokens :]
        return hidden  # [N, num_image_tokens, D]

    def _select_layer(self, pixel_values: Tensor) -> Tensor:
        if self.config.backend == "hf":
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
            return out.hidden_states[self.config.select_layer]
        layer = self.config.select_layer % (self.num_layers + 1)
        if layer == 0:
            raise ValueError(
                "vision.select_layer selects the embedding output, which timm towers do not expose"
            )
        feats, prefix = self.model.forward_intermediates(
            pixel_values,
            indices=[layer - 1],
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        return torch.cat([prefix, feats], dim=1)  # [N, prefix + P, D]

    # ---- preprocessing --------------------------------------------------------------
    def build_image_processor(self) -> Any:
        """The transformers image processor matching this tower, with VisionConfig overrides applied."""
        cfg = self.config
        if cfg.backend == "timm":
            from timm.data import resolve_data_config

            data_cfg = resolve_data_config({}, model=self.model)
            processor = CLIPImageProcessor(
                size={"shortest_edge": self.image_size},
                crop_size={"height": self.image_size, "width": self.image_size},
                image_mean=list(data_cfg["mean"]),
                image_std=list(data_cfg["std"]),
                resample=PILImageResampling.BICUBIC
                if data_cfg.get("interpolation") == "bicubic"
                else PILImageResampling.BILINEAR,
            )
        elif cfg.name_or_path is not None:
            processor = AutoImageProcessor.from_pretrained(cfg.name_or_path)
        elif "siglip" in self.model.config.model_type:
            processor = SiglipImageProcessor(size={"height": self.image_size, "width": self.image_size})
        else:
            processor = CLIPImageProcessor(
                size={"shortest_edge": self.image_size},
                crop_size={"height": self.image_size, "width": self.image_size},
            )
        return apply_processor_overrides(processor, cfg)


def apply_processor_overrides(processor: Any, cfg: VisionConfig) -> Any:
    """Honour ``image_size`` / ``image_mean`` / ``image_std`` from the config on any processor."""
    if cfg.image_size is None and cfg.image_mean is None and cfg.image_std is None:
        return processor
    data = processor.to_dict()
    if cfg.image_size is not None:
        size = cfg.image_size
        if data.get("do_center_crop") and data.get("crop_size") is not None:
            data["size"] = {"shortest_edge": size}
            data["crop_size"] = {"height": size, "width": size}
        else:
            data["size"] = {"height": size, "width": size}
    if cfg.image_mean is not None:
        data["image_mean"] = list(cfg.image_mean)
    if cfg.image_std is not None:
        data["image_std"] = list(cfg.image_std)
    return type(processor).from_dict(data)


def _shared_settings(processor: Any) -> dict[str, Any]:
    """The resampling and normalisation of ``processor``, for the tiling and video processors."""
    data = processor.to_dict()
    keep = (
        "do_resize",
        "resample",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
    )
    return {k: data[k] for k in keep if data.get(k) is not None}


def tiling_image_processor(
    processor: Any, pinpoints: list[list[int]], tile: int, multi_image: str = "anyres"
) -> LlavaNextImageProcessor | LlavaOnevisionImageProcessor:
    """transformers' LLaVA-NeXT image processor with ``processor``'s normalisation and ``pinpoints``.

    It resizes to the chosen pinpoint keeping the aspect, pads with black (centred), cuts
    row-major tiles of ``tile`` pixels and puts the whole image resized to one tile first, so
    our pixels are transformers' pixels. A processor that already tiles keeps its settings
    and gets ``pinpoints``. With ``multi_image="base"`` it is LLaVA-OneVision's, which tiles a
    single image the same way and reads each image of several as one view padded to a square.
    """
    data = processor.to_dict()
    settings = _shared_settings(processor)
    settings.update(
        size={"shortest_edge": tile}
        if "shortest_edge" in (data.get("size") or {})
        else {"height": tile, "width": tile},
        crop_size={"height": tile, "width": tile},
        do_center_crop=bool(data.get("do_center_crop")),
        do_convert_rgb=True,
        do_pad=True,
        image_grid_pinpoints=[list(map(int, p)) for p in pinpoints],
    )
    if multi_image == "base":
        return LlavaOnevisionImageProcessor(**settings)
    return LlavaNextImageProcessor(**settings)


def video_processor_for(processor: Any, tile: int) -> LlavaOnevisionVideoProcessor:
    """transformers' LLaVA-OneVision video processor with ``processor``'s normalisation: every
    frame resized to one ``tile`` x ``tile`` view, as OneVision reads video."""
    return LlavaOnevisionVideoProcessor(**_shared_settings(processor), size={"height": tile, "width": tile})
