"""Real LLaVA data formats: hand-made records shaped like the released files, and prompt
strings compared character by character with the original ``Conversation.get_prompt`` rules.

The reference renderers below restate the original separator styles (TWO, LLAMA_2, PLAIN)
and its ``preprocess_multimodal`` / leading-turn rules from their documented behaviour.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava_lite.data import IGNORE_INDEX, LlavaDataset, LlavaProcessor, LlavaStreamingDataset
from llava_lite.data.schema import normalize_conversation
from llava_lite.evaluation.llava_bench import build_requests, read_contexts
from llava_lite.inference.answers import read_answers, read_questions
from llava_lite.modeling.tokenizer import build_tiny_tokenizer
from llava_lite.templates import get_template

N_IMG = 4
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

# ---- records shaped like the released files -------------------------------------------
INSTRUCT_150K = [
    {
        "id": "000000442786",
        "image": "000000442786.jpg",
        "conversations": [
            {"from": "human", "value": "What do you see happening in this image?\n<image>"},
            {"from": "gpt", "value": "The image shows a red bus parked on a street."},
            {"from": "human", "value": "Is it daytime?"},
            {"from": "gpt", "value": "Yes, the photo was taken during the day."},
        ],
    },
    {
        "id": "000000215677",
        "image": "000000215677.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the cat?"},
            {"from": "gpt", "value": "The cat is black with white paws."},
        ],
    },
]
LCS_558K = [
    {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
        ],
    }
]
CC3M_595K = [
    {
        "id": "GCC_train_002582585",
        "image": "GCC_train_002582585.jpg",
        "conversations": [
            {"from": "human", "value": "Provide a brief description of the given image.\n<image>"},
            {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."},
        ],
    }
]
MIX_665K = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
        ],
    },
    {
        "id": "2354786",
        "image": "gqa/images/2354786.jpg",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nIs the sky dark?\nAnswer the question using a single word or phrase.",
            },
            {"from": "gpt", "value": "Yes"},
        ],
    },
    {
        "id": 71789111,  # numeric id
        "image": "ocr_vqa/images/71789111.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWho wrote this book?"},
            {"from": "gpt", "value": "Sandra Boynton"},
        ],
    },
    {
        "id": "0054c91397f2fe05",
        "image": "textvqa/train_images/0054c91397f2fe05.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is the brand of phone?\nReference OCR token: Nokia"},
            {"from": "gpt", "value": "nokia"},
        ],
    },
    {
        "id": "VG_100K_2356347",
        "image": "vg/VG_100K/2356347.jpg",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nPlease provide a short description for this region: [0.41, 0.5, 0.6, 0.7]",
            },
            {"from": "gpt", "value": "A man wearing a hat."},
        ],
    },
    {  # whitespace around answers is kept, as the original renders it
        "id": "000000555111",
        "image": "coco/train2017/000000555111.jpg",
        "conversations": [
            {"from": "human", "value": "  What is unusual here? <image>  "},
            {"from": "gpt", "value": "The dog is driving.\n"},
            {"from": "human", "value": " Why?"},
            {"from": "gpt", "value": " It holds the wheel. "},
        ],
    },
    {  # ShareGPT, text only, with a "model" key
        "id": "i6IyJda_0",
        "model": "",
        "conversations": [
            {"from": "human", "value": "Write a haiku about rain."},
            {"from": "gpt", "value": "Soft rain on the roof"},
        ],
    },
    {  # ShareGPT record that opens with the assistant: LLaVA drops that turn
        "id": "wBfgFQT_12",
        "model": "",
        "conversations": [
            {"from": "gpt", "value": "(continued) as I said before"},
            {"from": "human", "value": "And the second point?"},
            {"from": "gpt", "value": "The second point is about cost."},
        ],
    },
]


# ---- the original rules, restated ------------------------------------------------------
def llava_preprocess(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA's preprocess: drop a leading non-human turn; move ``<image>`` to the front + newline."""
    if conversations[0]["from"] != "human":
        conversations = conversations[1:]
    out = []
    for turn in conversations:
        value = turn["value"]  # only a turn with the marker is stripped
        if "<image>" in value:
            value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
        out.append(("USER" if turn["from"] == "human" else "ASSISTANT", value))
    return out


def render_two(system: str, messages: list[tuple[str, str]], generation: bool = False) -> str:
    """SeparatorStyle.TWO with sep " " and sep2 "</s>" (vicuna_v1, llava_v1)."""
    text = system + " "
    for i, (role, value) in enumerate(messages):
        text += f"{role}: {value}" + (" " if i % 2 == 0 else "</s>")
    return text + ("ASSISTANT:" if generation else "")


