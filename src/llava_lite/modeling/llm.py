"""The language model and its tokenizer: any transformers causal LM.

The tokenizer gains the image token as a special token (so ``"<image>"`` in text never
splits into pieces) and a pad token if it has none; the LLM's embedding matrix is sized to
the tokenizer. Weights load from safetensors only unless the user allows pickle files, and
remote code runs only when ``trust_remote_code`` is on.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from llava_lite.config import LLMConfig
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
    if hf_config is not None:
        llm = AutoModelForCausalLM.from_config(hf_config, **kwargs)
    elif cfg.name_or_path is None:
        arch = dict(cfg.arch)
        arch.setdefault("vocab_size", _round_up(len(tokenizer), cfg.pad_vocab_to_multiple_of))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            arch.setdefault(name, getattr(tokenizer, name))
        config = AutoConfig.for_model(cfg.model_type, **arch)
        llm = AutoModelForCausalLM.from_config(config, **kwargs)
    else:
        llm = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, use_safetensors=not cfg.allow_pickle or None, **kwargs
        )
    resize_for_tokenizer(llm, tokenizer, cfg.pad_vocab_to_multiple_of)
    if llm.config.pad_token_id is None:
        llm.config.pad_token_id = tokenizer.pad_token_id
    return llm


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
