"""Import checkpoints of the original LLaVA code base (haotian-liu/LLaVA, ``LlavaLlamaForCausalLM``).

Such a folder holds one ``config.json``: the LLM's own config plus ``mm_*`` keys
(``mm_vision_tower``, ``mm_projector_type``, ``mm_vision_select_layer``,
``mm_vision_select_feature``, ``mm_hidden_size``, ``image_aspect_ratio``), the tokenizer, and
weights (one file or shards with an index) in which the LLM keeps its usual keys
(``model.layers.*``, ``lm_head.weight``) and the projector sits at ``model.mm_projector.*``.
The vision tower is named by ``mm_vision_tower`` (a hub id or a local CLIP folder); when the
checkpoint also carries its weights (``model.vision_tower.vision_tower.*``) those win.

LLaVA-NeXT checkpoints (``image_aspect_ratio: anyres`` or ``anyres_max_N``,
``mm_patch_merge_type: spatial_unpad``) import as AnyRes models with their
``model.image_newline``. The original code reads each ``image_grid_pinpoints`` entry as
(width, height); llava_lite, like transformers, reads (height, width), so each pair is
swapped on import and the model picks the grid the original picked, ties included (every
image of 336 px or less on both sides ties between 336x672 and 672x336).

The original never puts ``<image>`` in the vocabulary (it splices at id -200); here the
tokenizer gains it as a special token after the LLM weights are loaded, with its embedding
row initialised as a mean of the others — the row is never read, image features replace it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoConfig, AutoTokenizer

from llava_lite.config import AnyResConfig, LlavaConfig, LLMConfig, ProjectorConfig, VisionConfig
from llava_lite.modeling.llava import LlavaModel
from llava_lite.modeling.llm import resize_for_tokenizer

log = logging.getLogger(__name__)

# The original's model_type -> the transformers LLM it wraps.
LLM_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
# config.json keys about the multimodal wrapper or training, not the LLM architecture.
_WRAPPER_KEYS = {
    "architectures",
    "model_type",
    "transformers_version",
    "_name_or_path",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "image_crop_resolution",
    "image_split_resolution",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "tune_mm_vision_resampler",
    "use_mm_proj",
    "freeze_backbone",
}
_WEIGHT_FILES = {  # (index file, single file) per format
    "safetensors": ("model.safetensors.index.json", "model.safetensors"),
    "pickle": ("pytorch_model.bin.index.json", "pytorch_model.bin"),
}
PROJECTOR_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower.vision_tower."
NEWLINE_KEY = "model.image_newline"
_ANYRES_MAX = "anyres_max_"
# Their image_aspect_ratio -> ours: anything but "pad" is the processor's resize + centre crop.
_ASPECTS = {"pad": "pad", "square": "crop", None: "crop"}


def is_original_llava(path: str | Path) -> bool:
    """Whether ``path`` looks like an original LLaVA checkpoint folder (its config has ``mm_vision_tower``)."""
    config = Path(path) / "config.json"
    return config.is_file() and "mm_vision_tower" in json.loads(config.read_text())


def read_state_dict(folder: str | Path, allow_pickle: bool = False) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder: one file or shards listed by an index, safetensors first.

    Pickle files (``pytorch_model*.bin``) load with ``weights_only=True`` and only when allowed.
    """
    folder = Path(folder)
    for fmt, (index_name, single_name) in _WEIGHT_FILES.items():
        index, single = folder / index_name, folder / single_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.is_file():
            files = [single_name]
        else:
            continue
        if fmt == "pickle" and not allow_pickle:
            raise ValueError(
                f"{folder} has only pickle weights ({files[0]}); import_original_llava(..., allow_pickle=True) loads them"
            )
        state: dict[str, Tensor] = {}
        for name in files:
            path = folder / name
            if fmt == "safetensors":
                state.update(load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        return state
    hint = ""
    if (folder / "mm_projector.bin").is_file():
        hint = "; a stage-1 folder: start stage 2 from it with model.init_projector_from=<folder>/mm_projector.bin"
    elif (folder / "adapter_config.json").is_file():
        hint = (
            "; a LoRA checkpoint: merge it into its base model first (LLaVA's scripts/merge_lora_weights.py)"
        )
    raise FileNotFoundError(f"{folder}: no model.safetensors / pytorch_model.bin (or their index){hint}")


def original_to_config(data: dict[str, Any], vision_tower: str | None = None) -> tuple[LlavaConfig, Any]:
    """(LlavaConfig, transformers LLM config) from an original LLaVA ``config.json`` dict."""
    source_type = data.get("model_type", "llava")
    if source_type not in LLM_TYPES:
        raise ValueError(
            f"model_type={source_type!r}: supported original LLaVA types are {sorted(LLM_TYPES)}"
        )
    if data.get("mm_use_im_start_end") or data.get("mm_use_im_patch_token"):
        raise ValueError(
            "mm_use_im_start_end / mm_use_im_patch_token checkpoints (LLaVA v0) are not supported"
        )
    aspect = data.get("image_aspect_ratio")
    anyres = _anyres_config(data)
    if anyres is None and aspect not in _ASPECTS:
        raise ValueError(
            f"image_aspect_ratio={aspect!r} is not supported; supported: pad, square, anyres, anyres_max_N"
        )
    llm_type = LLM_TYPES[source_type]
    arch = {k: v for k, v in data.items() if k not in _WRAPPER_KEYS and not k.startswith("mm_")}
    dtypes = (arch.pop("torch_dtype", None), arch.pop("dtype", None))  # transformers 4.x / 5.x key
    dtype = str(dtypes[0] or dtypes[1] or "float32")
    config = LlavaConfig(
        vision=VisionConfig(
            backend="hf",
            name_or_path=vision_tower or data["mm_vision_tower"],
            select_layer=int(data.get("mm_vision_select_layer", -1)),
            select_feature=data.get("mm_vision_select_feature", "patch"),
        ),
        projector=ProjectorConfig(type=data.get("mm_projector_type", "linear")),
        llm=LLMConfig(model_type=llm_type, arch=arch, dtype=dtype),
        image_aspect="anyres" if anyres else _ASPECTS[aspect],
        anyres=anyres or AnyResConfig(),
        model_max_length=int(data.get("tokenizer_model_max_length") or 2048),
    )
    return config, AutoConfig.for_model(llm_type, **arch)


def _anyres_config(data: dict[str, Any]) -> AnyResConfig | None:
    """LLaVA-NeXT's settings as an :class:`AnyResConfig` (pinpoints swapped to (height, width)), or None."""
    aspect = str(data.get("image_aspect_ratio"))
    merge = data.get("mm_patch_merge_type", "flat")
    if aspect != "anyres" and not aspect.startswith(_ANYRES_MAX):
        if merge != "flat":
            raise ValueError(
                f"mm_patch_merge_type={merge!r} without image_aspect_ratio anyres is not supported"
            )
        return None
    if merge != "spatial_unpad":
        raise ValueError(
            f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r}: only 'spatial_unpad' "
            "(LLaVA-NeXT's and transformers' layout) is supported"
        )
    pinpoints = data.get("image_grid_pinpoints")
    if not isinstance(pinpoints, list) or not all(isinstance(p, list) and len(p) == 2 for p in pinpoints):
        raise ValueError(
            f"image_grid_pinpoints={pinpoints!r}: give the list of [width, height] pairs "
            "(the '(1x1),...,(6x6)' range form is not read)"
        )
    max_tiles = int(aspect.removeprefix(_ANYRES_MAX)) if aspect.startswith(_ANYRES_MAX) else None
    return AnyResConfig(grid_pinpoints=[[int(h), int(w)] for w, h in pinpoints], max_tiles=max_tiles)


