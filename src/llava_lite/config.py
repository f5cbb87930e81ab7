"""Typed model configuration; named presets are the Hydra ``model`` group's files.

No torch import here: configs are cheap to build, compare, serialise and compose with
Hydra (every field is a plain type, so ``OmegaConf.structured`` accepts them). The presets
live once, as ``conf/model/<name>.yaml`` (composed from ``model/vision``, ``model/llm``,
``model/projector``); :meth:`LlavaConfig.from_name` reads the same files Hydra composes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from llava_lite.hydra_conf import config_dir

log = logging.getLogger(__name__)

S = TypeVar("S")

VISION_BACKENDS = ("hf", "timm")
SELECT_FEATURES = ("patch", "cls_patch")
# How an image becomes a square before the tower's processor (see llava_lite.data.images.make_square),
# or ``anyres``: a base view plus a grid of full-resolution tiles (LLaVA-NeXT; ``LlavaConfig.anyres``).
IMAGE_ASPECTS = ("pad", "resize", "crop", "anyres")
# How each image of a multi-image sample is read under AnyRes (``AnyResConfig.multi_image``).
MULTI_IMAGE_VIEWS = ("anyres", "base")
# LLaVA-NeXT's default grid for a 336-pixel tower, (height, width) in pixels.
LLAVA_NEXT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# The text marker of an image in a conversation; one special token of the tokenizer.
IMAGE_TOKEN = "<image>"
# The text marker of a video, for models that read video (``LlavaConfig.video_token``).
VIDEO_TOKEN = "<video>"
# What a model without a video token says when given a video.
NO_VIDEO = "this model reads no video (video_token is null in its config)"
# The label of a position the loss ignores (transformers' and PyTorch's default).
IGNORE_INDEX = -100


@dataclass
class VisionConfig:
    """Which vision encoder to use and which of its features feed the projector.

    ``name_or_path`` set: load pretrained weights (a hub id or a local folder for ``hf``;
    a timm model name, optionally with ``checkpoint_path``, for ``timm``). Unset: build the
    architecture described by ``model_type`` + ``arch`` with random weights (tests, demo).
    """

    backend: str = "hf"
    name_or_path: str | None = None
    model_type: str = "clip_vision_model"
    arch: dict[str, Any] = field(default_factory=dict)
    timm_pretrained: bool = False
    checkpoint_path: str | None = None
    select_layer: int = -2
    select_feature: str = "patch"
    freeze: bool = True
    # Preprocessing overrides; None means "what the tower's own processor says".
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # Pickle (.bin) checkpoints can run code when loaded; only safetensors unless allowed.
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if self.backend not in VISION_BACKENDS:
            raise ValueError(f"vision.backend={self.backend!r}; valid: {list(VISION_BACKENDS)}")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"vision.select_feature={self.select_feature!r}; valid: {list(SELECT_FEATURES)}")
        if self.backend == "timm" and not (self.name_or_path or self.arch.get("model_name")):
            raise ValueError("vision.backend='timm' needs name_or_path (a timm model name)")


@dataclass
class ProjectorConfig:
    """Maps vision features to LLM embeddings; ``type`` names an entry of the projector registry.

    A type is a base (``linear``, ``identity``, ``mlp{N}x_gelu``) optionally with a variant
    suffix, e.g. ``mlp2x_gelu+patch_positions`` (``llava_lite.modeling.projector``); only the
    registry interprets it, so this config stays one string.
    """

    type: str = "mlp2x_gelu"


@dataclass
class AnyResConfig:
    """LLaVA-NeXT's high-resolution reading, used when ``LlavaConfig.image_aspect="anyres"``.

    ``grid_pinpoints``: the canvases an image may be tiled into, each ``[height, width]`` in
    pixels (transformers' order; the original LLaVA-NeXT code writes ``(width, height)``, and
    its importer swaps them), multiples of the tower's input size. ``max_tiles``: OneVision's
    ``anyres_max_N``: grid features above about N tiles' worth are bilinearly downsampled;
    null keeps every feature (LLaVA-NeXT). See ``llava_lite.image_grid``.
    """

    grid_pinpoints: list[list[int]] = field(default_factory=lambda: copy.deepcopy(LLAVA_NEXT_GRID_PINPOINTS))
    max_tiles: int | None = None
    # How each image of a sample with several is read: ``anyres`` tiles it like a single image
    # (transformers' LlavaNext); ``base`` reads it as one view padded to a square, followed by
    # one newline (LLaVA-OneVision / Interleave, transformers' LlavaOnevision).
    multi_image: str = "anyres"

    def __post_init__(self) -> None:
        if self.multi_image not in MULTI_IMAGE_VIEWS:
            raise ValueError(f"anyres.multi_image={self.multi_image!r}; valid: {list(MULTI_IMAGE_VIEWS)}")


@dataclass
class VideoConfig:
    """How a video becomes tokens (LLaVA-OneVision's recipe); used when ``LlavaConfig.video_token`` is set.

    ``num_frames`` are sampled uniformly over the clip, or at ``fps`` frames a second (capped
    at ``num_frames``) when set; a clip with fewer frames gives all it has, and fewer than
    ``min_frames`` makes a bad sample (``short_video``). Each frame is one view of the tower,
    its feature grid bilinearly pooled to ``ceil(side / pool)`` a side (2: 729 -> 196 tokens
    for SigLIP-384); under AnyRes one ``image_newline`` follows the last frame.
    """

    num_frames: int = 8
    fps: float | None = None
    min_frames: int = 1
    pool: int = 2

    def __post_init__(self) -> None:
        if self.pool < 1:
            raise ValueError(f"video.pool={self.pool}; must be >= 1")


# LLM weight quantisation (``QuantizationConfig``): bitsandbytes' 4-bit formats and the dtypes
# its kernels multiply dequantised weights in.
QUANT_BITS = (4,)
QUANT_TYPES = ("nf4", "fp4")
QUANT_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class QuantizationConfig:
    """The LLM's linear layers stored in 4 bits by bitsandbytes (QLoRA), as LLaVA's ``--bits 4
    --quant_type nf4 --double_quant``; set as ``LLMConfig.quantization``.

    Only the decoder's linear layers are quantised (transformers keeps the LM head, embeddings
    and norms in full precision); the vision tower and projector are never touched. The 4-bit
    weights are frozen, so the LLM trains through LoRA only (``module.lora``).
    ``double_quant`` also quantises the per-block scales (about 0.37 bit a parameter saved);
    ``compute_dtype`` is what the dequantised weights multiply in (null: ``LLMConfig.dtype``).
    """

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise ValueError(f"model.llm.quantization.bits={self.bits!r}; valid: {list(QUANT_BITS)}")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(
                f"model.llm.quantization.quant_type={self.quant_type!r}; valid: {list(QUANT_TYPES)}"
            )
        if self.compute_dtype is not None and self.compute_dtype not in QUANT_COMPUTE_DTYPES:
            raise ValueError(
                f"model.llm.quantization.compute_dtype={self.compute_dtype!r}; valid: "
                f"{[None, *QUANT_COMPUTE_DTYPES]}"
            )


@dataclass
class LLMConfig:
    """Which causal LM to use, and how its tokenizer is obtained.

    ``name_or_path`` set: ``AutoModelForCausalLM.from_pretrained``. Unset: build ``model_type``
    + ``arch`` with random weights. The tokenizer comes from ``tokenizer_name_or_path``, else
    from ``name_or_path``, else a small BPE tokenizer is trained offline (``tiny_tokenizer``).
    """

    name_or_path: str | None = None
    model_type: str = "llama"
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer_name_or_path: str | None = None
    tiny_tokenizer: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    dtype: str = "float32"
    attn_implementation: str | None = None
    pad_vocab_to_multiple_of: int = 1
    # Pickle (.bin) checkpoints can run code when loaded; only safetensors unless allowed.
    allow_pickle: bool = False
    # null: full precision; set: 4-bit linear layers (QLoRA), see QuantizationConfig.
    quantization: QuantizationConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quantization, dict | DictConfig):
            self.quantization = _from_dict(QuantizationConfig, dict(self.quantization))
        elif self.quantization is not None and not isinstance(self.quantization, QuantizationConfig):
            raise ValueError(
                f"model.llm.quantization={self.quantization!r}; valid: null or a mapping such as "
                "{bits: 4, quant_type: nf4, double_quant: true, compute_dtype: null}"
            )


@dataclass
class LlavaConfig:
    """A whole LLaVA model: vision tower, projector, LLM and how images become tokens."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    image_token: str = IMAGE_TOKEN
    image_aspect: str = "pad"
    anyres: AnyResConfig = field(default_factory=AnyResConfig)
    # The text marker of a video (one special token), or None for a model that reads no video:
    # adding a token grows the vocabulary, so image-only models keep theirs unchanged.
    video_token: str | None = None
    video: VideoConfig = field(default_factory=VideoConfig)
    model_max_length: int = 2048
    conv_template: str = "vicuna_v1"
    # A stage-1 projector file (projector.safetensors or LLaVA's mm_projector.bin) that
    # training loads into the projector before stage 2; the model itself never reads it.
    init_projector_from: str | None = None

    def __post_init__(self) -> None:
        # Accept plain dicts (from JSON or Hydra) for the nested parts.
        if isinstance(self.vision, dict):
            self.vision = _from_dict(VisionConfig, self.vision)
        if isinstance(self.projector, dict):
            self.projector = _from_dict(ProjectorConfig, _upgrade_projector(self.projector))
        if isinstance(self.llm, dict):
            self.llm = _from_dict(LLMConfig, self.llm)
        if isinstance(self.anyres, dict):
            self.anyres = _from_dict(AnyResConfig, self.anyres)
        if isinstance(self.video, dict):
            self.video = _from_dict(VideoConfig, self.video)
        if self.video_token is not None and self.video_token == self.image_token:
            raise ValueError(
                f"video_token and image_token are both {self.image_token!r}; they need their own tokens"
            )
        if self.image_aspect not in IMAGE_ASPECTS:
            raise ValueError(f"image_aspect={self.image_aspect!r}; valid: {list(IMAGE_ASPECTS)}")

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlavaConfig:
        """Rebuild from a dict; unknown keys (from newer or older versions) are logged, not fatal."""
        return _from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"llava_lite": self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LlavaConfig:
        data = json.loads(Path(path).read_text())
        if "llava_lite" not in data:
            raise ValueError(f"{path} is not a llava_lite config.json (no 'llava_lite' key)")
        return cls.from_dict(data["llava_lite"])

    # ---- presets -------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> LlavaConfig:
        """A named preset (``conf/model/<name>.yaml``, see :func:`preset_names`), with
        top-level fields optionally overridden."""
        data = preset(name)
        data.update(overrides)
        return cls.from_dict(data)


