"""Conversion to and from transformers' ``LlavaForConditionalGeneration`` (the ``llava-hf`` layout),
``LlavaNextForConditionalGeneration`` for AnyRes models (``image_aspect="anyres"``: its
``image_grid_pinpoints`` in ``config.json`` and the image processor, and ``image_newline``),
and ``LlavaOnevisionForConditionalGeneration`` for AnyRes models read the OneVision way
(``anyres.max_tiles`` as ``vision_aspect_ratio="anyres_max_N"``, ``anyres.multi_image="base"``,
and a ``video_token`` with 2 x 2 frame pooling).

Both directions go through the transformers model object and its own ``save_pretrained`` /
``from_pretrained``, so on-disk key names are whatever the installed transformers writes and
reads; only in-memory state-dict keys are mapped here. What the ``llava-hf`` layout can hold:
a transformers vision tower with at most one prefix (CLS) token, one feature layer, a
``mlp2x_gelu`` or ``linear`` projector, and an LM head without bias (Llama/Vicuna, Mistral,
Qwen2, GPT-2 export; Phi's LM head has a bias and is refused before anything is written).

A ``linear`` projector is exported exactly as ``linear_2(identity(linear_1(x)))`` with
``linear_2`` the identity matrix; on import, an ``identity``-activation projector is folded
back into one linear layer. llava-hf ties ``lm_head`` only to an ``embed_tokens`` matrix, so
a tied LLM that names it otherwise (GPT-2's ``wte``) is exported untied, with equal weights,
and tied again on import.

Settings llava-hf has no field for (template, image aspect, length limit, freezing, ...) travel
as the whole ``LlavaConfig`` under ``config.json``'s ``llava_lite_export`` key, which
transformers keeps and ignores; the exported ``generation_config.json`` stops at the
template's end-of-turn tokens and its ``max_length`` and the tokenizer's ``model_max_length``
are ``model_max_length``. A llava-hf folder made elsewhere loads with these documented
defaults: ``conv_template="vicuna_v1"`` (LLaVA-1.5's; ``chatml`` for a Qwen2 LLM, as
LLaVA-OneVision's), ``image_aspect="pad"`` (a ``llava_next`` / ``llava_onevision`` folder says
how it reads images) and
``model_max_length`` = the LLM's ``max_position_embeddings``, or the tokenizer's
``model_max_length`` when that is smaller.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
)
from transformers import LlavaConfig as HFLlavaConfig

from llava_lite.config import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    AnyResConfig,
    LlavaConfig,
    LLMConfig,
    ProjectorConfig,
    VisionConfig,
)
from llava_lite.modeling.hf_config import config_to_arch
from llava_lite.modeling.llava import VIDEO_PROCESSOR_NAME, LlavaModel, __version__
from llava_lite.modeling.projector import projector_to_llava_hf
from llava_lite.templates import get_template

log = logging.getLogger(__name__)

_IDENTITY_ACTS = ("linear", "identity")
EXPORT_KEY = "llava_lite_export"  # config.json key holding what llava-hf has no field for
# Defaults for a llava-hf folder that was not exported by llava_lite (see the module docstring).
FOREIGN_DEFAULTS = {"conv_template": "vicuna_v1", "image_aspect": "pad"}
_UNSET_LENGTH = 10**9  # tokenizers without a limit report a huge model_max_length


def _projector_to_hf(model: LlavaModel) -> tuple[str, dict[str, Tensor]]:
    """(projector_hidden_act, ``multi_modal_projector.*`` tensors): the registry knows each type's rule."""
    return projector_to_llava_hf(model.config.projector.type, model.projector)


def _output_head(llm: nn.Module) -> nn.Linear:
    head = llm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(
            f"{type(llm).__name__}'s LM head has a bias or is not a plain Linear; "
            "llava-hf's lm_head is a bias-free Linear"
        )
    return head


def _select_strategy(model: LlavaModel) -> str:
    """llava-hf's strategy: 'default' drops exactly one leading token (CLS), 'full' keeps all."""
    tower = model.vision_tower
    if model.config.vision.select_feature == "cls_patch" or tower.num_prefix_tokens == 0:
        return "full"
    if tower.num_prefix_tokens == 1:
        return "default"
    raise ValueError(
        f"vision tower has {tower.num_prefix_tokens} prefix tokens; llava-hf's 'default' strategy drops only one"
    )