def import_original_llava(
    path: str | Path,
    vision_tower: str | None = None,
    conv_template: str = "vicuna_v1",
    allow_pickle: bool = False,
    dtype: str | None = None,
) -> LlavaModel:
    """Load an original LLaVA checkpoint folder as a LlavaModel.

    ``vision_tower`` replaces ``mm_vision_tower`` (e.g. a local copy of
    ``openai/clip-vit-large-patch14-336``); ``conv_template`` is the prompt format it was
    trained with (not recorded in the checkpoint; LLaVA-1.5 uses ``vicuna_v1``).
    """
    folder = Path(path)
    data = json.loads((folder / "config.json").read_text())
    if "mm_vision_tower" not in data:
        raise ValueError(f"{folder}/config.json has no 'mm_vision_tower': not an original LLaVA checkpoint")
    config, llm_config = original_to_config(data, vision_tower)
    config.conv_template = conv_template
    if dtype is not None:
        config.llm.dtype = dtype
    state = read_state_dict(folder, allow_pickle)
    projector_state = {
        k.removeprefix(PROJECTOR_PREFIX): v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)
    }
    vision_state = {k.removeprefix(VISION_PREFIX): v for k, v in state.items() if k.startswith(VISION_PREFIX)}
    newline = state.pop(NEWLINE_KEY, None)
    llm_state = {
        k: v for k, v in state.items() if not k.startswith(("model.mm_projector.", "model.vision_tower."))
    }
    if not projector_state:
        raise ValueError(f"{folder}: no {PROJECTOR_PREFIX}* weights in the checkpoint")

    model = LlavaModel(config, tokenizer=AutoTokenizer.from_pretrained(folder), llm_hf_config=llm_config)
    # Load at the checkpoint's vocabulary size, then grow for <image> (and pad) as usual.
    model.llm.resize_token_embeddings(int(llm_state["model.embed_tokens.weight"].shape[0]))
    model.llm.load_state_dict(llm_state, strict=True)
    resize_for_tokenizer(model.llm, model.tokenizer, config.llm.pad_vocab_to_multiple_of)
    model.projector.load_state_dict(projector_state, strict=True)
    if model.image_newline is not None:
        if newline is None:
            raise ValueError(f"{folder}: an AnyRes (LLaVA-NeXT) checkpoint without {NEWLINE_KEY}")
        model.image_newline.weight.data.copy_(newline)
    if vision_state:
        tower = model.vision_tower.model
        if not any(k.startswith("vision_model.") for k in tower.state_dict()):
            # transformers 5's CLIPVisionModel has no "vision_model." level; 4.x checkpoints do.
            vision_state = {k.removeprefix("vision_model."): v for k, v in vision_state.items()}
        tower.load_state_dict(vision_state, strict=True)
    else:
        log.info("%s carries no vision weights; the tower comes from %s", folder, config.vision.name_or_path)
    return model