def render_llama_2(system: str, messages: list[tuple[str, str]]) -> str:
    """SeparatorStyle.LLAMA_2 with sep "<s>", sep2 "</s>"; the leading "<s>" is the tokenizer's BOS."""
    text = ""
    for i, (_, value) in enumerate(messages):
        if i == 0:
            value = f"<<SYS>>\n{system}\n<</SYS>>\n\n{value}"
        text += f"<s>[INST] {value} [/INST]" if i % 2 == 0 else f" {value} </s>"
    return text.removeprefix("<s>")


def render_plain(messages: list[tuple[str, str]]) -> str:
    """preprocess_plain: the first turn becomes just "<image>", then caption + sep "\\n"."""
    return "<image>" + messages[1][1] + "\n"


@cache
def tokenizer():
    tok = build_tiny_tokenizer("sentencepiece")
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def processor(template: str) -> LlavaProcessor:
    ip = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaProcessor(tokenizer(), ip, num_image_tokens=N_IMG, template=template)


def ours(template: str, record: dict, generation: bool = False) -> str:
    messages = normalize_conversation(record["conversations"], has_image="image" in record)
    if generation:
        messages = messages[:-1]
    segments = get_template(template).segments(messages, tokenizer(), generation, "<image>")
    return "".join(s.text for s in segments)


ALL_CHATS = INSTRUCT_150K + MIX_665K


@pytest.mark.parametrize("record", ALL_CHATS, ids=[str(r["id"]) for r in ALL_CHATS])
@pytest.mark.parametrize(
    ("template", "system"), [("vicuna_v1", VICUNA_SYSTEM), ("llava_v1", LLAVA_V1_SYSTEM)]
)
def test_separator_templates_match_the_original_prompt(template: str, system: str, record: dict) -> None:
    expected = llava_preprocess(record["conversations"])
    assert ours(template, record) == render_two(system, expected)
    assert ours(template, record, generation=True) == render_two(system, expected[:-1], generation=True)


@pytest.mark.parametrize("record", ALL_CHATS, ids=[str(r["id"]) for r in ALL_CHATS])
def test_llama_2_template_matches_the_original_prompt(record: dict) -> None:
    expected = llava_preprocess(record["conversations"])
    assert ours("llama_2", record) == render_llama_2(LLAVA_LLAMA2_SYSTEM, expected)
    assert ours("llama_2", record, generation=True) == render_llama_2(LLAVA_LLAMA2_SYSTEM, expected[:-1])


# Qwen2's ChatML chat template (default system prompt when none is given).
QWEN2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("record", ALL_CHATS, ids=[str(r["id"]) for r in ALL_CHATS])
def test_chatml_template_matches_qwen2_chat_template(record: dict) -> None:
    tok = build_tiny_tokenizer("bpe")
    roles = {"USER": "user", "ASSISTANT": "assistant"}
    chat = [{"role": roles[r], "content": c} for r, c in llava_preprocess(record["conversations"])]
    render = tok.apply_chat_template
    assert ours("chatml", record) == render(chat, tokenize=False, chat_template=QWEN2_CHATML)
    assert ours("chatml", record, generation=True) == render(
        chat[:-1], tokenize=False, add_generation_prompt=True, chat_template=QWEN2_CHATML
    )


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v1", "llama_2", "chatml", "tokenizer"])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_exported_chat_templates_render_our_text(template: str, system: str | None) -> None:
    """``ChatTemplate.jinja`` (the exported processor's chat_template) renders what we train on."""
    tok = build_tiny_tokenizer("sentencepiece")
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.chat_template = QWEN2_CHATML
    tpl = get_template(template)
    turns = [("What shape is it?", "A circle."), ("And the colour?", "Red."), ("Anything else?", None)]
    messages = [("system", system)] if system else []
    chat = [{"role": "system", "content": system}] if system else []
    for i, (question, answer) in enumerate(turns):
        messages.append(("user", f"<image>\n{question}" if i == 0 else question))
        parts = [{"type": "image"}, {"type": "text", "text": question}] if i == 0 else question
        chat.append({"role": "user", "content": parts})
        if answer:
            messages.append(("assistant", answer))
            chat.append({"role": "assistant", "content": answer})

    def render(msgs: list, generation: bool) -> str:
        return tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation, chat_template=tpl.jinja(tok)
        )

    if template == "tokenizer":  # the tokenizer's own template takes string contents
        chat[1 if system else 0]["content"] = messages[1 if system else 0][1]
    ours_prompt = "".join(s.text for s in tpl.segments(messages, tok, True, "<image>"))
    ours_full = "".join(s.text for s in tpl.segments(messages[:-1], tok, False, "<image>"))
    assert render(chat, True) == ours_prompt
    assert render(chat[:-1], False) == ours_full


