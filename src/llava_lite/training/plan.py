"""Will a run fit, and how long will it take? Memory and time from the config alone.

The model is built on the meta device (shapes, no storage), so a 13B preset costs nothing; a
preset that names hub checkpoints gets its architecture from :data:`KNOWN_ARCHITECTURES` (the
shipped presets' ``config.json`` values), since nothing here may reach the network. Which
parameters train follows the training module's own rules (:func:`apply_stage`,
:func:`apply_lora`, ``module.fp32_trainable``); the strategy is recognised by its Lightning class.

Per device: weights, gradients and AdamW state under the strategy's sharding (the ZeRO paper's
accounting: 2 + 2 + 12 bytes a trained parameter under DeepSpeed with bf16), communication
buffers, the decoder's activations (what autograd keeps for a Llama-style layer, with and without
activation checkpointing), the logits at trained positions (``LlavaModel.loss_terms``) and the
vision side. FLOPs: 6 x parameters x tokens where weights train, 4x where only activation
gradients pass (a frozen LLM above a trained projector), 2x for forward-only parts (a frozen
tower), plus a forward pass again when checkpointing. ``docs/training.md`` shows the arithmetic
and how the CPU estimate compares with measured peaks.

QLoRA (``model.llm.quantization``): the decoder's frozen linear weights at 4 bits plus their
quantisation constants (:func:`four_bit_bytes`), its norms in float32 when LoRA trains it (peft's
``prepare_model_for_kbit_training``), embeddings and LM head in ``model.llm.dtype``; one device
or DDP only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, CLIPImageProcessor, PretrainedConfig

from llava_lite.config import LlavaConfig, QuantizationConfig
from llava_lite.hydra_conf import config_dir
from llava_lite.modeling import LlavaModel
from llava_lite.modeling.tokenizer import build_tiny_tokenizer
from llava_lite.training.freeze import apply_lora, apply_stage

GB = 1e9
# bitsandbytes' 4-bit layout: one scale (absmax) per block of 64 weights; double quantisation
# stores the scales in 8 bits with one float32 scale per 256 of them (QLoRA paper, section 3).
FOUR_BIT_BLOCK = 64
DOUBLE_QUANT_BLOCK = 256

# The architectures of the hub checkpoints the shipped presets name (their config.json values,
# the fields that set shapes), and the length of each tokenizer, so planning needs no download.
_LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
_LLAMA_13B = {
    **_LLAMA_7B,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
}
_CLIP_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
KNOWN_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "lmsys/vicuna-7b-v1.5": ("llama", _LLAMA_7B),
    "lmsys/vicuna-7b-v1.3": ("llama", {**_LLAMA_7B, "max_position_embeddings": 2048}),
    "meta-llama/Llama-2-7b-chat-hf": ("llama", _LLAMA_7B),
    "lmsys/vicuna-13b-v1.5": ("llama", _LLAMA_13B),
    "lmsys/vicuna-13b-v1.3": ("llama", {**_LLAMA_13B, "max_position_embeddings": 2048}),
    "mistralai/Mistral-7B-Instruct-v0.2": ("mistral", {**_LLAMA_7B, "intermediate_size": 14336,
                                                       "num_key_value_heads": 8, "max_position_embeddings": 32768}),
    "Qwen/Qwen2-7B-Instruct": ("qwen2", {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                                         "max_position_embeddings": 32768}),
    "openai/clip-vit-large-patch14-336": ("clip_vision_model", {**_CLIP_L14, "image_size": 336}),
    "openai/clip-vit-large-patch14": ("clip_vision_model", _CLIP_L14),
    "google/siglip-so400m-patch14-384": ("siglip_vision_model", {"hidden_size": 1152, "intermediate_size": 4304,
                                                                 "num_hidden_layers": 27, "num_attention_heads": 16,
                                                                 "image_size": 384, "patch_size": 14}),
}  # fmt: skip
TOKENIZER_LENGTHS = {
    "lmsys/vicuna-7b-v1.5": 32000,
    "lmsys/vicuna-7b-v1.3": 32000,
    "meta-llama/Llama-2-7b-chat-hf": 32000,
    "lmsys/vicuna-13b-v1.5": 32000,
    "lmsys/vicuna-13b-v1.3": 32000,
    "mistralai/Mistral-7B-Instruct-v0.2": 32000,
    "Qwen/Qwen2-7B-Instruct": 151646,
}


@dataclass(frozen=True)
class DatasetFacts:
    """What an epoch of a published data set holds: samples and mean text tokens a sample."""

    samples: int
    text_tokens: int
    source: str
    longest_text: int | None = None  # a bound on a sample's text tokens (memory); None: model_max_length


# Keyed by the training file's name. Sample counts are the files' lengths; mean text tokens are
# estimates (LLaVA tokenizer): LCS-558K's BLIP captions in the `plain` template, and mix665k's
# conversations averaged with its text-only share, as docs/training.md derives them. LCS-558K's
# captions are one short sentence each, so its padded batches are planned at 128 text tokens.
DATASETS: dict[str, DatasetFacts] = {
    "blip_laion_cc_sbu_558k.json": DatasetFacts(558_128, 40, "LCS-558K", longest_text=128),
    "llava_v1_5_mix665k.json": DatasetFacts(665_298, 224, "LLaVA-1.5 mix665k"),
}


@dataclass
class PlanSettings:
    """The ``plan`` node of ``conf/plan.yaml``: what the config cannot say about the run."""

    devices: int | None = None  # null: trainer.devices x trainer.num_nodes (must be numbers)
    samples: int | None = None  # training samples an epoch; null: DATASETS by file name
    text_tokens: int | None = None  # mean text tokens a sample (FLOPs); null: DATASETS
    seq_len: int | None = None  # padded micro-batch length (memory); null: model.model_max_length
    trained_tokens: int | None = None  # trained positions a sample (logits); null: every text slot
    peak_tflops: float = 312.0  # per device (A100 bf16 dense)
    mfu: float = 0.4
    device_memory_gb: float = 80.0


# A divisor that takes a state off the device (DeepSpeed's CPU offload).
OFFLOADED = 10**30


@dataclass(frozen=True)
class Sharding:
    """How a strategy splits model states: each state is divided by its divisor (1: not split)."""

    name: str
    weights: int = 1
    gradients: int = 1
    optimizer: int = 1
    deepspeed: bool = False
    buffers_elements: float = 0.0  # communication buckets, in elements of the compute dtype
    gathered_layers: int = 0  # full layers a sharded-weight strategy holds gathered at once
    precision: str | None = None  # the strategy's own compute precision (FSDP2's param_dtype)


@dataclass
class Memory:
    """Per-device bytes of one training step's peak, by part.

    The peak is taken at the later of two moments: the loss (every saved activation and the
    logits alive, no gradient yet) and the backward pass through the decoder (gradients growing;
    with checkpointing, one layer recomputed). So ``total`` counts ``max(logits, layer +
    gradients)`` over what both share, not their sum.
    """

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    activations_no_ckpt: float  # every decoder layer's saved tensors
    layer_inputs: float  # with checkpointing: each layer's input only
    layer: float  # one decoder layer's saved tensors (recomputed with checkpointing)
    checkpointing: bool
    logits: float
    vision: float  # image features, the projector's and a trained tower's activations
    inputs: float  # embeddings, spliced inputs, final norm

    @property
    def activations_ckpt(self) -> float:
        return self.layer_inputs + self.layer

    @property
    def activations(self) -> float:
        """The decoder's activations as configured (module.gradient_checkpointing)."""
        return self.activations_ckpt if self.checkpointing else self.activations_no_ckpt

    @property
    def states(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.buffers

    @property
    def total(self) -> float:
        shared = self.weights + self.optimizer + self.buffers + self.inputs + self.vision
        if self.checkpointing:
            return shared + self.layer_inputs + max(self.logits, self.layer + self.gradients)
        return shared + self.activations_no_ckpt + max(self.logits, self.gradients)


@dataclass
class Plan:
    """Everything the planner derives for one run; :func:`format_plan` prints it."""

    experiment: str
    model: str
    stage: str
    strategy: str
    precision: str
    devices: int
    micro_batch: int
    global_batch: int
    seq_len: int
    image_tokens: int
    text_tokens: int
    params: dict[str, tuple[int, int]]  # component -> (trainable, frozen)
    memory: Memory
    checkpointing: bool
    flops_per_sample: float
    samples: int
    settings: PlanSettings
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * (self.image_tokens + self.text_tokens)

    @property
    def step_flops(self) -> float:
        return self.global_batch * self.flops_per_sample

    @property
    def epoch_hours(self) -> float:
        rate = self.devices * self.settings.peak_tflops * 1e12 * self.settings.mfu
        return self.samples * self.flops_per_sample / rate / 3600

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.settings.device_memory_gb * GB


# ---- the model, on the meta device -----------------------------------------------------------
def _hf_config(name: str | None, arch: dict[str, Any], what: str) -> PretrainedConfig | None:
    """The transformers config of a part: from its own ``arch`` when it names no checkpoint, else
    from :data:`KNOWN_ARCHITECTURES` (with the config's ``arch`` entries applied on top)."""
    if name is None:
        return None
    if name not in KNOWN_ARCHITECTURES:
        raise ValueError(
            f"{what}={name!r} has no architecture the planner knows offline; known: "
            f"{sorted(KNOWN_ARCHITECTURES)} (or describe it with {what.rsplit('.', 1)[0]}.arch and name_or_path=null)"
        )
    known_type, known = KNOWN_ARCHITECTURES[name]
    return AutoConfig.for_model(known_type, **{**known, **arch})


def meta_model(config: LlavaConfig) -> LlavaModel:
    """``config``'s model with every parameter on the meta device: shapes and dtypes, no memory.

    Hub checkpoints are replaced by their known architectures, the tokenizer by the offline tiny
    one (the LLM's embeddings are sized to the hub tokenizer plus the special tokens the model
    adds), the image processor by a default one; nothing is read from disk or network.
    """
    config = LlavaConfig.from_dict(config.to_dict())
    config.llm.quantization = None  # shapes only; the planner counts 4-bit bytes itself
    if config.llm.attn_implementation not in (None, "eager", "sdpa"):
        # flash / flex attention keep no score matrix, as sdpa: the same memory, no kernel needed here
        config.llm.attn_implementation = "sdpa"
    llm_hf = _hf_config(config.llm.name_or_path, config.llm.arch, "model.llm.name_or_path")
    if llm_hf is not None:
        name = str(config.llm.name_or_path)
        added = 1 + (config.video_token is not None)  # image (and video) token
        vocab = max(int(llm_hf.vocab_size), TOKENIZER_LENGTHS.get(name, int(llm_hf.vocab_size)) + added)
        multiple = config.llm.pad_vocab_to_multiple_of
        llm_hf.vocab_size = -(-vocab // multiple) * multiple if vocab > llm_hf.vocab_size else vocab
    vision_hf = _hf_config(config.vision.name_or_path, config.vision.arch, "model.vision.name_or_path")
    if config.vision.backend != "hf":
        raise ValueError("the planner knows transformers vision towers only (model.vision.backend=hf)")
    tokenizer = build_tiny_tokenizer(**config.llm.tiny_tokenizer)
    processor = CLIPImageProcessor() if config.vision.name_or_path else None
    with torch.device("meta"):
        return LlavaModel(
            config,
            tokenizer=tokenizer,
            image_processor=processor,
            vision_hf_config=vision_hf,
            llm_hf_config=llm_hf,
        )


# ---- strategy ----------------------------------------------------------------------------------
def _defaults(cls: type) -> dict[str, Any]:
    """A strategy class's keyword defaults (its buckets), read from its signature."""
    return {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def sharding(trainer_cfg: DictConfig, devices: int) -> Sharding:
    """Recognise the strategy by its Lightning class (``trainer.strategy._target_``)."""
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )

    strategy = trainer_cfg.get("strategy")
    if strategy is None or isinstance(strategy, str):
        name = strategy or "auto"
        if name in ("auto", "ddp", "ddp_spawn", "single_device"):
            return Sharding("single device" if devices == 1 else "DDP")
        raise ValueError(f"trainer.strategy={name!r}: the planner reads strategy configs with a _target_")
    cls = get_class(str(strategy["_target_"]))
    settings = {**_defaults(cls), **OmegaConf.to_container(strategy, resolve=True)}  # type: ignore[dict-item]
    n = devices
    if issubclass(cls, DeepSpeedStrategy):
        stage = int(settings["stage"])
        buckets = float(settings["reduce_bucket_size"]) + float(settings["allgather_bucket_size"])
        offload_opt, offload_par = bool(settings["offload_optimizer"]), bool(settings["offload_parameters"])
        return Sharding(
            f"DeepSpeed ZeRO-{stage}" + (" (optimiser offloaded)" if offload_opt else ""),
            weights=OFFLOADED if offload_par else (n if stage >= 3 else 1),
            gradients=n if stage >= 2 else 1,
            optimizer=OFFLOADED if offload_opt else (n if stage >= 1 else 1),
            deepspeed=True,
            buffers_elements=buckets if n > 1 else 0.0,
            gathered_layers=2 if stage >= 3 else 0,
        )
    if issubclass(cls, FSDPStrategy):
        kind = str(settings.get("sharding_strategy", "FULL_SHARD")).upper()
        if kind.endswith("NO_SHARD"):
            return Sharding("FSDP (no shard)")
        full = not kind.endswith("SHARD_GRAD_OP")
        return Sharding(
            f"FSDP {kind.rsplit('.', 1)[-1]}",
            weights=n if full else 1,
            gradients=n,
            optimizer=n,
            gathered_layers=2 if full else 0,
        )
    if issubclass(cls, ModelParallelStrategy):
        bf16 = str(settings.get("param_dtype")) in ("bfloat16", "bf16")  # gathered in bf16 for compute
        return Sharding(
            "FSDP2 (fully_shard)" + (", bf16 compute" if bf16 else ""),
            weights=n,
            gradients=n,
            optimizer=n,
            gathered_layers=2,
            precision="bf16-mixed" if bf16 else None,
        )
    if issubclass(cls, DDPStrategy | SingleDeviceStrategy):
        return Sharding("single device" if devices == 1 else "DDP")
    raise ValueError(f"trainer.strategy {cls.__name__}: the planner knows DDP, FSDP, FSDP2 and DeepSpeed")


# ---- the estimate ------------------------------------------------------------------------------
def _devices(trainer_cfg: DictConfig, settings: PlanSettings) -> int:
    if settings.devices is not None:
        return int(settings.devices)
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    if not isinstance(devices, int) or isinstance(devices, bool):
        raise ValueError(f"trainer.devices={devices!r}: the planner needs a number, e.g. trainer.devices=8")
    return devices * int(nodes)


def _dataset(cfg: DictConfig, settings: PlanSettings) -> tuple[int, int, int | None, list[str]]:
    """Samples an epoch, mean text tokens a sample and a bound on a sample's text (None: unknown):
    the settings, else the known data set."""
    files = cfg.data.get("train_files")
    first = files[0] if OmegaConf.is_list(files) and len(files) else files
    facts = DATASETS.get(Path(str(first)).name) if first else None
    notes = []
    samples, text = settings.samples, settings.text_tokens
    if facts is not None and (samples is None or text is None):
        notes.append(f"data: {facts.source} ({facts.samples:,} samples, ~{facts.text_tokens} text tokens)")
    if samples is None:
        if facts is None:
            raise ValueError(
                f"data.train_files={files!r} is no data set the planner knows: set plan.samples (and plan.text_tokens)"
            )
        samples = facts.samples
    if text is None:
        if facts is None:
            raise ValueError(
                f"data.train_files={files!r} is no data set the planner knows: set plan.text_tokens"
            )
        text = facts.text_tokens
    return int(samples), int(text), facts.longest_text if facts else None, notes


def _params(model: LlavaModel) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) parameters per component, shared ones counted once."""
    seen: set[int] = set()
    out = {}
    for name, part in model.components().items():
        t = f = 0
        for p in part.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                t, f = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
        out[name] = (t, f)
    return out


def _largest_layer(model: LlavaModel) -> int:
    layers = model.llm.get_decoder().layers
    return max(sum(p.numel() for p in layer.parameters()) for layer in layers)


def plan_run(cfg: DictConfig) -> Plan:
    """The plan of the run ``cfg`` (a composed ``conf/plan.yaml`` or ``conf/train.yaml``) describes."""
    raw = cfg.get("plan") or {}
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanSettings), raw))
    assert isinstance(settings, PlanSettings)
    module_cfg = cfg.module
    model_cfg = LlavaConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
    stage = str(module_cfg.stage)
    devices = _devices(cfg.trainer, settings)
    shard = sharding(cfg.trainer, devices)
    quantization = model_cfg.llm.quantization
    if quantization is not None and (shard.weights > 1 or shard.gathered_layers):
        raise ValueError(
            f"model.llm.quantization (QLoRA) is planned on one device or with DDP; {shard.name} shards the "
            "weights, which bitsandbytes' 4-bit layers here are not set up for"
        )
    model = meta_model(model_cfg)
    apply_stage(model.components(), stage, train_vision=not model_cfg.vision.freeze)
    lora = module_cfg.get("lora")
    if lora:
        with torch.device("meta"):  # the adapters too: peft would otherwise initialise them on the CPU
            model.llm = apply_lora(model.llm, OmegaConf.to_container(lora, resolve=True))  # type: ignore[arg-type]
    params = _params(model)
    precision = shard.precision or str(cfg.trainer.get("precision", "32-true"))
    samples, text_tokens, longest_text, notes = _dataset(cfg, settings)

    grid = model.image_grid
    image_tokens = grid.max_tokens
    seq_len = int(settings.seq_len or model_cfg.model_max_length)
    if settings.seq_len is None and longest_text is not None:
        seq_len = min(seq_len, image_tokens + longest_text)
    trained = int(settings.trained_tokens if settings.trained_tokens is not None else seq_len - image_tokens)
    micro = int(cfg.data.batch_size)
    global_batch = int(cfg.get("global_batch_size") or micro * devices)
    ckpt = bool(module_cfg.get("gradient_checkpointing", False))
    memory = _memory(model, params, shard, precision, bool(module_cfg.get("fp32_trainable", True)),
                     micro, seq_len, trained, ckpt, quantization, bool(lora))  # fmt: skip
    flops = _flops_per_sample(model, params, text_tokens, ckpt)
    if grid.anyres:
        notes.append("AnyRes: images planned at their largest grid")
    if quantization is not None:
        notes.append(
            f"QLoRA: {_four_bit_params(model):,} LLM weights at {four_bit_bytes(quantization):.4f} bytes "
            f"({quantization.quant_type}, double quantisation {'on' if quantization.double_quant else 'off'})"
            + ("; its norms in float32 (prepare_model_for_kbit_training)" if lora else "")
        )
    if cfg.data.get("packing") and cfg.data.packing.get("enabled"):
        notes.append("packing: planned as padded rows of seq_len tokens, an upper bound")
    if not str(module_cfg.get("_target_", "")).endswith(".LlavaLitModule"):
        notes.append(
            f"{module_cfg.get('_target_')}: planned as supervised training; a preference pair doubles "
            "the activations and a reference copy adds its weights"
        )
    return Plan(
        experiment=_choice(cfg, "experiment"),
        model=_choice(cfg, "model"),
        stage=stage,
        strategy=shard.name,
        precision=precision,
        devices=devices,
        micro_batch=micro,
        global_batch=global_batch,
        seq_len=seq_len,
        image_tokens=image_tokens,
        text_tokens=text_tokens,
        params=params,
        memory=memory,
        checkpointing=ckpt,
        flops_per_sample=flops,
        samples=samples,
        settings=settings,
        notes=notes,
    )


def _choice(cfg: DictConfig, group: str) -> str:
    """The option Hydra picked for ``group``: from the config's ``hydra`` node (compose with
    ``return_hydra_config=True``) or the running Hydra app; ``?`` when neither says."""
    choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
    if choice is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get(group)
    return str(choice or "?")


def four_bit_bytes(quantization: QuantizationConfig) -> float:
    """Bytes of one 4-bit weight with its share of the quantisation constants: 0.5 + 1/64 + 1/4096
    (8-bit scales and their float32 scales) with double quantisation, 0.5 + 4/64 without."""
    if quantization.double_quant:
        return 0.5 + 1 / FOUR_BIT_BLOCK + 4 / (FOUR_BIT_BLOCK * DOUBLE_QUANT_BLOCK)
    return 0.5 + 4 / FOUR_BIT_BLOCK


def _four_bit_params(model: LlavaModel) -> int:
    """Weights bitsandbytes stores in 4 bits: the decoder's frozen linear layers (not LoRA's, nor the
    LM head, embeddings or norms, which transformers leaves in full precision)."""
    return sum(
        m.weight.numel()
        for m in model.llm.get_decoder().modules()
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
    )


def _embedding_params(model: LlavaModel) -> int:
    """The LLM's input embedding and LM head (once if tied)."""
    weights = {
        id(m.weight): m.weight.numel()
        for m in (model.llm.get_input_embeddings(), model.llm.get_output_embeddings())
    }
    return sum(weights.values())