def _ties_in_llava_hf(llm: nn.Module) -> bool:
    """Whether llava-hf can hold this LLM tied: its ``lm_head`` ties only to ``embed_tokens``."""
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    return tied and isinstance(getattr(llm.base_model, "embed_tokens", None), nn.Embedding)


def export_to_hf_llava(model: LlavaModel, out_dir: str | Path) -> Path:
    """Write ``model`` as a folder ``LlavaForConditionalGeneration.from_pretrained`` loads.

    Also writes the tokenizer and a ``LlavaProcessor`` (image processor + tokenizer, and a
    ``chat_template`` rendering the model's conversation template), so
    ``AutoProcessor.from_pretrained(out_dir)`` builds the prompts this model was trained on
    and expands ``<image>`` to the right token count, and a generation config that stops at
    the template's end of turn. transformers' processor resizes and centre-crops (our
    ``image_aspect="crop"``); it does not pad to a square, so with ``image_aspect="pad"``
    non-square images must be squared first (``llava_lite.data.images.make_square``) to get
    our pixel values. Whatever cannot be exported raises before anything is written.
    """
    if model.config.vision.backend != "hf":
        raise ValueError(
            "export needs a transformers vision tower (vision.backend='hf'); timm towers have no llava-hf form"
        )
    out = Path(out_dir)
    tower = model.vision_tower.model
    llm = model.llm
    act, projector_state = _projector_to_hf(model)
    head = _output_head(llm)
    strategy = _select_strategy(model)
    template = get_template(model.config.conv_template)
    tied = _ties_in_llava_hf(llm)
    text_config = {**llm.config.to_dict(), "tie_word_embeddings": tied}
    common: dict[str, Any] = dict(
        vision_config=tower.config.to_dict(),
        text_config=text_config,
        image_token_index=model.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act=act,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=model.config.vision.select_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=tied,
        **{
            EXPORT_KEY: {
                "config": model.config.to_dict(),
                "tie_word_embeddings": bool(getattr(llm.config, "tie_word_embeddings", False)),
                "llava_lite_version": __version__,
            }
        },
    )
    layout = _layout(model)
    hf_model: nn.Module
    if layout == "llava_onevision":
        hf_model = LlavaOnevisionForConditionalGeneration(
            LlavaOnevisionConfig(
                image_grid_pinpoints=[list(p) for p in model.config.anyres.grid_pinpoints],
                vision_aspect_ratio=f"anyres_max_{model.config.anyres.max_tiles}",
                video_token_index=model.video_token_id,
                **common,
            )
        )
    elif layout == "llava_next":
        pinpoints = [list(p) for p in model.config.anyres.grid_pinpoints]
        hf_model = LlavaNextForConditionalGeneration(
            LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        )
    else:
        hf_model = LlavaForConditionalGeneration(HFLlavaConfig(**common))
    hf_model = hf_model.to(head.weight.dtype)
    state: dict[str, Tensor] = {f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()}
    state.update({f"model.language_model.{k}": v for k, v in llm.base_model.state_dict().items()})
    state.update({f"model.multi_modal_projector.{k}": v for k, v in projector_state.items()})
    state["lm_head.weight"] = head.weight.detach().clone()  # a copy: untied exports own it
    if model.image_newline is not None:
        state["model.image_newline"] = model.image_newline.weight.detach().clone()
    hf_model.load_state_dict(state, strict=True)
    stops = template.stop_token_ids(model.tokenizer)
    generation = hf_model.generation_config
    generation.eos_token_id = stops if len(stops) != 1 else stops[0]
    generation.pad_token_id = model.tokenizer.pad_token_id
    generation.max_length = model.config.model_max_length
    hf_model.save_pretrained(out)
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.model_max_length = model.config.model_max_length
    settings: dict[str, Any] = dict(
        image_processor=model.image_processor,
        tokenizer=tokenizer,
        vision_feature_select_strategy=strategy,
        image_token=model.config.image_token,
        chat_template=chat_template_for(
            model.config.conv_template, tokenizer, model.config.image_token, model.config.video_token
        ),
    )
    processor: Any
    if layout == "llava_onevision":
        processor = LlavaOnevisionProcessor(
            video_processor=model.video_processor,
            num_image_tokens=model.vision_tower.num_patches + model.vision_tower.num_prefix_tokens,
            video_token=model.config.video_token,
            vision_aspect_ratio=f"anyres_max_{model.config.anyres.max_tiles}",
            **settings,
        )
    else:
        processor_cls = LlavaNextProcessor if layout == "llava_next" else LlavaProcessor
        processor = processor_cls(
            patch_size=int(tower.config.patch_size),
            num_additional_image_tokens=model.vision_tower.num_prefix_tokens,
            **settings,
        )
    processor.save_pretrained(out)
    log.info("exported llava-hf model to %s", out)
    return out


