"""The parts of preference pairs: choosing best vs worst, reading the answer judge's replies,
the offline judge's scores from the annotations, and seeded batched sampling."""

import pytest
import torch
from PIL import Image

from helpers import tiny_llava
from llava_lite.data import LlavaProcessor
from llava_lite.evaluation.answer_judge import (
    PROMPTS,
    SCORE_TOOL,
    AnswerRequest,
    ClaudeAnswerJudge,
    build_body,
    parse_reply,
    prompt_for,
)
from llava_lite.evaluation.judging import JudgeError
from llava_lite.inference.answers import Question, sample_answers
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.preference.pairs import choose_pair, distinct_answers
from llava_lite.synthetic import OfflineJudge, build_world
from llava_lite.synthetic.tasks import eval_questions

JUDGE = {"model": "m", "prompt_version": "v"}


def _candidate(*answers):
    return {"id": "7", "image": "a.png", "question": "What is it?", "answers": list(answers)}


def _judged(**scores):
    return {t: {"score": s, "reason": f"why {t}"} for t, s in scores.items()}


# ---- choosing a pair ---------------------------------------------------------------------------
def test_the_best_and_worst_answers_far_enough_apart_make_the_pair_in_the_fixed_format():
    pair, why = choose_pair(_candidate("a", "b", "c"), _judged(a=5.0, b=9.0, c=2.0), 2.0, JUDGE)
    assert why == "pair"
    assert pair == {
        "id": "7", "image": "a.png", "prompt": "<image>\nWhat is it?", "chosen": "b", "rejected": "c",
        "chosen_score": 9.0, "rejected_score": 2.0, "chosen_reason": "why b", "rejected_reason": "why c",
        "judge": JUDGE,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("answers", "scores", "why"),
    [
        (("a", "b"), {"a": 6.0, "b": 5.0}, "below_margin"),
        (("a", "a", " "), {"a": 9.0}, "identical_answers"),
        (("a", "b"), {"a": 9.0, "b": None}, "too_few_scored"),  # an unparseable judgement is no score
        (("a", "b"), {"a": 9.0}, "unjudged"),
    ],
)
def test_a_question_without_a_pair_says_why(answers, scores, why):
    assert choose_pair(_candidate(*answers), _judged(**scores), 2.0, JUDGE) == (None, why)


def test_ties_keep_the_earlier_answer_on_top_and_the_later_below():
    pair, _ = choose_pair(_candidate("a", "b", "c", "d"), _judged(a=8, b=8, c=1, d=1), 2.0, JUDGE)
    assert (pair["chosen"], pair["rejected"]) == ("a", "d")


def test_identical_and_empty_answers_are_judged_once_or_never():
    assert distinct_answers(["x", "", "y", "x", "  "]) == ["x", "y"]


# ---- the Claude answer judge's replies ---------------------------------------------------------
def _message(content, stop="tool_use"):
    return {"type": "message", "content": content, "stop_reason": stop}


def _tool(data):
    return _message([{"type": "tool_use", "id": "t", "name": SCORE_TOOL["name"], "input": data}])


def test_a_score_comes_from_the_tool_call_or_a_first_line_holding_one_number():
    assert parse_reply(_tool({"score": 7, "reason": "One wrong colour."})) == (7.0, "One wrong colour.")
    text = _message([{"type": "text", "text": "Score: 4/10\nIt invents a dog."}], "end_turn")
    assert parse_reply(text) == (4.0, "It invents a dog.")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_message([{"type": "text", "text": "A fine answer overall."}], "end_turn"), "unparseable"),
        (_tool({"score": 11, "reason": "x"}), "out_of_range"),
        (_tool({"score": True, "reason": "x"}), "malformed_score"),
        (_tool({"reason": "x"}), "malformed_score"),
        (_tool({"score": 5, "reason": "x"}) | {"stop_reason": "max_tokens"}, "max_tokens"),
    ],
)
def test_a_reply_without_a_usable_score_is_a_counted_reason(message, reason):
    with pytest.raises(JudgeError) as err:
        parse_reply(message)
    assert err.value.reason == reason


