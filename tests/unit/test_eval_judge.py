"""The judge against a local Messages API stand-in, through the real AsyncAnthropic client."""

import asyncio
import json
import logging
import random
import re
import socket
import threading
import time
from dataclasses import replace

import pytest

from api_helpers import TEST_PRICES
from fakes.anthropic_api import FakeAnthropicAPI
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError
from llava_lite.claude.prices import Budget, BudgetExceeded
from llava_lite.evaluation import llava_bench
from llava_lite.evaluation.judge import (
    SCORES_TOOL,
    ClaudeJudge,
    JudgeError,
    Judgement,
    JudgeRequest,
    build_body,
    parse_reply,
    parse_score_line,
    render_prompt,
)
from llava_lite.inference.answers import Question

KEY = "sk-ant-judge-test-NEVER-LOG-91c2"


class FakeJudgeAPI(FakeAnthropicAPI):
    """Scores the reference 8 and the model answer by the number after 'worth' in its text,
    whichever place it stands in (an unbiased judge)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self._flight_lock = threading.Lock()

    def reply(self, body):
        with self._flight_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay_s)
        message = super().reply(body)
        user = body["messages"][-1]["content"]
        first, second = user.split("[Assistant 2]", 1)
        scores = [8, 1]  # the reference 8; the model answer its "worth N" (1 without one)
        for i, part in enumerate((first.split("[Assistant 1]", 1)[1], second)):
            worth = re.search(r"worth (\d+)", part.split("[End of Assistant")[0])
            if worth:  # the model's answer, in whichever place it stands
                scores = [int(worth.group(1)), 8] if i == 0 else [8, int(worth.group(1))]
        message["content"] = [
            {
                "type": "tool_use",
                "id": message["id"].replace("msg", "toolu"),
                "name": body["tools"][0]["name"],
                "input": {
                    "explanation": "Assistant 1 is complete.",
                    "assistant_1_score": scores[0],
                    "assistant_2_score": scores[1],
                },
            }
        ]
        with self._flight_lock:
            self.in_flight -= 1
        return message


@pytest.fixture
def api():
    with FakeJudgeAPI() as server:
        yield server


def _judge(api, tmp_path, **kw):
    kw.setdefault("cache", RequestCache(tmp_path / "judge.sqlite"))
    kw.setdefault("prices", TEST_PRICES)
    return ClaudeJudge(
        "claude-test", api_key=KEY, base_url=api.url, max_retries=kw.pop("max_retries", 2), **kw
    )


def _request(qid=1, category="detail", answer="an answer worth 6"):
    return JudgeRequest(
        qid, category, "A red bus.\n\nbus: [0.1, 0.2, 0.9, 0.8]", "What is it?", "A red bus.", answer
    )


# ---- parsing ------------------------------------------------------------------------------
def _message(content, stop="tool_use"):
    return {"type": "message", "content": content, "stop_reason": stop}


def test_parse_tool_call_and_text_fallback():
    tool = {
        "type": "tool_use",
        "name": SCORES_TOOL["name"],
        "input": {"explanation": "x", "assistant_1_score": 9, "assistant_2_score": 6.5},
    }
    assert parse_reply(_message([{"type": "thinking", "thinking": "..."}, tool])) == ((9.0, 6.5), "x")
    text = _message([{"type": "text", "text": "8 7\nAssistant 1 is more detailed."}], stop="end_turn")
    assert parse_reply(text) == ((8.0, 7.0), "8 7\nAssistant 1 is more detailed.")
    assert parse_score_line("7, 5\nreason") == (7.0, 5.0)
    assert parse_score_line(" 9  4 ") == (9.0, 4.0)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            _message(
                [{"type": "text", "text": "Assistant 1 scores 8 and Assistant 2 scores 6."}], "end_turn"
            ),
            "unparseable",
        ),
        (_message([{"type": "text", "text": "8 6 5\nthree numbers"}], "end_turn"), "unparseable"),
        (_message([{"type": "text", "text": "11 6"}], "end_turn"), "out_of_range"),
        (
            _message([{"type": "tool_use", "name": "record_scores", "input": {"assistant_1_score": "high"}}]),
            "malformed_scores",
        ),
        (_message([{"type": "text", "text": "8 6"}], "max_tokens"), "max_tokens"),
        (_message([], "end_turn"), "empty_reply"),
    ],
)
def test_parse_failures_have_reasons(message, reason):
    with pytest.raises(JudgeError) as err:
        parse_reply(message)
    assert err.value.reason == reason


# ---- the client -----------------------------------------------------------------------------
def test_judge_scores_then_replays_from_cache(api, tmp_path):
    judge = _judge(api, tmp_path)
    [j] = asyncio.run(judge.judge_all([_request()]))
    assert j.scores == (8.0, 6.0) and j.error is None and not j.cached
    sent = api.calls(status=200)[0]["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "record_scores"}
    assert "[Assistant 2]\nan answer worth 6" in sent["messages"][0]["content"]
    assert judge.paid_requests == 1 and judge.spent_usd > 0
    again = _judge(api, tmp_path)
    [j2] = asyncio.run(again.judge_all([_request()]))
    assert j2.cached and j2.scores == j.scores
    assert again.paid_requests == 0 and again.spent_usd == 0.0
    assert len(api.calls()) == 1


def test_the_judge_model_is_checked_before_the_first_paid_request_and_not_on_replay(api, tmp_path):
    asyncio.run(_judge(api, tmp_path).judge_all([_request()]))
    assert [c["path"] for c in api.log] == ["/v1/models/claude-test", "/v1/messages"]
    api.models["claude-test"] = {"lifecycle": "retired"}  # replaying paid replies needs no check
    [j] = asyncio.run(_judge(api, tmp_path).judge_all([_request()]))
    assert j.scores == (8.0, 6.0) and len(api.log) == 2


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"lifecycle": "retired", "retires_at": "2026-11-30T00:00:00Z"}, "model_retired"),
        (None, "model_unknown"),
    ],
)
def test_a_retired_or_unknown_judge_model_is_refused_before_anything_is_paid(api, tmp_path, model, reason):
    if model is None:
        api.known_models_only = True
    else:
        api.models["claude-test"] = model
    judge = _judge(api, tmp_path)
    with pytest.raises(ApiFatalError) as err:
        asyncio.run(judge.judge_all([_request(1), _request(2, answer="worth 3")]))
    assert err.value.reason == reason and "\n" not in str(err.value)
    assert api.calls() == [] and judge.spent_usd == 0


def test_an_unreachable_judge_api_stops_at_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # free, so nothing listens once closed
    judge = ClaudeJudge("claude-test", api_key=KEY, base_url=url, max_retries=1, prices=TEST_PRICES)
    start = time.monotonic()
    with pytest.raises(ApiFatalError, match="api_unreachable"):
        asyncio.run(judge.judge_all([_request(i, answer=f"worth {i}") for i in range(1, 6)]))
    assert time.monotonic() - start < 10


def test_unparseable_reply_is_counted_not_scored(api, tmp_path):
    api.script.append({"content": [{"type": "text", "text": "Both are fine."}], "stop_reason": "end_turn"})
    judgements = asyncio.run(_judge(api, tmp_path).judge_all([_request(1), _request(2, answer="worth 4")]))
    result = llava_bench.summarize(judgements)
    assert result.failures == {"unparseable": 1} and result.judged == 1
    # the failed one is not a zero: only the scored pair enters the means
    assert result.scores["all"]["count"] == 1
    assert result.scores["all"]["model_mean"] in (4.0, 6.0)


def test_api_errors_become_counted_failures(api, tmp_path):
    api.script.extend([{"status": 500}] * 3)  # the first try and both retries
    [j] = asyncio.run(_judge(api, tmp_path).judge_all([_request()]))
    assert j.scores is None and j.error == "api_status_500"


def test_concurrency_is_bounded(tmp_path):
    with FakeJudgeAPI(delay_s=0.15) as slow:
        requests = [_request(i, answer=f"worth {1 + i % 9}") for i in range(6)]
        judgements = asyncio.run(_judge(slow, tmp_path, concurrency=2).judge_all(requests))
    assert all(j.scores is not None for j in judgements)
    assert [j.request.question_id for j in judgements] == list(range(6))
    assert slow.max_in_flight <= 2


def test_budget_stops_before_sending(api, tmp_path):
    judge = _judge(api, tmp_path, budget=Budget(1e-6))
    with pytest.raises(BudgetExceeded):
        asyncio.run(judge.judge_all([_request()]))
    assert api.calls() == []


def test_authentication_error_is_fatal(tmp_path):
    with FakeJudgeAPI() as server:
        server.script.append({"status": 401})
        with pytest.raises(ApiFatalError, match="api_status_401"):
            asyncio.run(_judge(server, tmp_path, max_retries=0).judge_all([_request()]))


def test_key_never_logged_or_stored(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api.script.append({"content": [{"type": "text", "text": "no scores"}], "stop_reason": "end_turn"})
    judge = _judge(api, tmp_path)
    asyncio.run(judge.judge_all([_request()]))
    assert KEY not in caplog.text and KEY not in repr(judge)
    assert KEY.encode() not in (tmp_path / "judge.sqlite").read_bytes()
    assert all(KEY not in json.dumps(e) for e in api.log)


def test_key_from_environment(api, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    judge = ClaudeJudge("claude-test", base_url=api.url, cache=None, prices=TEST_PRICES)
    [j] = asyncio.run(judge.judge_all([_request()]))
    assert j.scores == (8.0, 6.0)


# ---- LLaVA-Bench files ------------------------------------------------------------------------
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bench_files_end_to_end(api, tmp_path):
    questions = _write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {"question_id": 0, "image": "001.jpg", "text": "What is shown?", "category": "conv"},
            {"question_id": 1, "image": "001.jpg", "text": "Describe it.", "category": "detail"},
            {"question_id": 2, "image": "002.jpg", "text": "Why is it here?", "category": "complex"},
            {"question_id": 3, "image": "002.jpg", "text": "What colour?", "category": "conv"},
        ],
    )
    context = _write_jsonl(
        tmp_path / "context.jsonl",
        [
            {"id": "001", "image": "001.jpg", "caption": "A cat on a mat."},
            {
                "image": "002.jpg",
                "captions": ["A bus.", "A red bus."],
                "instances": [{"category": "bus", "bbox": [0.1, 0.2, 0.9, 0.8]}],
            },
        ],
    )
    refs = _write_jsonl(
        tmp_path / "answers_gpt4.jsonl",
        [
            {"question_id": i, "text": f"reference {i}", "answer_id": f"r{i}", "model_id": "gpt-4"}
            for i in range(4)
        ],
    )
    answers = _write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 2, "text": "because worth 4"},  # order differs from the questions
            {"question_id": 0, "text": "a cat worth 8"},
            {"question_id": 1, "text": "a cat on a mat worth 6"},
        ],
    )
    contexts = llava_bench.read_contexts(context)
    assert contexts["002.jpg"] == "A bus.\nA red bus.\n\nbus: [0.1, 0.2, 0.9, 0.8]"
    reviews = tmp_path / "reviews.jsonl"
    result = llava_bench.evaluate(_judge(api, tmp_path), questions, refs, answers, contexts, reviews)
    assert result.missing == 1 and result.judged == 3 and result.unscored == 0
    assert result.scores["conversation"]["relative"] == pytest.approx(100.0)
    assert result.scores["detail"]["relative"] == pytest.approx(75.0)
    assert result.scores["complex"]["relative"] == pytest.approx(50.0)
    overall = dict(result.scores["all"])
    low, high = overall.pop("ci95")
    assert overall == pytest.approx({"relative": 75.0, "reference_mean": 8.0, "model_mean": 6.0, "count": 3})
    assert 50.0 <= low < 75.0 < high <= 100.0  # resampled questions: model answers worth 8, 6, 4
    # judged in both orders by an unbiased judge: no score moves, no preference flips
    assert result.position_bias == {"questions": 3, "mean_score_change": 0.0, "flipped_share": 0.0}
    lines = [json.loads(x) for x in reviews.read_text().splitlines()]
    assert [(r["question_id"], r["order"]) for r in lines] == [
        (q, order) for q in (0, 1, 2) for order in ("reference_first", "model_first")
    ]
    assert all(r["tuple"] == [8.0, 8.0] for r in lines[:2])
    assert result.paid_requests == 6


def test_both_orders_give_each_question_a_reference_first_then_a_model_first_request():
    q = [Question(5, "Q?", "x.jpg", "conv"), Question(6, "R?", "x.jpg", "detail")]
    refs, answers = {k: {"text": f"ref {k}"} for k in "56"}, {k: {"text": f"ours {k}"} for k in "56"}
    requests, _ = llava_bench.build_requests(q, {"x.jpg": "c"}, refs, answers, both_orders=True)
    assert [(r.question_id, r.model_first) for r in requests] == [
        (5, False),
        (5, True),
        (6, False),
        (6, True),
    ]
    assert requests[0] == replace(requests[1], model_first=False)
    one, _ = llava_bench.build_requests(q, {"x.jpg": "c"}, refs, answers)
    assert one == requests[::2]


def test_bench_unknown_category_and_missing_context(tmp_path):
    q = [Question(5, "Q?", "x.jpg", "summary")]
    with pytest.raises(ValueError, match="question 5 has category 'summary'"):
        llava_bench.build_requests(q, {"x.jpg": "c"}, {"5": {"text": "r"}}, {})
    q = [Question(6, "Q?", "y.jpg", "conv")]
    with pytest.raises(KeyError, match=r"no context for image 'y\.jpg'"):
        llava_bench.build_requests(q, {"x.jpg": "c"}, {"6": {"text": "r"}}, {})


def test_symbolic_context_from_coco(tmp_path):
    captions = {
        "images": [{"id": 7, "file_name": "7.png", "width": 100, "height": 50}],
        "annotations": [{"image_id": 7, "caption": "A square."}],
    }
    instances = {
        "images": captions["images"],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 10]}],
    }
    (tmp_path / "c.json").write_text(json.dumps(captions))
    (tmp_path / "i.json").write_text(json.dumps(instances))
    contexts = llava_bench.contexts_from_coco(tmp_path / "c.json", tmp_path / "i.json")
    assert contexts == {"7.png": "A square.\n\nsquare: [0.100, 0.100, 0.300, 0.300]"}
    body = build_body(JudgeRequest(1, "detail", contexts["7.png"], "Q", "R", "M"), "m", 100)
    assert "[Context]\nA square.\n\nsquare: [0.100" in body["messages"][0]["content"]


# ---- a misbehaving server ---------------------------------------------------------------------
def _scores_tool(a, b):
    return {
        "type": "tool_use",
        "id": "t",
        "name": "record_scores",
        "input": {"explanation": "x", "assistant_1_score": a, "assistant_2_score": b},
    }


@pytest.mark.parametrize(
    ("behaviours", "error"),
    [
        ([{"drop": True}], "api_connection"),
        ([{"hang_s": 2}], "api_timeout"),
        ([{"raw": b""}], "api_bad_response"),
        ([{"raw": b"<html>", "content_type": "text/html"}], "api_bad_response"),
        ([{"omit": ["content"]}], "api_bad_response"),
        ([{"status": 400}], "api_status_400"),
        ([{"status": 503, "error_body": b"<html>down</html>"}], "api_status_503"),
        ([{"stop_reason": None}], "unexpected_stop"),
        ([{"stop_reason": "pause_turn"}], "pause_turn"),
        ([{"content": [_scores_tool(8, 6), _scores_tool(2, 9)]}], "malformed_reply"),
        ([{"content": [_scores_tool(True, 6)]}], "malformed_scores"),
        ([{"content": [_scores_tool(8, 60)]}], "out_of_range"),
        (
            [{"content": [{"type": "tool_use", "id": "t", "name": "record_scores", "input": "8 6"}]}],
            "malformed_scores",
        ),
    ],
)
def test_misbehaving_replies_are_counted_never_scored(api, tmp_path, behaviours, error):
    api.script.extend(behaviours)
    judge = _judge(api, tmp_path, timeout_s=0.3, max_retries=0)  # the teacher tests cover retries
    start = time.monotonic()
    first, second = asyncio.run(judge.judge_all([_request(1), _request(2, answer="worth 3")]))
    assert time.monotonic() - start < judge.deadline_s
    assert (first.scores, first.error) == (None, error) or (second.scores, second.error) == (None, error)
    assert {j.error for j in (first, second)} == {None, error}  # the other one is scored
    assert judge.budget.reserved_usd == 0


def test_judge_retry_after_is_capped_and_usage_less_replies_charged_worst_case(api, tmp_path):
    api.script.extend([{"status": 529, "headers": {"retry-after": "7200"}}, {"omit": ["usage"]}])
    judge = _judge(api, tmp_path, max_retry_wait_s=0.1)
    start = time.monotonic()
    [j] = asyncio.run(judge.judge_all([_request()]))
    assert time.monotonic() - start < 5 and j.scores == (8.0, 6.0)
    body = build_body(_request(), "claude-test", judge.max_tokens)
    worst = judge.prices.cost(judge.estimator.worst_case(body))
    assert judge.spent_usd == pytest.approx(worst) and worst > 0
    [again] = asyncio.run(_judge(api, tmp_path).judge_all([_request()]))  # replay without usage: no crash
    assert again.cached and again.scores == (8.0, 6.0)


def test_a_refused_judge_stops_after_in_flight_replies_are_stored_and_hides_the_key(tmp_path, caplog):
    echo = json.dumps(
        {"type": "error", "error": {"type": "permission_error", "message": f"key {KEY} denied"}}
    )
    with FakeJudgeAPI(delay_s=0.3) as server:
        server.script.append(
            {"status": 403, "error_body": echo.encode(), "headers": {"content-type": "application/json"}}
        )
        judge = _judge(server, tmp_path, concurrency=3, max_retries=0)
        with pytest.raises(ApiFatalError, match="api_status_403") as err:
            asyncio.run(judge.judge_all([_request(i, answer=f"worth {i + 2}") for i in range(3)]))
    assert KEY not in str(err.value) and KEY not in caplog.text and "[redacted]" in str(err.value)
    assert judge.paid_requests == 2 and len(RequestCache(tmp_path / "judge.sqlite")) == 2


def test_nothing_more_is_sent_once_the_judge_is_refused(api, tmp_path):
    api.script.append({"status": 401})
    judge = _judge(api, tmp_path, concurrency=1, max_retries=0)
    with pytest.raises(ApiFatalError, match="api_status_401"):
        asyncio.run(judge.judge_all([_request(i) for i in range(5)]))
    assert len(api.calls()) == 1


def test_a_review_with_invalid_unicode_is_made_writable(api, tmp_path):
    api.script.append(
        {
            "content": [
                {
                    **_scores_tool(7, 5),
                    "input": {"explanation": "ok \ud800", "assistant_1_score": 7, "assistant_2_score": 5},
                }
            ]
        }
    )
    [j] = asyncio.run(_judge(api, tmp_path).judge_all([_request()]))
    assert j.scores == (7.0, 5.0) and j.review == "ok ?"
    json.dumps(j.to_record(), ensure_ascii=False).encode("utf-8")  # what the reviews file holds


def test_random_failures_under_concurrency_give_one_judgement_per_request(api, tmp_path):
    behaviours = [
        {"status": 529, "headers": {"retry-after": "600"}},
        {"status": 500},
        {"drop": True},
        {"raw": b"not json"},
        {"stop_reason": None},
        {"omit": ["usage"]},
        {"content": [_scores_tool(8, 6), _scores_tool(8, 6)]},
        {"delay_s": 0.1},
    ]
    rng = random.Random(1)
    api.script.extend(rng.choice([*behaviours, {}, {}]) for _ in range(40))
    requests = [_request(i, answer=f"worth {1 + i % 9}") for i in range(20)]
    judge = _judge(api, tmp_path, concurrency=4, max_retries=1, timeout_s=1.0, max_retry_wait_s=0.05)
    judgements = asyncio.run(judge.judge_all(requests))
    assert [j.request.question_id for j in judgements] == list(range(20))
    assert all((j.scores is None) != (j.error is None) for j in judgements)
    assert any(j.error for j in judgements) and any(j.scores for j in judgements)
    for j in judgements:
        if j.scores is not None:
            assert j.scores == (8.0, 1.0 + j.request.question_id % 9)
    # every delivered 200 is paid once; the unreadable ones (billed, judged once per distinct body)
    # are not stored
    unreadable = len({j.request.model_answer for j in judgements if j.error == "api_bad_response"})
    assert judge.paid_requests == len(api.calls(status=200))
    assert judge.paid_requests == len(RequestCache(tmp_path / "judge.sqlite")) + unreadable


def test_identical_requests_are_paid_once(api, tmp_path):
    judge = _judge(api, tmp_path, concurrency=4)
    first, second = asyncio.run(judge.judge_all([_request(1), _request(2)]))  # same body, other ids
    assert len(api.calls()) == 1 and judge.paid_requests == 1
    assert first.scores == second.scores == (8.0, 6.0) and second.request.question_id == 2
    assert not first.cached and second.cached


# ---- both orders, position bias, intervals, chart -----------------------------------------------
def _judged(qid, category, model_first, scores, error=None):
    request = replace(_request(qid, category), model_first=model_first)
    return Judgement(request, scores, error=error, judge_model="claude-test")


def test_a_swapped_request_puts_the_model_first_and_its_scores_come_back_in_reference_model_order(
    api, tmp_path
):
    request = _request(answer="an answer worth 6")
    model_first = replace(request, model_first=True)
    prompt = render_prompt(model_first)
    assert (
        prompt.index("an answer worth 6") < prompt.index("[Assistant 2]") < prompt.index("A red bus.\n\n[End")
    )
    straight, swapped = asyncio.run(_judge(api, tmp_path).judge_all([request, model_first]))
    assert straight.scores == swapped.scores == (8.0, 6.0)
    assert (straight.to_record()["order"], swapped.to_record()["order"]) == ("reference_first", "model_first")


def test_position_bias_is_the_score_change_and_share_of_flips_between_orders():
    judgements = [  # a judge that adds 2 to whichever answer comes first
        _judged(1, "detail", False, (9.0, 6.0)),  # reference first: 7 + 2, model 6
        _judged(1, "detail", True, (7.0, 8.0)),  # model first: 6 + 2 -> the preference flips
        _judged(2, "conv", False, (7.0, 5.0)),
        _judged(2, "conv", True, (5.0, 7.0)),  # a 2-point gap, both orders: flips as well
        _judged(3, "conv", False, (6.0, 9.0)),
        _judged(3, "conv", True, (4.0, 11.0)),  # model stays preferred
    ]
    result = llava_bench.summarize(judgements)
    assert result.position_bias == {
        "questions": 3,
        "mean_score_change": 2.0,
        "flipped_share": round(2 / 3, 4),
    }
    assert result.scores["detail"]["reference_mean"] == pytest.approx(8.0)  # the mean of both orders
    assert result.scores["detail"]["model_mean"] == pytest.approx(7.0)


def test_failed_judgements_are_counted_per_order_and_never_scored():
    judgements = [
        _judged(1, "conv", False, (8.0, 4.0)),
        _judged(1, "conv", True, None, error="unparseable"),  # the other order still scores question 1
        _judged(2, "conv", False, None, error="refusal"),
        _judged(2, "conv", True, None, error="unparseable"),  # question 2: no score at all
    ]
    result = llava_bench.summarize(judgements)
    assert result.failures == {"unparseable": 2, "refusal": 1}
    assert (result.judged, result.unscored) == (1, 1) and result.position_bias is None
    assert result.scores["all"]["count"] == 1 and result.scores["all"]["relative"] == pytest.approx(50.0)


def test_the_bootstrap_interval_is_seeded_holds_the_estimate_and_widens_with_spread():
    tight = [(8.0, 6.0)] * 20
    assert llava_bench.bootstrap_ci(tight) == [75.0, 75.0]
    spread = [(8.0, 2.0), (8.0, 10.0)] * 10  # the same mean (6), far apart
    low, high = llava_bench.bootstrap_ci(spread, n=2000, seed=3)
    assert low < 75.0 < high and high - low > 20
    assert llava_bench.bootstrap_ci(spread, n=2000, seed=3) == [low, high]  # seeded: reproducible


def test_the_chart_is_a_png_with_one_bar_per_category_and_overall(tmp_path):
    judgements = [
        _judged(i, cat, False, (8.0, float(4 + i))) for i, cat in enumerate(["conv", "detail", "complex"])
    ]
    result = llava_bench.summarize(judgements)
    result.judge = {"model": "claude-test", "prompt_version": "judge-v1", "orders": 1}
    llava_bench.write_chart(result, tmp_path / "charts" / "scores.png")
    data = (tmp_path / "charts" / "scores.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert list(result.scores) == ["complex", "conv", "detail", "all"]


def test_bench_context_lines_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "context.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "A cat."}\n\n{"image": "b.jpg", "caption": "A dog."}')
    assert llava_bench.read_contexts(path) == {"a.jpg": "A cat.", "b.jpg": "A dog."}  # no final newline
    path.write_text('{"image": "a.jpg", "caption": "A cat."}\n\n[1]\n')
    with pytest.raises(ValueError, match=r"context\.jsonl:3: a context line needs an 'image' string"):
        llava_bench.read_contexts(path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl"):
        llava_bench.read_contexts(tmp_path / "nowhere.jsonl")
