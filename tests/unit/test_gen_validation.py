"""Each bad sample shape is rejected with its own reason; duplicates are dropped, not rejected."""

import pytest

from llava_lite.generation.validation import (
    SampleRejected,
    SampleValidator,
    ValidationConfig,
    dedupe_turns,
    to_conversations,
)

GOOD = [("What is the dog doing?", "It is catching a frisbee."), ("Where is it?", "In a park.")]


def test_good_sample_becomes_llava_conversations():
    conv = to_conversations(GOOD)
    assert conv == [
        {"from": "human", "value": "<image>\nWhat is the dog doing?"},
        {"from": "gpt", "value": "It is catching a frisbee."},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "In a park."},
    ]
    SampleValidator().validate(conv)


def _conv(*values, roles=None):
    roles = roles or ["human", "gpt"] * (len(values) // 2 + 1)
    return [{"from": r, "value": v} for r, v in zip(roles, values, strict=False)]


@pytest.mark.parametrize(
    ("conversations", "reason"),
    [
        ([], "empty"),
        (_conv("<image>\nWhat is this?"), "not_alternating"),
        (_conv("<image>\nWhat is this?", "A dog.", roles=["human", "human"]), "not_alternating"),
        (_conv("<image>\nWhat is this?", "A dog.", roles=["gpt", "human"]), "not_alternating"),
        (_conv("What is this?", "A dog."), "image_token"),
        (_conv("<image>\nWhat is this? <image>", "A dog."), "image_token"),
        (_conv("<image>\nWhat is this?", "A dog.", "<image> And this?", "A cat."), "image_token"),
        (_conv("What is this?", "A dog.", "<image>\nAnd this?", "A cat."), "image_token"),
        (_conv("<image>\nWhy?", "Because."), "question_too_short"),
        (_conv("<image>\nWhat is this?", ""), "answer_too_short"),
        (_conv("<image>\nWhat is this?", "x" * 7000), "answer_too_long"),
        (_conv("<image>\n" + "Why " * 200, "Because."), "question_too_long"),
        (_conv("<image>\nWhat does the caption say?", "A dog."), "source_leak"),
        (_conv("<image>\nWhere is the dog?", "Its bounding box is on the left."), "source_leak"),
        (_conv("<image>\nWhere is the dog?", "At [0.123, 0.456, 0.500, 0.900]."), "source_leak"),
        (_conv("<image>\nWhere is the dog?", "The annotations put it left."), "source_leak"),
        (_conv("<image>\nWhere is the dog \ud800?", "On the left."), "invalid_text"),
        (_conv("<image>\nWhere is the dog?", "On the\x00 left."), "invalid_text"),
    ],
)
def test_each_bad_shape_is_rejected(conversations, reason):
    with pytest.raises(SampleRejected) as err:
        SampleValidator().validate(conversations)
    assert err.value.reason == reason


def test_turn_count_bounds_and_custom_leak_patterns():
    two_turns = to_conversations(GOOD)
    with pytest.raises(SampleRejected, match="turn_count"):
        SampleValidator(ValidationConfig(max_turns=1)).validate(two_turns)
    with pytest.raises(SampleRejected, match="source_leak"):
        SampleValidator(ValidationConfig(leak_patterns=[r"\bfrisbee\b"])).validate(two_turns)


def test_teacher_writing_the_image_marker_is_rejected():
    with pytest.raises(SampleRejected) as err:
        to_conversations([("<image> What is it?", "A dog.")])
    assert err.value.reason == "image_token_in_text"


def test_duplicate_questions_are_dropped_keeping_the_first():
    turns = [
        ("What is the dog doing?", "Running."),
        ("what is the dog  doing", "Jumping."),
        ("Where?", "Park."),
    ]
    kept, dropped = dedupe_turns(turns)
    assert kept == [("What is the dog doing?", "Running."), ("Where?", "Park.")] and dropped == 1