def test_the_request_shows_context_question_and_answer_with_the_tool_forced():
    request = AnswerRequest(
        3, "a.png", "What colour is the bus?", "It is blue.", "A red bus.\n\nbus: [0.1, 0.2, 0.9, 0.8]"
    )
    body = build_body(request, prompt_for("answer-judge-v1"), "claude-x", 256)
    user = body["messages"][0]["content"]
    assert "A red bus." in user and "What colour is the bus?" in user and "It is blue." in user
    assert body["tool_choice"] == {"type": "tool", "name": "record_score"} and body["max_tokens"] == 256


def test_prompt_versions_are_known_and_part_of_the_cache_key():
    assert "answer-judge-v1" in PROMPTS
    with pytest.raises(KeyError, match="valid: \\['answer-judge-v1'\\]"):
        prompt_for("answer-judge-v0")
    judge = ClaudeAnswerJudge("claude-sonnet-4-6", api_key="sk-ant-unused")
    request = AnswerRequest(1, "a.png", "Q?", "A.", "ctx")
    body = judge.body(request)
    other = ClaudeAnswerJudge("claude-sonnet-4-6", api_key="sk-ant-unused")
    other.prompt_version = "answer-judge-v2"  # same body, another prompt version: another key
    assert judge.key(request, body) != other.key(request, body)


def test_a_request_without_context_is_refused_naming_the_question():
    judge = ClaudeAnswerJudge("claude-sonnet-4-6", api_key="sk-ant-unused")
    with pytest.raises(ValueError, match=r"question 5 \(b.png\): no context"):
        judge.body(AnswerRequest(5, "b.png", "Q?", "A.", ""))


# ---- the offline judge -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), n_train=0, n_val=0, n_test=3, image_size=32)


def test_the_offline_judge_scores_from_the_annotations_with_the_wrong_claims_as_reason(world):
    judge = OfflineJudge(world.root)
    colour = next(r for r in eval_questions(world, "test") if r["question_type"] == "colour")
    question = colour["conversations"][0]["value"].removeprefix("<image>\n")
    wrong = next(c for c in colour["choices"] if c != colour["answer"])
    right = judge.score(AnswerRequest(colour["id"], colour["image"], question, colour["answer"]))
    bad = judge.score(AnswerRequest(colour["id"], colour["image"], question, wrong))
    assert (right.score, right.error, right.reason) == (10.0, None, "1/1 claims right")
    assert (
        bad.score == 1.0
        and bad.reason.startswith("0/1 claims right; ")
        and f"truth {colour['answer']}" in bad.reason
    )
    assert (judge.model, judge.prompt_version, judge.needs_context) == (
        "offline-checker",
        "checker-v1",
        False,
    )


def test_the_offline_judge_counts_what_it_cannot_judge(world):
    judge = OfflineJudge(world.root)
    image = next(iter(judge.scenes))
    unread = judge.score(AnswerRequest(1, image, "Tell me a story about it.", "Once upon a time."))
    assert (unread.score, unread.error) == (None, "nothing_checked")
    assert judge.score(AnswerRequest(1, "test/none.png", "Q?", "A.")).error == "unknown_image"
    with pytest.raises(ValueError, match=r"world .* or scenes"):
        OfflineJudge()


# ---- sampling ----------------------------------------------------------------------------------
def test_sampling_is_batched_seeded_and_leaves_the_callers_random_state_alone(tmp_path):
    model = tiny_llava()
    processor = LlavaProcessor.from_model(model)
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 20, 20)).save(tmp_path / f"{i}.png")
    questions = [Question(i, f"What is in picture {i}?", f"{i}.png") for i in range(3)]
    settings = DecodingSettings(8, True, 1.0, 1.0)
    state = torch.get_rng_state()
    first = list(
        sample_answers(model, processor, questions, 4, settings=settings, image_root=tmp_path, batch_size=8)
    )
    assert torch.equal(state, torch.get_rng_state())
    again = list(
        sample_answers(model, processor, questions, 4, settings=settings, image_root=tmp_path, batch_size=8)
    )
    other = list(
        sample_answers(model, processor, questions, 4, settings=settings, image_root=tmp_path, seed=1)
    )
    assert [q.question_id for q, _ in first] == [0, 1, 2] and all(len(a) == 4 for _, a in first)
    assert first == again and first != other
    assert any(len(set(answers)) > 1 for _, answers in first)  # k samples of one question differ
