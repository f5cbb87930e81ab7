"""Prompt files, request bodies (forced tool, cached prefix, context options), reply parsing, cache keys."""

import json

import pytest

from llava_lite.claude.cache import request_key
from llava_lite.claude.prices import Prices
from llava_lite.generation.base import RESPONSE_TYPES, GenerationRequest, TeacherError
from llava_lite.generation.messages import (
    PAPER_CONTEXT,
    ContextOptions,
    build_request_body,
    few_shot_block,
    parse_qa_layout,
    parse_reply,
)
from llava_lite.generation.prompts import (
    PROMPT_VERSION,
    available_versions,
    load_detail_instructions,
    load_prompt_set,
)
from llava_lite.symbolic import ObjectBox, SymbolicContext

CTX = SymbolicContext(
    image_id=42,
    file_name="000000000042.jpg",
    width=640,
    height=480,
    captions=("A man rides a horse on a beach.", "A rider and a horse near the sea."),
    objects=(ObjectBox("person", (0.1, 0.2, 0.3, 0.4)), ObjectBox("horse", (0.05, 0.3, 0.5, 0.9))),
)


def _request(rtype="conversation", **kw):
    instruction = "Describe the following image in detail." if rtype == "detail" else None
    return GenerationRequest(context=CTX, response_type=rtype, instruction=instruction, **kw)


def _body(rtype="conversation", options=None, **kw):
    prompts, options = load_prompt_set(rtype), options or PAPER_CONTEXT[rtype]
    return build_request_body(
        _request(rtype), prompts, "claude-test", 512, options, few_shot_block(prompts, options), **kw
    )


def test_prompt_files_exist_for_every_type_and_version():
    assert PROMPT_VERSION in available_versions()
    for rtype in RESPONSE_TYPES:
        prompts = load_prompt_set(rtype)
        assert prompts.version == PROMPT_VERSION and len(prompts.system) > 200
        assert len(prompts.examples) >= 2
        for ex in prompts.examples:
            assert ex.context.captions
            assert ("description" in ex.response) == (rtype == "detail")
    assert len(set(load_detail_instructions())) >= 10
    with pytest.raises(KeyError, match="unknown prompt version 'v999'"):
        load_prompt_set("conversation", "v999")
    with pytest.raises(KeyError, match="valid"):
        load_prompt_set("poem")


def test_body_forces_the_tool_and_caches_the_shared_prefix():
    body = _body("complex_reasoning")
    assert body["tool_choice"] == {"type": "tool", "name": "record_turns"}
    assert [t["name"] for t in body["tools"]] == ["record_turns"]
    assert "temperature" not in body
    system = body["system"]
    assert system[0]["text"] == load_prompt_set("complex_reasoning").system
    assert system[-1]["cache_control"] == {"type": "ephemeral"}
    assert "<example" in system[-1]["text"]
    user = body["messages"][0]["content"]
    assert "A man rides a horse on a beach." in user and "horse: [0.050, 0.300, 0.500, 0.900]" in user
    assert "cache_control" not in _body("complex_reasoning", prompt_caching=False)["system"][-1]
    detail = _body("detail")
    assert detail["tool_choice"]["name"] == "record_description"
    assert "Describe the following image in detail." in detail["messages"][0]["content"]


def test_context_options_choose_what_the_teacher_reads():
    conv = _body("conversation")["messages"][0]["content"]  # paper default: captions only
    assert "A rider and a horse near the sea." in conv and "[0.100" not in conv
    boxes_only = _body("conversation", ContextOptions(captions=False, boxes=True))["messages"][0]["content"]
    assert "person: [0.100, 0.200, 0.300, 0.400]" in boxes_only and "rides a horse" not in boxes_only
    empty = SymbolicContext(image_id=5, file_name="x.jpg", width=1, height=1, captions=("a cat",))
    with pytest.raises(ValueError, match=r"image 5 \(x.jpg\): empty symbolic context"):
        build_request_body(
            GenerationRequest(empty, "detail", instruction="Describe."),
            load_prompt_set("detail"),
            "m",
            10,
            ContextOptions(captions=False, boxes=True),
            "",
        )


