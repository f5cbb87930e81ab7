"""BOS under ``template="tokenizer"``: the ids transformers' processor gives for the same template.

llava-hf chat templates (ours exported) carry no BOS: the processor adds the tokenizer's, in
``processor.apply_chat_template(tokenize=True)`` (special tokens unless the rendering starts
with ``bos_token``) and in the model cards' ``processor(text=prompt, images=...)``. So the
exported processor, our built-in template and ``template="tokenizer"`` on the exported
template all give the same ids, BOS once.

The one exception: our chatml (no BOS) on a tokenizer that adds one (Llama, Mistral). There
transformers' processor adds BOS and its tokenizer's ``apply_chat_template`` does not;
``template="tokenizer"`` follows the processor, so it is our chatml's ids after one BOS.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from helpers import TINY_TEXT_ARCH, TINY_VISION_ARCH
from llava_lite.config import IGNORE_INDEX, LlavaConfig
from llava_lite.data.processor import LlavaProcessor
from llava_lite.data.tokenize import encode_conversation
from llava_lite.modeling import LlavaModel, build_tiny_tokenizer, load_pretrained
from llava_lite.modeling.formats.llava_hf import export_to_hf_llava
from llava_lite.templates import TEMPLATES, Message, adds_bos, get_template, prompt_for_generation

# Every built-in template with a Jinja form (plain has none; "tokenizer" is the tokenizer's own).
JINJA_TEMPLATES = sorted(n for n, t in TEMPLATES.items() if t.jinja(build_tiny_tokenizer("bpe")) is not None)
HISTORY = [("What shape is it?", "A red circle."), ("And the other one?", "Two blue squares.")]
QUESTION = "Which is on the left?"


def _conversation(image: Any = None) -> tuple[list[Message], list[dict]]:
    """Our messages and transformers' (image part first in the first user turn), ending with a question."""
    messages: list[Message] = []
    chat: list[dict] = []
    for i, (question, answer) in enumerate([*HISTORY, (QUESTION, None)]):
        messages.append(("user", f"<image>\n{question}" if i == 0 else question))
        image_part = {"type": "image", "image": image} if image is not None else {"type": "image"}
        chat.append(
            {
                "role": "user",
                "content": [image_part, {"type": "text", "text": question}] if i == 0 else question,
            }
        )
        if answer:
            messages.append(("assistant", answer))
            chat.append({"role": "assistant", "content": answer})
    return messages, chat


def _extra_bos(tokenizer: Any, name: str) -> list[int]:
    """The BOS transformers' processor puts before our ``name``'s ids: only chatml on a BOS-adding tokenizer."""
    return [tokenizer.bos_token_id] if name == "chatml" and adds_bos(tokenizer) else []


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("name", JINJA_TEMPLATES)
@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_template_tokenizer_on_our_jinja_gives_our_ids(kind: str, name: str, system: str | None) -> None:
    tok = build_tiny_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.chat_template = get_template(name).jinja(tok)
    messages, _ = _conversation()
    messages = [("system", system), *messages] if system else messages
    extra = _extra_bos(tok, name)
    ours = prompt_for_generation(messages, tok, name)
    assert prompt_for_generation(messages, tok, "tokenizer") == extra + ours
    if adds_bos(tok):
        assert (extra + ours)[:2].count(tok.bos_token_id) == 1  # BOS, once

    full, via = (
        encode_conversation(messages[:-1], tok, name),
        encode_conversation(messages[:-1], tok, "tokenizer"),
    )
    assert via.input_ids == extra + full.input_ids
    assert via.labels == [IGNORE_INDEX] * len(extra) + full.labels  # BOS never trained


def _model(family: str, template: str, vision: str) -> LlavaModel:
    torch.manual_seed(0)
    llm = {
        "model_type": family,
        "arch": TINY_TEXT_ARCH,
        "tiny_tokenizer": {"kind": "bpe" if family == "qwen2" else "sentencepiece"},
    }
    data = {"vision": {"arch": TINY_VISION_ARCH, "model_type": vision}, "llm": llm, "conv_template": template}
    return LlavaModel(LlavaConfig.from_dict(data)).eval()


EXPORTS = [
    (family, name, "clip_vision_model")
    for family in ("llama", "mistral", "qwen2")
    for name in JINJA_TEMPLATES
]
EXPORTS.append(("llama", "vicuna_v1", "siglip_vision_model"))


@pytest.mark.parametrize(("family", "name", "vision"), EXPORTS, ids=["-".join(c) for c in EXPORTS])
def test_exported_processor_and_template_tokenizer_give_our_ids(
    tmp_path, family: str, name: str, vision: str
) -> None:
    model = _model(family, name, vision)
    export_to_hf_llava(model, tmp_path)
    image = Image.new("RGB", (32, 32), "red")
    messages, chat = _conversation(image)
    pixels = torch.zeros(3, 32, 32)
    # Ids with each <image> expanded to the model's image slots, as transformers' LlavaProcessor
    # expands the text's <image> (image_seq_length) before tokenising.
    ours = LlavaProcessor.from_model(model).prompt(QUESTION, pixels, history=HISTORY)["input_ids"].tolist()
    assert ours.count(model.image_token_id) == model.num_image_tokens
    extra = _extra_bos(model.tokenizer, name)

    # (a) transformers' processor on the exported chat template: both of its flows.
    processor = AutoProcessor.from_pretrained(tmp_path)
    enc = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    theirs = list(enc["input_ids"][0])
    assert theirs == extra + ours
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert processor(text=prompt, images=image)["input_ids"][0] == theirs
    # transformers' tokenizer never adds BOS: its ids are the processor's, unexpanded, less the BOS.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    unexpanded = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    assert bos + unexpanded == extra + prompt_for_generation(messages, model.tokenizer, name)

    # (b) template="tokenizer" on the loaded export: the processor's ids, generation and training.
    back = load_pretrained(tmp_path)
    via = LlavaProcessor.from_model(back, template="tokenizer").prompt(QUESTION, pixels, history=HISTORY)
    assert via["input_ids"].tolist() == theirs
    full, via_full = (
        encode_conversation(messages[:-1], t, n)
        for t, n in ((model.tokenizer, name), (back.tokenizer, "tokenizer"))
    )
    assert via_full.input_ids == extra + full.input_ids
    assert via_full.labels == [IGNORE_INDEX] * len(extra) + full.labels


def test_template_writing_bos_gets_no_second_one(tmp_path) -> None:
    """A chat template that writes ``{{ bos_token }}`` itself (Llama 2 / 3 style): the processor
    adds none, and neither does ``template="tokenizer"``. (Not our built-in ids: this tokenizer
    puts no ``▁`` before text after a special token, so "<s>A" is not BOS + "▁A".)"""
    model = _model("llama", "vicuna_v1", "clip_vision_model")
    export_to_hf_llava(model, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    jinja = "{{ bos_token }}" + processor.chat_template
    _, chat = _conversation(Image.new("RGB", (32, 32), "red"))
    enc = processor.apply_chat_template(
        chat, chat_template=jinja, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    back = load_pretrained(tmp_path)
    back.tokenizer.chat_template = jinja
    via = LlavaProcessor.from_model(back, template="tokenizer").prompt(
        QUESTION, torch.zeros(3, 32, 32), history=HISTORY
    )
    assert list(enc["input_ids"][0]) == via["input_ids"].tolist()
    assert via["input_ids"].tolist()[:2].count(back.tokenizer.bos_token_id) == 1
