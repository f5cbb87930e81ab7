"""Offline tiny tokenizers and how the model prepares a tokenizer (image token, pad token)."""

from __future__ import annotations

import pytest

from llava_lite.config import LLMConfig
from llava_lite.modeling import build_tiny_tokenizer, load_tokenizer, prepare_tokenizer


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_tiny_tokenizer_is_deterministic_and_round_trips(kind: str) -> None:
    a = build_tiny_tokenizer(kind, vocab_size=300)
    b = build_tiny_tokenizer(kind, vocab_size=300)
    text = "A red circle is left of two blue squares."
    assert a(text).input_ids == b(text).input_ids
    assert a.decode(a(text).input_ids, skip_special_tokens=True) == text


def test_unknown_kind_fails() -> None:
    with pytest.raises(ValueError, match="valid"):
        build_tiny_tokenizer("wordpiece")


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_image_token_is_one_special_token_and_idempotent(kind: str) -> None:
    tok = build_tiny_tokenizer(kind)
    size = len(tok)
    image_id = prepare_tokenizer(tok, "<image>")
    assert len(tok) == size + 1 and image_id == size
    ids = tok("look: <image>\nwhat is it?", add_special_tokens=False).input_ids
    assert ids.count(image_id) == 1
    # Existing chat specials survive (added with replace=False).
    assert "<|im_start|>" in tok.all_special_tokens and "<image>" in tok.all_special_tokens
    assert prepare_tokenizer(tok, "<image>") == image_id and len(tok) == size + 1


def test_missing_pad_token_falls_back_to_eos() -> None:
    tok = build_tiny_tokenizer("bpe")
    tok.pad_token = None
    prepare_tokenizer(tok, "<image>")
    assert tok.pad_token == tok.eos_token


def test_load_tokenizer_builds_tiny_without_a_path_and_reads_a_folder(tmp_path) -> None:
    tok = load_tokenizer(LLMConfig(tiny_tokenizer={"kind": "bpe", "vocab_size": 300}))
    prepare_tokenizer(tok, "<image>")
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(LLMConfig(name_or_path=str(tmp_path)))
    assert again("a <image> b").input_ids == tok("a <image> b").input_ids


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_non_ascii_text_survives_decoding_without_special_tokens(kind: str) -> None:
    """Chat and answers decode with ``skip_special_tokens=True``; byte pieces are not special."""
    tok = build_tiny_tokenizer(kind)
    text = "café ünïcode 東京"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert not any(t.startswith("<0x") for t in tok.all_special_tokens)


def test_sentencepiece_keeps_punctuation_apart_from_words() -> None:
    """As SentencePiece's split by Unicode script does in Llama's vocabulary: a word is the same
    piece before a question mark as anywhere else, however often the corpus repeats "circle?"."""
    tok = build_tiny_tokenizer("sentencepiece", extra_texts=["What color is the circle?"] * 500)
    pieces = tok.convert_ids_to_tokens(tok("What color is the circle?", add_special_tokens=False).input_ids)
    assert pieces[-2:] == ["▁circle", "?"]
    assert (
        tok("the circle", add_special_tokens=False).input_ids
        == tok("the circle?", add_special_tokens=False).input_ids[:-1]
    )
    text = "Hello, world. It is 12:30 (ok?)"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
