"""The language model and its tokenizer: any transformers causal LM.

The tokenizer gains the image token as a special token (so ``"<image>"`` in text never
splits into pieces) and a pad token if it has none; the LLM's embedding matrix is sized to
the tokenizer. Weights load from safetensors only unless the user allows pickle files, and
remote code runs only when ``trust_remote_code`` is on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from llava_lite.config import LLMConfig, QuantizationConfig
from llava_lite.modeling.dtypes import resolve_dtype
from llava_lite.modeling.tokenizer import build_tiny_tokenizer

log = logging.getLogger(__name__)


def load_tokenizer(cfg: LLMConfig) -> Any:
    """The tokenizer named by the config, or the offline tiny one when no checkpoint is named."""
    source = cfg.tokenizer_name_or_path or cfg.name_or_path
    if source is None:
        return build_tiny_tokenizer(**cfg.tiny_tokenizer)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)


def prepare_tokenizer(tokenizer: Any, image_token: str) -> int:
    """Add ``image_token`` as a special token and ensure a pad token; idempotent. Returns its id."""
    if image_token not in tokenizer.all_special_tokens:
        # Special, so "<image>" in text is one id and is never split or normalised away.
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False
        )
    if tokenizer.pad_token is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        if fallback is None:
            raise ValueError("tokenizer has no pad, unk or eos token to pad with; set one before building")
        log.info("tokenizer has no pad token; using %r", fallback)
        tokenizer.pad_token = fallback
    return int(tokenizer.convert_tokens_to_ids(image_token))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_llm(cfg: LLMConfig, tokenizer: Any, hf_config: PretrainedConfig | None = None) -> PreTrainedModel:
    """Build (``name_or_path`` unset) or load the causal LM, with embeddings covering the tokenizer.

    ``hf_config`` rebuilds an exact architecture without touching ``name_or_path`` (used when
    loading a saved LlavaModel, whose weights come from its own folder).
    """
    dtype = resolve_dtype(cfg.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantized = cfg.quantization is not None and hf_config is None
    if hf_config is not None:
        if cfg.quantization is not None:
            raise ValueError(
                "model.llm.quantization applies when the LLM loads from model.llm.name_or_path or is built "
                "from model.llm.arch; a saved model folder loads in full precision (set it to null)"
            )
        llm = AutoModelForCausalLM.from_config(hf_config, **kwargs)
    elif cfg.name_or_path is None:
        arch = dict(cfg.arch)
        arch.setdefault("vocab_size", _round_up(len(tokenizer), cfg.pad_vocab_to_multiple_of))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            arch.setdefault(name, getattr(tokenizer, name))
        config = AutoConfig.for_model(cfg.model_type, **arch)
        llm = AutoModelForCausalLM.from_config(config, **kwargs)
        if quantized:
            # The route a real checkpoint takes: written out, then read back through
            # from_pretrained, which quantises as it loads.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a local round trip of a small model: no bars
            try:
                with tempfile.TemporaryDirectory(prefix="llava_lite_llm_") as folder:
                    llm.save_pretrained(folder)
                    llm = _load_quantized(folder, cfg, kwargs)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
    elif quantized:
        llm = _load_quantized(cfg.name_or_path, cfg, kwargs)
    else:
        llm = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, use_safetensors=not cfg.allow_pickle or None, **kwargs
        )
    resize_for_tokenizer(llm, tokenizer, cfg.pad_vocab_to_multiple_of)
    if llm.config.pad_token_id is None:
        llm.config.pad_token_id = tokenizer.pad_token_id
    return llm


def bnb_config(quantization: QuantizationConfig, dtype: torch.dtype) -> BitsAndBytesConfig:
    """transformers' bitsandbytes settings for ``quantization`` (compute in ``dtype`` unless it names one)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "model.llm.quantization needs bitsandbytes: pip install 'llava_lite[qlora]'"
        ) from err
    compute = resolve_dtype(quantization.compute_dtype) if quantization.compute_dtype else dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def _load_quantized(source: str, cfg: LLMConfig, kwargs: dict[str, Any]) -> PreTrainedModel:
    """``from_pretrained`` with 4-bit linear layers, quantised on this process's GPU when there is one."""
    assert cfg.quantization is not None
    # Each rank quantises on its own GPU (LOCAL_RANK, as launchers set it), not all on GPU 0;
    # Lightning moves the module again if the trainer runs elsewhere.
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    llm = AutoModelForCausalLM.from_pretrained(
        source,
        quantization_config=bnb_config(cfg.quantization, kwargs["dtype"]),
        device_map={"": device},
        use_safetensors=not cfg.allow_pickle or None,
        **kwargs,
    )
    for layer in llm.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            # bitsandbytes (0.50) repacks a layer's 4-bit weight for a bf16 CPU kernel at its first
            # eval forward on an AVX512-BF16 CPU and keeps it so; later training steps then backprop
            # through that kernel, which has no autograd formula: silently wrong gradients. CPU runs
            # keep the one dequantise-and-matmul path, in the compute dtype. GPUs never take it.
            layer.support_avx512bf16_for_cpu = False
    return llm