@pytest.mark.parametrize("record", LCS_558K + CC3M_595K, ids=lambda r: r["id"])
def test_plain_template_matches_the_original_layout(record: dict) -> None:
    assert ours("plain", record) == render_plain(llava_preprocess(record["conversations"]))
    out = processor("plain").process_record(record, Image.new("RGB", (20, 12), "blue"))
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    tok = tokenizer()
    # BOS, the image block, then caption + "\n": only the caption and its newline are trained.
    assert ids[0] == tok.bos_token_id and ids[1 : 1 + N_IMG] == [tok.convert_tokens_to_ids("<image>")] * N_IMG
    trained = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert labels[: 1 + N_IMG] == [IGNORE_INDEX] * (1 + N_IMG)
    assert trained == ids[1 + N_IMG :]
    assert tok.decode(trained) == record["conversations"][1]["value"] + "\n"
    # Generation stops where training put the separator.
    assert processor("plain").stop_token_ids[0] == ids[-1]


def test_vicuna_v1_token_layout_and_labels() -> None:
    record = INSTRUCT_150K[0]
    out = processor("vicuna_v1").process_record(record, Image.new("RGB", (30, 20), "red"))
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    tok = tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids[0] == tok.bos_token_id
    start = ids.index(image_id)
    assert ids[start : start + N_IMG] == [image_id] * N_IMG
    assert tok.decode(ids[1:start]) == VICUNA_SYSTEM + " USER: "
    # Trained runs are exactly " answer</s>" per assistant turn, in order.
    runs, current = [], []
    for t, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    answers = [t["value"] for t in record["conversations"][1::2]]
    assert [tok.decode(r) for r in runs] == [f"{a}</s>" for a in answers]
    assert all(r[-1] == tok.eos_token_id for r in runs)


def _write_image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 60)).save(path, format="JPEG")


@pytest.mark.parametrize(
    ("name", "records"),
    [
        ("llava_instruct_150k.json", INSTRUCT_150K),
        ("blip_laion_cc_sbu_558k.json", LCS_558K),
        ("chat.json", CC3M_595K),
        ("llava_v1_5_mix665k.json", MIX_665K),
    ],
)
def test_released_files_load_without_a_bad_sample(tmp_path, name: str, records: list[dict]) -> None:
    (tmp_path / name).write_text(json.dumps(records))
    for r in records:
        if "image" in r:
            _write_image(tmp_path / "images" / r["image"], (40, 24))
    template = "plain" if name in ("blip_laion_cc_sbu_558k.json", "chat.json") else "vicuna_v1"
    ds = LlavaDataset(str(tmp_path / name), processor(template), image_root=str(tmp_path / "images"))
    assert len(ds) == len(records) and ds.counter.counts() == {}
    tok = tokenizer()
    for i, r in enumerate(records):
        sample = ds[i]
        assert "skipped" not in sample, sample
        assert sample["id"] == str(r["id"])
        assert (sample["pixel_values"] is None) == ("image" not in r)
        trained = [
            t
            for t, lab in zip(sample["input_ids"].tolist(), sample["labels"].tolist(), strict=True)
            if lab != IGNORE_INDEX
        ]
        last_answer = r["conversations"][-1]["value"]
        assert tok.decode(trained).endswith(last_answer + ("\n" if template == "plain" else "</s>"))
    # Streaming reads the same file to the same samples.
    stream = LlavaStreamingDataset(
        str(tmp_path / name),
        processor(template),
        str(tmp_path / "images"),
        shuffle=False,
        rank=0,
        world_size=1,
    )
    streamed = list(stream)
    assert all(s["skipped"] == [] for s in streamed)
    assert [s["id"] for s in streamed] == [str(r["id"]) for r in records]
    assert all(torch.equal(s["labels"], ds[i]["labels"]) for i, s in enumerate(streamed))
    # The leading "gpt" turn of a ShareGPT record is never trained on.
    if name == "llava_v1_5_mix665k.json":
        sample = ds[len(records) - 1]
        text = tok.decode(sample["input_ids"].tolist())
        assert "(continued)" not in text and "USER: And the second point?" in text