def _lora_dropout_inputs(model: LlavaModel) -> float:
    """Elements per token and decoder layer that LoRA's dropout copies (its own input to ``lora_A``)."""
    from peft.tuners.lora import LoraLayer

    total = 0
    for m in model.llm.get_decoder().modules():
        if isinstance(m, LoraLayer):
            dropouts = [d for d in m.lora_dropout.values() if isinstance(d, torch.nn.Dropout) and d.p > 0]
            total += len(dropouts) * int(m.in_features)
    return total / int(model.llm.config.num_hidden_layers)


def _memory(
    model: LlavaModel,
    params: dict[str, tuple[int, int]],
    shard: Sharding,
    precision: str,
    fp32_trainable: bool,
    micro: int,
    seq_len: int,
    trained: int,
    ckpt: bool,
    quantization: QuantizationConfig | None = None,
    lora: bool = False,
) -> Memory:
    """Per-device bytes at the step's peak (see the module docstring and docs/training.md)."""
    half = precision.startswith(("bf16", "16"))
    true_half = precision in ("bf16-true", "16-true")
    # bytes of a trained / frozen weight, its gradient and its AdamW state
    if shard.deepspeed:  # DeepSpeed runs the module in bf16 and keeps fp32 masters in the optimiser
        w_t = w_f = 2 if half else 4
        g_t, o_t = w_t, 12 if half else 8
    else:
        frozen_dtype = next(p for p in model.parameters()).dtype
        w_f = 2 if true_half else frozen_dtype.itemsize
        w_t = 2 if true_half else (4 if fp32_trainable else frozen_dtype.itemsize)
        g_t, o_t = w_t, 2 * w_t
    n_t = sum(t for t, _ in params.values())
    n_f = sum(f for _, f in params.values())
    cmp = 2 if half else w_f  # activation bytes under autocast / a half module
    frozen = n_f * w_f
    if quantization is not None:  # QLoRA's 4-bit linear weights; LoRA's preparation upcasts the norms
        n_q = _four_bit_params(model)
        n_norms = params["llm"][1] - n_q - _embedding_params(model)
        norm_bytes = 4 if lora and not (shard.deepspeed or true_half) else w_f
        frozen = n_q * four_bit_bytes(quantization) + n_norms * norm_bytes + (n_f - n_q - n_norms) * w_f
    weights = (n_t * w_t + frozen) / shard.weights + shard.gathered_layers * _largest_layer(model) * cmp
    gradients = n_t * g_t / shard.gradients
    optimizer = n_t * o_t / shard.optimizer
    buffers = shard.buffers_elements * cmp

    cfg = model.llm.config
    d, layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    f = int(getattr(cfg, "intermediate_size", None) or 4 * d)
    llm_trains = params["llm"][0] > 0
    # the residual stream keeps the embeddings' dtype (float32 if they train, else the frozen
    # weights' dtype, as under LoRA); matmul outputs are in the compute dtype
    embedding_trains = model.llm.get_input_embeddings().weight.requires_grad
    res = cmp if shard.deepspeed or true_half else (w_t if embedding_trains else w_f)
    cast = d * cmp * 2 if res != cmp else 0  # autocast's copies of the two norm outputs
    if llm_trains:  # one decoder layer, per token: norms' inputs and outputs, q/k/v, attention, MLP
        per_token = 4 * d * res + cast + (3 * d + 2 * kv) * cmp + 4 * f * cmp
        if lora:  # each adapter's dropout keeps its output (and autocast's copy of it) and a mask
            per_token += _lora_dropout_inputs(model) * (res + (cmp if res != cmp else 0) + 1)
    else:  # frozen weights: linear layers keep no inputs (only activation gradients pass)
        per_token = 2 * d * res + (2 * d + 2 * kv) * cmp + 3 * f * cmp
    if getattr(cfg, "_attn_implementation", "sdpa") == "eager":
        per_token += 2 * heads * seq_len * cmp  # scores and probabilities
    tokens = micro * seq_len
    vocab = int(model.llm.get_output_embeddings().weight.shape[0])
    # logits [N, V] (compute dtype, then an fp32 copy), cross-entropy's fp32 log-softmax, and the
    # gradients of both on the way back
    logits = micro * trained * vocab * (4 * 4 if cmp == 4 else 2 * cmp + 3 * 4)
    inputs = tokens * d * res * 3
    tower = model.vision_tower
    vcfg = tower.model.config
    dv, vf = int(vcfg.hidden_size), int(vcfg.intermediate_size)
    views = micro * _views_per_sample(model)
    view_tokens = tower.num_patches + tower.num_prefix_tokens
    features = views * tower.num_image_tokens * (dv + d) * cmp
    if params["vision_tower"][0]:
        vision = tower.num_layers * views * view_tokens * (8 * dv + 3 * vf) * cmp + features
    else:
        vision = features
    if params["projector"][0]:
        vision += views * tower.num_image_tokens * (dv + 2 * d) * cmp
    return Memory(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        buffers=buffers,
        activations_no_ckpt=layers * tokens * per_token,
        layer_inputs=layers * tokens * d * res,
        layer=tokens * per_token,
        checkpointing=ckpt,
        logits=logits,
        vision=vision,
        inputs=inputs,
    )


