"""Causal LMs of several families at tiny size, through the same LlavaModel code path."""

from __future__ import annotations

import pytest
import torch

from llava_lite.config import LlavaConfig, LLMConfig
from llava_lite.modeling import LlavaModel, build_llm, build_tiny_tokenizer, prepare_tokenizer

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
FAMILIES = {
    "llama": {**SMALL, "intermediate_size": 64, "num_key_value_heads": 2},
    "mistral": {**SMALL, "intermediate_size": 64, "num_key_value_heads": 2, "head_dim": 8},
    "qwen2": {**SMALL, "intermediate_size": 64, "num_key_value_heads": 2},
    "phi": {**SMALL, "intermediate_size": 64},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 8,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_generates(family: str) -> None:
    torch.manual_seed(0)
    kind = "bpe" if family in ("gpt2", "qwen2", "phi") else "sentencepiece"
    cfg = LlavaConfig.from_dict(
        {
            "vision": {"arch": VISION},
            "projector": {"type": "mlp2x_gelu"},
            "llm": {
                "model_type": family,
                "arch": FAMILIES[family],
                "tiny_tokenizer": {"kind": kind, "vocab_size": 256},
            },
        }
    )
    model = LlavaModel(cfg).eval()
    assert model.llm.config.model_type == family
    assert model.llm.get_input_embeddings().weight.shape[0] == len(model.tokenizer)
    text = model.tokenizer("a red circle", return_tensors="pt").input_ids[0]
    ids = torch.cat([torch.full((model.num_image_tokens,), model.image_token_id), text])[None]
    pixels = torch.randn(1, 3, 16, 16)
    out = model(ids, pixel_values=pixels, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projector[0].weight.grad is not None
    model.zero_grad()
    cached = model.generate(ids, pixels, max_new_tokens=4, eos_token_id=-1)
    uncached = model.generate(ids, pixels, max_new_tokens=4, eos_token_id=-1, use_cache=False)
    assert torch.equal(cached, uncached)


def test_vocab_padded_to_multiple_and_new_rows_start_at_the_mean(tmp_path) -> None:
    tok = build_tiny_tokenizer(vocab_size=256)
    base = build_llm(LLMConfig(arch=FAMILIES["llama"]), tok)
    base.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    old = base.get_input_embeddings().weight.detach().clone()
    cfg = LLMConfig(name_or_path=str(tmp_path), pad_vocab_to_multiple_of=64)
    tok2 = build_tiny_tokenizer(vocab_size=256)
    image_id = prepare_tokenizer(tok2, "<image>")
    llm = build_llm(cfg, tok2)
    weight = llm.get_input_embeddings().weight.detach()
    assert weight.shape[0] % 64 == 0 and weight.shape[0] >= len(tok2)
    torch.testing.assert_close(weight[: old.shape[0]], old)
    # mean_resizing samples new rows around the old mean; their mean is close to it, their scale similar.
    new_rows = weight[old.shape[0] :]
    assert image_id >= old.shape[0]
    assert (new_rows.mean(0) - old.mean(0)).abs().max() < 3 * old.std()
    assert new_rows.std() < 3 * old.std()


def test_tiny_vocab_comes_from_the_tokenizer() -> None:
    tok = build_tiny_tokenizer(vocab_size=256)
    prepare_tokenizer(tok, "<image>")
    llm = build_llm(LLMConfig(arch=FAMILIES["llama"], pad_vocab_to_multiple_of=8), tok)
    assert llm.config.vocab_size == -(-len(tok) // 8) * 8
    assert llm.config.pad_token_id == tok.pad_token_id