# ---- evaluation files ----------------------------------------------------------------------
def test_scienceqa_llava_question_file_reads_as_model_vqa_science_does(tmp_path) -> None:
    """``llava_test_CQM-A.json`` from ``convert_sqa_to_llava``: conversation records, images at ``{pid}/image.png``."""
    records = [
        {
            "id": "4",
            "image": "4/image.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: N/A\nQuestion: Which of these states is farthest north?\n"
                    "Options: (A) West Virginia (B) Louisiana (C) Arizona (D) Oklahoma\n<image>",
                },
                {"from": "gpt", "value": "The answer is A."},
            ],
        },
        {
            "id": "5",
            "conversations": [
                {
                    "from": "human",
                    "value": "Context: N/A\nQuestion: Which tense does the sentence use?\nOptions: (A) past (B) future",
                },
                {"from": "gpt", "value": "The answer is B."},
            ],
        },
    ]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(records, indent=2))
    questions = read_questions(path)
    assert [q.question_id for q in questions] == ["4", "5"]
    assert questions[0].image == "4/image.png" and questions[1].image is None
    assert questions[0].text.startswith("Context: N/A\nQuestion: Which of these")
    assert "<image>" not in questions[0].text and questions[0].text.endswith("(D) Oklahoma")
    # The same file trains (QCM-LEA style) with images under images/test.
    _write_image(tmp_path / "images" / "test" / "4" / "image.png", (30, 18))
    ds = LlavaDataset(str(path), processor("vicuna_v1"), image_root=str(tmp_path / "images" / "test"))
    assert all("skipped" not in ds[i] for i in range(len(ds)))


def test_llava_bench_in_the_wild_files_join(tmp_path) -> None:
    rows = {
        "questions.jsonl": [
            {
                "image": "001.jpg",
                "text": "What is the name of this famous sight in the photo?",
                "category": "conv",
                "question_id": 0,
            },
            {
                "image": "001.jpg",
                "text": "Describe this photo in detail.",
                "category": "detail",
                "question_id": 1,
            },
            {
                "image": "002.jpg",
                "text": "Why might this be unusual?",
                "category": "complex",
                "question_id": 2,
            },
        ],
        "context.jsonl": [
            {"id": "001", "image": "001.jpg", "caption": "The Diamond Head crater in Oahu."},
            {"id": "002", "image": "002.jpg", "caption": "A man ironing clothes on the back of a taxi."},
        ],
        "answers_gpt4.jsonl": [
            {
                "question_id": i,
                "prompt": "q",
                "text": f"reference {i}",
                "answer_id": f"a{i}",
                "model_id": "gpt-4-0314",
                "metadata": {},
            }
            for i in range(3)
        ],
        "answers_model.jsonl": [
            {
                "question_id": i,
                "prompt": "q",
                "text": f"ours {i}",
                "answer_id": f"b{i}",
                "model_id": "m",
                "metadata": {},
            }
            for i in (0, 2)
        ],
    }
    for name, lines in rows.items():
        (tmp_path / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "rule.json").write_text(
        json.dumps({"llava_bench_conv": {"role": "Assistant", "prompt": "We would like..."}})
    )
    requests, missing = build_requests(
        read_questions(tmp_path / "questions.jsonl"),
        read_contexts(tmp_path / "context.jsonl"),
        read_answers(tmp_path / "answers_gpt4.jsonl"),
        read_answers(tmp_path / "answers_model.jsonl"),
        source=tmp_path / "questions.jsonl",
    )
    assert missing == ["1"]
    assert [(r.question_id, r.category) for r in requests] == [(0, "conversation"), (2, "complex")]
    assert requests[1].context == "A man ironing clothes on the back of a taxi."
    assert (requests[1].reference_answer, requests[1].model_answer) == ("reference 2", "ours 2")


def test_llava_bench_coco_caps_boxes_context_renders_as_the_original_review(tmp_path) -> None:
    """``caps_boxes_coco2014_val_80.jsonl``: captions, then one ``category: [x1, y1, x2, y2]`` line per box."""
    line = {
        "id": "000000441147",
        "image": "COCO_val2014_000000441147.jpg",
        "captions": ["Two suitcases on a bed.", "Luggage sits on a mattress."],
        "instances": [
            {"category": "suitcase", "bbox": [0.519, 0.469, 0.701, 0.682]},
            {"category": "bed", "bbox": [0.0, 0.2, 1.0, 1.0]},
        ],
    }
    path = tmp_path / "caps_boxes_coco2014_val_80.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert read_contexts(path) == {
        "COCO_val2014_000000441147.jpg": "Two suitcases on a bed.\nLuggage sits on a mattress.\n\n"
        "suitcase: [0.519, 0.469, 0.701, 0.682]\nbed: [0.0, 0.2, 1.0, 1.0]"
    }