def preset_names() -> list[str]:
    """The presets: the options of the Hydra ``model`` group."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def preset(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` as a plain dict, its defaults list composed as Hydra does
    (each ``group: option`` entry becomes that key, then ``_self_``)."""
    folder = config_dir() / "model"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown LLaVA preset {name!r}; valid: {preset_names()}")
    own = OmegaConf.load(path)
    entries = list(own.pop("defaults", []))
    if "_self_" not in entries:
        entries.append("_self_")  # Hydra's default place for it
    merged = OmegaConf.create()
    for entry in entries:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, own)
            continue
        ((group, option),) = dict(entry).items()
        part = OmegaConf.load(folder / group / f"{option}.yaml")
        if "defaults" in part:
            raise ValueError(f"{folder / group / option}.yaml: nested defaults lists are not supported here")
        merged = OmegaConf.merge(merged, {group: part})
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:  # a part the run makes or the user names: ``???`` in the file
        raise ValueError(f"model preset {name!r} needs {', '.join(f'model.{k}' for k in missing)}: set it")
    data = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(data, dict)
    return data


# The variant suffix that replaced ProjectorConfig's old ``patch_positions: bool`` field.
_LEGACY_PATCH_POSITIONS = "+patch_positions"


def _upgrade_projector(data: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before projector variants had ``patch_positions: bool``; fold it into ``type``.

    ``{type: X, patch_positions: true}`` becomes ``{type: "X+patch_positions"}`` and ``false`` is
    dropped, so old ``config.json`` files, checkpoints' hyperparameters and dicts load unchanged.
    """
    if "patch_positions" not in data:
        return data
    data = dict(data)
    if data.pop("patch_positions"):
        kind = str(data.get("type", ProjectorConfig.type))
        if not kind.endswith(_LEGACY_PATCH_POSITIONS):
            data["type"] = kind + _LEGACY_PATCH_POSITIONS
    return data


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        log.warning("%s: ignoring unknown config keys %s", cls.__name__, unknown)
    return cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in names})


def validated_settings(schema: type[S], cfg: DictConfig | dict[str, Any] | S) -> S:
    """Validate a Hydra / dict config against the dataclass ``schema`` (types, unknown keys);
    an instance of ``schema`` is returned as it is."""
    if isinstance(cfg, schema):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    settings = OmegaConf.to_object(merged)
    assert isinstance(settings, schema)
    return settings