def _message(content, stop_reason="tool_use"):
    return {"type": "message", "content": content, "stop_reason": stop_reason, "model": "claude-test"}


TURNS = {"turns": [{"question": "What animal is there?", "answer": "A horse."}]}


def test_parse_tool_use_after_a_thinking_block():
    message = _message(
        [
            {"type": "thinking", "thinking": "Question: ignore me === Answer: no", "signature": "s"},
            {"type": "tool_use", "id": "t1", "name": "record_turns", "input": TURNS},
        ]
    )
    assert parse_reply(message, _request()) == [("What animal is there?", "A horse.")]


def test_parse_text_json_and_paper_layout_fallbacks():
    as_json = _message(
        [
            {"type": "thinking", "thinking": "..."},
            {"type": "text", "text": f"```json\n{json.dumps(TURNS)}\n```"},
        ],
        "end_turn",
    )
    assert parse_reply(as_json, _request()) == [("What animal is there?", "A horse.")]
    layout = "Question:\nWhat is the man doing?\n===\nAnswer:\nHe is riding a horse.\n===\nQuestion: Where?\n===\nAnswer: On a beach."
    assert parse_reply(_message([{"type": "text", "text": layout}], "end_turn"), _request()) == [
        ("What is the man doing?", "He is riding a horse."),
        ("Where?", "On a beach."),
    ]
    detail = parse_reply(
        _message([{"type": "text", "text": "A rider on a horse."}], "end_turn"), _request("detail")
    )
    assert detail == [("Describe the following image in detail.", "A rider on a horse.")]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            _message([{"type": "tool_use", "name": "record_turns", "input": TURNS}], "max_tokens"),
            "max_tokens",
        ),
        (_message([{"type": "text", "text": "I can't help with that."}], "refusal"), "refusal"),
        (_message([{"type": "thinking", "thinking": "hmm"}], "end_turn"), "empty_reply"),
        (_message([{"type": "text", "text": "Sure, here you go!"}], "end_turn"), "unparseable"),
        (
            _message([{"type": "tool_use", "name": "record_turns", "input": {"turns": "x"}}]),
            "malformed_reply",
        ),
        (
            _message([{"type": "tool_use", "name": "record_turns", "input": {"turns": [{"q": 1}]}}]),
            "malformed_reply",
        ),
    ],
)
def test_replies_that_are_not_data_raise_with_a_reason(message, reason):
    with pytest.raises(TeacherError) as err:
        parse_reply(message, _request())
    assert err.value.reason == reason


def test_qa_layout_must_pair_up():
    with pytest.raises(TeacherError, match="answer without a question"):
        parse_qa_layout("Answer: yes")
    with pytest.raises(TeacherError, match="question without an answer"):
        parse_qa_layout("Question: a?\n===\nAnswer: b\n===\nQuestion: c?")


def test_cache_key_covers_request_identity_and_prompt_version():
    body = _body()
    base = dict(prompt_version="v1", image_id=42, response_type="conversation", sample_index=0, attempt=0)
    key = request_key(body, **base)
    assert len(key) == 64 and key == request_key(json.loads(json.dumps(body)), **base)
    for change in ({"prompt_version": "v2"}, {"sample_index": 1}, {"attempt": 1}, {"image_id": 43}):
        assert request_key(body, **{**base, **change}) != key
    assert request_key({**body, "model": "other"}, **base) != key


def test_the_teachers_body_is_the_one_built_from_its_prompts_and_context_options():
    from llava_lite.generation.teacher import ClaudeTeacher

    options = {"conversation": ContextOptions(captions=True, boxes=True)}
    teacher = ClaudeTeacher(
        "claude-test", context=options, prices=Prices(input=1.0, output=2.0), max_tokens=512
    )
    for rtype in RESPONSE_TYPES:  # the few-shot block rendered once per type is the per-request one
        assert teacher.body(_request(rtype)) == _body(rtype, options.get(rtype))