def _layout(model: LlavaModel) -> str:
    """Which transformers class holds ``model``: ``llava``, ``llava_next`` or ``llava_onevision``;
    a model none can hold raises, naming the setting."""
    cfg = model.config
    if model.image_newline is None:
        if cfg.video_token is not None:
            raise ValueError(
                "video_token is set, but video exports only as llava_onevision, which needs image_aspect='anyres'"
            )
        return "llava"
    onevision = cfg.anyres.max_tiles is not None or cfg.anyres.multi_image == "base" or cfg.video_token
    if not onevision:
        return "llava_next"
    bad = []
    if cfg.anyres.max_tiles is None:
        bad.append("anyres.max_tiles is null (needs OneVision's anyres_max_N, an int)")
    if cfg.anyres.multi_image != "base":
        bad.append(f"anyres.multi_image={cfg.anyres.multi_image!r} (needs 'base')")
    if cfg.video.pool != 2:
        bad.append(f"video.pool={cfg.video.pool} (needs 2)")
    if bad:
        raise ValueError(
            "this model reads images the OneVision way but has no llava_onevision form: " + "; ".join(bad)
        )
    return "llava_onevision"


def chat_template_for(
    template: str, tokenizer: Any, image_token: str = IMAGE_TOKEN, video_token: str | None = None
) -> str | None:
    """The Jinja chat template rendering conversation ``template`` as our processor does (or None)."""
    jinja = get_template(template).jinja(tokenizer, image_token, video_token or VIDEO_TOKEN)
    if jinja is None:
        log.info("no chat_template for conversation template %r; the exported processor has none", template)
    return jinja