def _views_per_sample(model: LlavaModel) -> int:
    """Tower inputs of one image: one view, or under AnyRes the base view and the largest grid."""
    grid = model.image_grid
    if not grid.anyres:
        return 1
    return 1 + max((h // grid.tile) * (w // grid.tile) for h, w in grid.pinpoints or ())


def _flops_per_sample(
    model: LlavaModel, params: dict[str, tuple[int, int]], text_tokens: int, ckpt: bool
) -> float:
    """Training FLOPs of one mean sample: 2 forward + 2 activation-gradient + 2 weight-gradient per
    parameter and token; the input embedding is a lookup (no FLOPs), the head runs on text. A
    frozen LLM weight under trained ones (LoRA's base) or above a trained projector costs 4."""
    grid = model.image_grid
    tower = model.vision_tower
    views = _views_per_sample(model)
    view_tokens = tower.num_patches + tower.num_prefix_tokens
    tower_t, tower_f = params["vision_tower"]
    proj_t, proj_f = params["projector"]
    llm_t = params["llm"][0]
    embedding = model.llm.get_input_embeddings().weight
    body_t = body_f = 0  # the decoder's weights without the embedding, trained / frozen
    for p in model.llm.get_decoder().parameters():
        if p is not embedding:
            body_t, body_f = (body_t + p.numel(), body_f) if p.requires_grad else (body_t, body_f + p.numel())
    body = body_t + body_f
    head_weight = model.llm.get_output_embeddings().weight
    head = head_weight.numel()
    tokens = grid.max_tokens + text_tokens
    below_trains = tower_t + proj_t > 0  # activation gradients must pass through the LLM
    frozen_mult = 4 if llm_t or below_trains else 2
    head_mult = 6 if head_weight.requires_grad else frozen_mult
    flops = (6 * body_t + frozen_mult * body_f) * tokens + head_mult * head * text_tokens
    if ckpt:
        flops += 2 * body * tokens
    flops += (6 if proj_t else 2) * (proj_t + proj_f) * grid.max_tokens
    flops += (6 if tower_t else 2) * (tower_t + tower_f) * views * view_tokens
    return float(flops)


# ---- printing ----------------------------------------------------------------------------------
def _gb(x: float) -> str:
    return f"{x / GB:7.2f} GB"


def format_plan(plan: Plan) -> str:
    """The plan as the command prints it."""
    m, s = plan.memory, plan.settings
    lines = [
        f"plan: experiment={plan.experiment} model={plan.model} stage={plan.stage}",
        f"  {plan.devices} device(s), {plan.strategy}, precision {plan.precision}, "
        f"micro-batch {plan.micro_batch} x {plan.seq_len} tokens, global batch {plan.global_batch}",
        "parameters (trainable / frozen):",
    ]
    lines += [f"  {name:<13}{t:>15,}{f:>15,}" for name, (t, f) in plan.params.items()]
    other = m.activations_no_ckpt if plan.checkpointing else m.activations_ckpt
    lines += [
        "memory per device:",
        f"  weights            {_gb(m.weights)}",
        f"  gradients          {_gb(m.gradients)}",
        f"  optimiser state    {_gb(m.optimizer)}",
        f"  comm. buffers      {_gb(m.buffers)}",
        f"  activations (LLM)  {_gb(m.activations)}  "
        f"({'with' if plan.checkpointing else 'without'} checkpointing; {_gb(other).strip()} "
        f"{'without' if plan.checkpointing else 'with'})",
        f"  logits             {_gb(m.logits)}",
        f"  vision + inputs    {_gb(m.vision + m.inputs)}",
        f"  total              {_gb(m.total)}  "
        f"({'fits' if plan.fits else 'does NOT fit'} {s.device_memory_gb:g} GB)",
        "compute:",
        f"  tokens per sample  {plan.image_tokens + plan.text_tokens:,} "
        f"({plan.image_tokens} image + {plan.text_tokens} text)",
        f"  tokens per step    {plan.tokens_per_step:,}",
        f"  FLOPs per step     {plan.step_flops:.3g}",
        f"  epoch              {plan.samples:,} samples: {plan.epoch_hours:.1f} h at "
        f"{s.mfu:.0%} of {s.peak_tflops:g} TFLOP/s x {plan.devices}",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def compose_plan(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``conf/plan.yaml`` composed with command-line style overrides, Hydra's choices kept (so
    the plan names its experiment and model), for notebooks and tests."""
    with initialize_config_dir(config_dir=str(config_dir("plan")), version_base="1.3"):
        return compose(config_name="plan", overrides=list(overrides), return_hydra_config=True)


# The runs of README's "Will it fit" table: LLaVA-1.5's two stages on one node of 8 GPUs.
FIT_RUNS: tuple[tuple[str, ...], ...] = tuple(
    (
        f"experiment={experiment}",
        f"model={model}",
        "trainer.devices=8",
        f"module.gradient_checkpointing={ckpt}",
    )
    for model in ("llava_v1_5_7b", "llava_v1_5_13b")
    for experiment, ckpt in (
        ("llava_v1_5_pretrain", "true"),
        ("llava_v1_5_finetune", "true"),
        ("llava_v1_5_finetune", "false"),
    )
)


def fit_table(runs: tuple[tuple[str, ...], ...] = FIT_RUNS) -> str:
    """README's "Will it fit" table: one row per run, as the planner sees it."""
    rows = [
        "| model | stage | strategy | checkpointing | per GPU | weights + grads + optimiser | "
        "activations + logits | total | fits | epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for overrides in runs:
        plan = plan_run(compose_plan(overrides))
        m = plan.memory
        fits = [f"{gb} GB" for gb in (40, 80) if m.total <= gb * GB]
        rows.append(
            f"| {plan.model} | {plan.stage} | {plan.strategy} | {'on' if plan.checkpointing else 'off'} "
            f"| {plan.micro_batch} x {plan.seq_len} tokens | {m.states / GB:.1f} GB "
            f"| {(m.total - m.states) / GB:.1f} GB | {m.total / GB:.1f} GB | {', '.join(fits) or 'no'} "
            f"| {plan.epoch_hours:.1f} h |"
        )
    return "\n".join(rows)