def is_quantized(llm: Any) -> bool:
    """Whether the LLM (or the model a peft wrapper holds) was loaded with 4-bit weights."""
    return bool(getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_quantized", False))


def resize_for_tokenizer(llm: PreTrainedModel, tokenizer: Any, multiple_of: int = 1) -> None:
    """Grow the embeddings to cover every tokenizer id; never shrink (some vocabularies are padded).

    New rows start at the mean of the old ones (transformers' ``mean_resizing``), so the
    image and pad tokens begin as a typical embedding rather than noise of a different scale.
    """
    current = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= current:
        return
    target = _round_up(len(tokenizer), multiple_of)
    log.info("resizing LLM embeddings %d -> %d for %d tokenizer entries", current, target, len(tokenizer))
    llm.resize_token_embeddings(target, mean_resizing=True)


# Config fields that post-process logits after the LM head; a model with any of them set
# gets its logits from its own forward, so losses stay exactly those of the model.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def plain_lm_head(llm: PreTrainedModel) -> bool:
    """Whether logits are exactly ``get_output_embeddings()(last_hidden_state)`` for this LLM."""
    cfg = llm.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return llm.get_output_embeddings() is not None and not any(
        getattr(text_cfg, name, None) not in (None, 1.0) for name in _LOGIT_POSTPROCESSING
    )


def last_hidden_state(llm: PreTrainedModel, inputs_embeds: Any, **kwargs: Any) -> Any:
    """The decoder's final hidden states ``[B, T, D]`` (final norm applied), without the LM head.

    ``use_cache=False``: a cache created in training would also switch off transformers'
    packed-sequence masking.
    """
    decoder = llm.get_decoder()
    return decoder(inputs_embeds=inputs_embeds, use_cache=False, **kwargs).last_hidden_state


# Attention implementations that take transformers' packed-sequence path (position ids that
# restart at 0, no attention mask, no cache); check_packed_attention still verifies each model.
PACKING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_packed_attention(
    llm: PreTrainedModel, setting: str = "data.packing.enabled", rows_per_batch: int = 2
) -> None:
    """Raise unless packed samples stay apart in ``llm``: proved on the model, not assumed.

    A probe batch of ``rows_per_batch`` rows (2: packed batches hold several rows; 1: one row,
    as flash-attention's varlen path needs) packs a 5-token sample before a 7-token one in each
    row. The 7-token sample's hidden states must equal its states alone (positions restart) and
    must not change with the sample before it (no attention across samples).
    """
    impl = getattr(llm.config, "_attn_implementation", None)
    model_type = getattr(llm.config, "model_type", "?")
    if impl not in PACKING_ATTENTION:
        raise ValueError(
            f"{setting}=true needs an attention implementation that keeps packed samples apart; "
            f"model.llm.attn_implementation={impl!r} (model_type={model_type}); valid: {list(PACKING_ATTENTION)}"
        )
    embed = llm.get_input_embeddings()
    device = embed.weight.device
    gen = torch.Generator().manual_seed(0)
    first, other, probe = (torch.randint(0, embed.weight.shape[0], (n,), generator=gen) for n in (5, 5, 7))
    positions = torch.cat([torch.arange(5), torch.arange(7)]).to(device)  # [12]

    def states(rows: list[torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        ids = torch.stack(rows).to(device)  # [R, T]
        return last_hidden_state(llm, embed(ids), position_ids=pos.expand(len(rows), -1)).float()  # [R, T, D]

    was_training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            alone = states([probe], torch.arange(7).to(device))[0]  # [7, D]
            if rows_per_batch > 1:  # both neighbours in one batch of rows
                both = states([torch.cat([first, probe]), torch.cat([other, probe])], positions)
                packed, swapped = both[0, 5:], both[1, 5:]  # [7, D] each
            else:
                packed = states([torch.cat([first, probe])], positions)[0, 5:]  # [7, D]
                swapped = states([torch.cat([other, probe])], positions)[0, 5:]  # [7, D]
    finally:
        llm.train(was_training)
    tol = (1e-4 if embed.weight.dtype == torch.float32 else 3e-2) * float(alone.abs().max())
    leak, drift = float((packed - swapped).abs().max()), float((packed - alone).abs().max())
    if leak > tol or drift > tol:
        hint = (
            "; flash-attention keeps samples apart only in a batch of one row: set data.packing.one_row=true"
            if rows_per_batch > 1
            else ""
        )
        raise ValueError(
            f"{setting}=true but this LLM (model_type={model_type}, attn_implementation={impl}) does not keep "
            f"packed samples apart in batches of {rows_per_batch} row(s): a sample's states change by {leak:.3g} "
            f"with its neighbour and by {drift:.3g} against the sample alone (tolerance {tol:.3g}); turn "
            f"packing off or use another LLM{hint}"
        )