def _projector_from_hf(hf_config: HFLlavaConfig, state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """(our projector type, its state dict) from ``multi_modal_projector.*`` tensors."""
    w1, b1 = state["linear_1.weight"], state.get("linear_1.bias")
    w2, b2 = state["linear_2.weight"], state.get("linear_2.bias")
    if b1 is None:
        b1 = torch.zeros(w1.shape[0], dtype=w1.dtype)
    if b2 is None:
        b2 = torch.zeros(w2.shape[0], dtype=w2.dtype)
    act = hf_config.projector_hidden_act
    if act == "gelu":
        return "mlp2x_gelu", {"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2}
    if act in _IDENTITY_ACTS:
        # W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2); exact when W2 is the identity.
        return "linear", {"weight": w2 @ w1, "bias": w2 @ b1 + b2}
    raise ValueError(
        f"projector_hidden_act={act!r} has no llava_lite projector (supported: 'gelu', 'linear')"
    )


def _default_max_length(hc: HFLlavaConfig, tokenizer: Any) -> int:
    """A foreign folder's length limit: the LLM's positions, or the tokenizer's smaller limit."""
    limits = [
        getattr(hc.text_config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    known = [int(n) for n in limits if n and n < _UNSET_LENGTH]
    return min(known) if known else 2048


def _imported_config(
    hc: HFLlavaConfig, derived: LlavaConfig, tokenizer: Any, path: str | Path
) -> tuple[LlavaConfig, bool]:
    """(config, tie the LLM): ``derived`` (what llava-hf holds) completed by the exported
    ``LlavaConfig`` when there is one, else by the documented defaults."""
    stored = getattr(hc, EXPORT_KEY, None)
    if stored is None:
        # Qwen2 models (LLaVA-OneVision's) were trained with chatml turns; others with LLaVA-1.5's.
        qwen = getattr(hc.text_config, "model_type", None) == "qwen2"
        derived.conv_template = "chatml" if qwen else FOREIGN_DEFAULTS["conv_template"]
        if derived.image_aspect != "anyres":  # a llava_next folder says how it reads images
            derived.image_aspect = FOREIGN_DEFAULTS["image_aspect"]
        derived.model_max_length = _default_max_length(hc, tokenizer)
        log.info(
            "%s: a llava-hf folder without %s; using conv_template=%r, image_aspect=%r, model_max_length=%d",
            path,
            EXPORT_KEY,
            derived.conv_template,
            derived.image_aspect,
            derived.model_max_length,
        )
        return derived, False
    config = LlavaConfig.from_dict(stored["config"])
    # The folder is what loads: where it disagrees with the stored copy (edited since), it wins.
    pairs = {
        "projector.type": (config.projector.type, derived.projector.type),
        "vision.select_layer": (config.vision.select_layer, derived.vision.select_layer),
        "image_token": (config.image_token, derived.image_token),
        "llm.dtype": (config.llm.dtype, derived.llm.dtype),
    }
    for name, (ours, theirs) in pairs.items():
        if ours != theirs:
            log.warning(
                "%s: %s is %r in the folder but %r in %s; using the folder's",
                path,
                name,
                theirs,
                ours,
                EXPORT_KEY,
            )
    config.projector.type = derived.projector.type
    config.vision.select_layer = derived.vision.select_layer
    config.image_token = derived.image_token
    config.llm.dtype = derived.llm.dtype
    config.llm.trust_remote_code = derived.llm.trust_remote_code
    if derived.image_aspect == "anyres":
        config.image_aspect, config.anyres.grid_pinpoints = "anyres", derived.anyres.grid_pinpoints
    if derived.video_token is not None:  # llava_onevision: how it reads several images and video
        config.anyres.max_tiles, config.anyres.multi_image = derived.anyres.max_tiles, "base"
        config.video_token = derived.video_token
    if derived.vision.select_feature == "patch":  # 'default' strategy: patches only
        config.vision.select_feature = "patch"
    # 'full' keeps every token: "cls_patch", or "patch" on a tower without prefix tokens
    # (checked once the tower is built).
    return config, bool(stored.get("tie_word_embeddings")) and not hc.text_config.tie_word_embeddings


def import_hf_llava(
    path: str | Path, allow_pickle: bool = False, trust_remote_code: bool = False
) -> LlavaModel:
    """Load a ``llava-hf`` folder (config, weights, tokenizer, image processor) as a LlavaModel.

    A folder written by :func:`export_to_hf_llava` comes back with its whole ``LlavaConfig``;
    others get the defaults in the module docstring. A ``llava_next`` folder loads as an AnyRes
    model with its ``image_grid_pinpoints`` as they are: transformers reads each as (height,
    width), and so does llava_lite.
    """
    model_cls = {
        "llava_next": LlavaNextForConditionalGeneration,
        "llava_onevision": LlavaOnevisionForConditionalGeneration,
    }.get(_model_type(path), LlavaForConditionalGeneration)
    hf_model = model_cls.from_pretrained(
        path, use_safetensors=not allow_pickle or None, trust_remote_code=trust_remote_code
    )
    hc = hf_model.config
    if not isinstance(hc.vision_feature_layer, int):
        raise ValueError(
            f"vision_feature_layer={hc.vision_feature_layer!r}: only a single layer is supported"
        )
    dtype = str(hf_model.lm_head.weight.dtype).removeprefix("torch.")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(path)
    image_token = tokenizer.convert_ids_to_tokens(hc.image_token_index)
    vision_type, vision_arch = config_to_arch(hc.vision_config)
    text_type, text_arch = config_to_arch(hc.text_config)
    proj_state = {
        k.removeprefix("model.multi_modal_projector."): v
        for k, v in hf_model.state_dict().items()
        if k.startswith("model.multi_modal_projector.")
    }
    projector_type, projector_state = _projector_from_hf(hc, proj_state)
    derived = LlavaConfig(
        vision=VisionConfig(
            backend="hf",
            model_type=vision_type,
            arch=vision_arch,
            select_layer=hc.vision_feature_layer,
            select_feature="patch" if hc.vision_feature_select_strategy == "default" else "cls_patch",
        ),
        projector=ProjectorConfig(type=projector_type),
        llm=LLMConfig(model_type=text_type, arch=text_arch, dtype=dtype, trust_remote_code=trust_remote_code),
        image_token=image_token,
    )
    if isinstance(hf_model, LlavaNextForConditionalGeneration | LlavaOnevisionForConditionalGeneration):
        derived.image_aspect = "anyres"
        derived.anyres = AnyResConfig(grid_pinpoints=[[int(h), int(w)] for h, w in hc.image_grid_pinpoints])
    if isinstance(hf_model, LlavaOnevisionForConditionalGeneration):
        derived.anyres.max_tiles = _max_tiles(hc.vision_aspect_ratio, path)
        derived.anyres.multi_image = "base"
        derived.video_token = tokenizer.convert_ids_to_tokens(hc.video_token_index)
    config, retie = _imported_config(hc, derived, tokenizer, path)
    text_config = hc.text_config
    if retie and torch.equal(hf_model.lm_head.weight, hf_model.get_input_embeddings().weight):
        text_config = copy.deepcopy(text_config)
        text_config.tie_word_embeddings = True
    video_processor = None
    if config.video_token is not None and (Path(path) / VIDEO_PROCESSOR_NAME).is_file():
        video_processor = AutoVideoProcessor.from_pretrained(path)
    model = LlavaModel(
        config,
        tokenizer=tokenizer,
        image_processor=image_processor,
        video_processor=video_processor,
        vision_hf_config=hc.vision_config,
        llm_hf_config=text_config,
    )
    prefix = model.vision_tower.num_prefix_tokens
    if hc.vision_feature_select_strategy == "default" and prefix != 1:
        raise ValueError(
            f"{path}: vision_feature_select_strategy='default' drops the first token, but this "
            f"{hc.vision_config.model_type} tower has {prefix} prefix tokens"
        )
    if hc.vision_feature_select_strategy == "full" and config.vision.select_feature == "patch" and prefix:
        raise ValueError(
            f"{path}: vision_feature_select_strategy='full' keeps {prefix} prefix token(s), but "
            f"{EXPORT_KEY} says vision.select_feature='patch'"
        )
    if model.image_token_id != hc.image_token_index:
        raise ValueError(
            f"{path}: tokenizer maps {image_token!r} to {model.image_token_id}, config says {hc.image_token_index}"
        )
    _load_from_hf(model, hf_model, projector_state)
    return model


def _model_type(path: str | Path) -> str:
    """A llava-hf folder's ``model_type`` (``llava``, ``llava_next``, ``llava_onevision``), from its ``config.json``."""
    return str(json.loads((Path(path) / "config.json").read_text()).get("model_type", "llava"))


def _max_tiles(vision_aspect_ratio: str, path: str | Path) -> int:
    """N of a OneVision config's ``vision_aspect_ratio="anyres_max_N"``."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix) :].isdigit():
        raise ValueError(
            f"{path}: vision_aspect_ratio={vision_aspect_ratio!r}; only 'anyres_max_N' is supported"
        )
    return int(vision_aspect_ratio[len(prefix) :])


def _load_from_hf(model: LlavaModel, hf_model: nn.Module, projector_state: dict[str, Any]) -> None:
    hf_state = hf_model.state_dict()

    def part(prefix: str) -> dict[str, Tensor]:
        return {k.removeprefix(prefix): v for k, v in hf_state.items() if k.startswith(prefix)}

    model.vision_tower.model.load_state_dict(part("model.vision_tower."), strict=True)
    model.llm.base_model.load_state_dict(part("model.language_model."), strict=True)
    _output_head(model.llm).weight.data.copy_(hf_state["lm_head.weight"])
    model.projector.load_state_dict(projector_state, strict=True)
    if model.image_newline is not None:
        model.image_newline.weight.data.copy_(hf_state["model.image_newline"])
