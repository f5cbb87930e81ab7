"""Templates and label masking: trained positions decode to exactly the assistant answers, turn by turn."""

from __future__ import annotations

import random
from functools import cache

import pytest

from llava_lite.config import IGNORE_INDEX
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.schema import normalize_conversation
from llava_lite.data.tokenize import encode_conversation
from llava_lite.modeling.tokenizer import build_tiny_tokenizer, default_corpus
from llava_lite.templates import TEMPLATES, ChatTemplate, Segment, get_template, prompt_for_generation

CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A Llama-3-like template with BOS written in the text and a header per turn.
HEADER_JINJA = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
)


@cache
def tokenizer(kind: str, chat_template: str = CHATML_JINJA):
    tok = build_tiny_tokenizer(kind)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.chat_template = chat_template
    return tok


def random_conversation(rng: random.Random, turns: int, image: bool) -> list[dict]:
    words = " ".join(default_corpus()).split()
    tricky = [
        "café ✓ naïve",
        "42.",
        "(left)",
        "  spaced  out ",
        "line one\nline two",
        "A",
        "-- dash",
        "2 + 2 = 4",
    ]

    def text(n: int) -> str:
        if rng.random() < 0.3:
            return rng.choice(tricky)
        return " ".join(rng.choice(words) for _ in range(n))

    conv = []
    for t in range(turns):
        q = text(rng.randint(1, 12))
        if t == 0 and image:
            q = f"{q}\n<image>" if rng.random() < 0.5 else f"<image>\n{q}"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": text(rng.randint(1, 20))}]
    return conv


CASES = [
    (kind, name, jinja)
    for kind in ("sentencepiece", "bpe")
    for name in TEMPLATES
    for jinja in ((CHATML_JINJA, HEADER_JINJA) if name == "tokenizer" else (CHATML_JINJA,))
]


@pytest.mark.parametrize(("kind", "name", "jinja"), CASES)
def test_trained_positions_decode_to_each_answer(kind: str, name: str, jinja: str) -> None:
    tok = tokenizer(kind, jinja)
    template = get_template(name)
    stops = set(template.stop_strings(tok))
    stop_ids = {tok.convert_tokens_to_ids(s) for s in stops}
    rng = random.Random(f"{kind}-{name}")
    for _ in range(25):
        image = rng.random() < 0.6
        turns = 1 if name == "plain" else rng.randint(1, 4)
        messages = normalize_conversation(random_conversation(rng, turns, image), has_image=image)
        enc = encode_conversation(messages, tok, name)
        answers = [content for role, content in messages if role == "assistant"]
        assert len(enc.turn_spans) == len(answers)
        trained = {i for a, b in enc.turn_spans for i in range(a, b)}
        for i, (tok_id, lab) in enumerate(zip(enc.input_ids, enc.labels, strict=True)):
            assert lab == (tok_id if i in trained else IGNORE_INDEX)
        for (a, b), answer in zip(enc.turn_spans, answers, strict=True):
            span = enc.input_ids[a:b]
            assert span[-1] in stop_ids  # the end-of-turn token is trained
            text = tok.decode(span[:-1], skip_special_tokens=False)
            assert text.strip() == answer.strip(), (text, answer)
        # Everything before the first answer (system, user turn, image) is untrained.
        assert all(lab == IGNORE_INDEX for lab in enc.labels[: enc.turn_spans[0][0]])


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_generation_prompt_is_the_training_prefix(kind: str, name: str) -> None:
    tok = tokenizer(kind)
    rng = random.Random(name)
    turns = 1 if name == "plain" else 3
    messages = normalize_conversation(random_conversation(rng, turns, True), has_image=True)
    enc = encode_conversation(messages, tok, name)
    for k, (start, _) in enumerate(enc.turn_spans):
        prompt = prompt_for_generation(messages[: 2 * k + 1], tok, name)
        assert prompt == enc.input_ids[:start]


def test_image_marker_moves_to_front_of_first_turn() -> None:
    conv = [{"from": "human", "value": "What is here?\n<image>"}, {"from": "gpt", "value": "A dog."}]
    assert normalize_conversation(conv, has_image=True)[0] == ("user", "<image>\nWhat is here?")
    unmarked = [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A dog."}]
    assert normalize_conversation(unmarked, has_image=True)[0] == ("user", "<image>\nDescribe.")


@pytest.mark.parametrize(
    ("conv", "has_image", "reason"),
    [
        ([], False, "no_conversations"),
        ("text", False, "no_conversations"),
        ([{"from": "human", "value": "hi"}], False, "no_assistant_turn"),
        # LLaVA drops a leading "gpt" turn; what is left here has no answer.
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], False, "no_assistant_turn"),
        (
            [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "q"}],
            False,
            "not_alternating",
        ),
        (
            [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            False,
            "not_alternating",
        ),
        (
            [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}],
            False,
            "not_alternating",
        ),
        (
            [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}],
            False,
            "image_token_mismatch",
        ),
        (
            [{"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}],
            True,
            "image_token_mismatch",
        ),
    ],
)
def test_bad_conversations_are_rejected_with_a_reason(conv, has_image: bool, reason: str) -> None:
    with pytest.raises(BadSampleError) as err:
        normalize_conversation(conv, has_image=has_image)
    assert err.value.reason == reason


class _MergingTemplate(ChatTemplate):
    """A boundary inside a word: 'hel' | 'lo' tokenises as one piece, so labels cannot be exact."""

    name = "merging"

    def segments(self, messages, tokenizer, add_generation_prompt, image_token):
        return [Segment("the circle is smal", False), Segment("l and red", True)]


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_boundary_inside_a_token_is_a_label_mismatch_not_a_silent_sample(kind: str) -> None:
    messages = [("user", "q"), ("assistant", "a")]
    with pytest.raises(BadSampleError) as err:
        encode_conversation(messages, tokenizer(kind), _MergingTemplate())
    assert err.value.reason == "label_mismatch"


def test_unknown_template_lists_valid_keys() -> None:
    with pytest.raises(KeyError, match="vicuna_v1"):
        get_template("vicuna")
    assert set(TEMPLATES) == {"plain", "vicuna_v1", "llava_v1", "llama_2", "chatml", "tokenizer"}
