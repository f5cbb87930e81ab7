"""Small tokenizers trained offline, for tests, presets and the demo.

Real checkpoints bring their own tokenizer; with no model hub, the tiny presets train a
BPE tokenizer from a built-in corpus in milliseconds. Two kinds, so code is exercised on
both families real LLMs use: ``sentencepiece`` (Llama-style: metaspace, byte fallback,
``<s>``/``</s>``) and ``bpe`` (GPT-2/Qwen-style byte-level BPE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TOKENIZER_KINDS = ("sentencepiece", "bpe")
# Chat-format tokens some templates need (chatml); harmless for the others.
CHAT_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]


def default_corpus() -> list[str]:
    """The built-in training text: chat phrasing, LLaVA instructions, COCO-style captions, answer
    formats, common colour and shape words. No phrases of the synthetic world: the demo trains
    its tokenizers on the world's own text."""
    text = resources.files("llava_lite.modeling").joinpath("tiny_corpus.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def _bytes_as_pieces(tok: Tokenizer, byte_tokens: set[str]) -> Tokenizer:
    """Keep the byte-fallback pieces in the vocabulary but not among the special tokens.

    The trainer only reserves ids for what it is given as special tokens; left special,
    ``decode(..., skip_special_tokens=True)`` would drop every non-ASCII character.
    """
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    return Tokenizer.from_str(json.dumps(data))


def build_tiny_tokenizer(
    kind: str = "sentencepiece",
    vocab_size: int = 512,
    extra_texts: Iterable[str] = (),
    repeats: int = 4,
) -> PreTrainedTokenizerFast:
    """Train a small tokenizer offline and wrap it as a transformers fast tokenizer.

    Deterministic for the same arguments, so a model saved with it reloads with the same ids.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r}; valid: {list(TOKENIZER_KINDS)}")
    corpus = default_corpus() + list(extra_texts)
    if kind == "sentencepiece":
        specials = ["<unk>", "<s>", "</s>", "<pad>", *CHAT_SPECIAL_TOKENS]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        # Punctuation is its own piece, as SentencePiece's split by Unicode script makes it in
        # Llama's vocabulary: without it a small vocabulary learns "▁circle?" apart from "▁circle".
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                pre_tokenizers.Punctuation(behavior="isolated"),
            ]
        )
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size + len(byte_tokens),
            special_tokens=specials + byte_tokens,
            show_progress=False,
        )
        tok.train_from_iterator(corpus * repeats, trainer)
        tok = _bytes_as_pieces(tok, set(byte_tokens))
        bos_id = tok.token_to_id("<s>")
        # Llama prepends <s>; it never appends </s> on its own.
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            additional_special_tokens=CHAT_SPECIAL_TOKENS,
        )
    specials = ["<|endoftext|>", "<|pad|>", *CHAT_SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 256,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * repeats, trainer)
    # Byte-level BPE (GPT-2, Qwen) adds no BOS; end of text doubles as EOS.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|endoftext|>",
        unk_token=None,
        pad_token="<|pad|>",
        additional_special_tokens=CHAT_SPECIAL_TOKENS,
    )
