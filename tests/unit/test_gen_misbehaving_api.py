"""ClaudeTeacher against a server that misbehaves: every failure is bounded in time, counted
with a reason, never data, never paid twice, and never shows the API key."""

import email.utils
import json
import logging
import time

import pytest

from api_helpers import TEST_PRICES, claude_teacher, generate_once
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError, call_deadline_s, retry_after_s
from llava_lite.generation.base import GenerationRequest, TeacherError
from llava_lite.generation.teacher import ClaudeTeacher
from llava_lite.symbolic import ObjectBox, SymbolicContext

KEY = "sk-ant-test-MISBEHAVE-0b7e55"
CTX = SymbolicContext(
    image_id=5,
    file_name="000000000005.jpg",
    width=640,
    height=480,
    captions=("A red bus waits at a stop.",),
    objects=(ObjectBox("bus", (0.1, 0.2, 0.9, 0.8)),),
)
REQUEST = GenerationRequest(context=CTX, response_type="conversation")
GOOD_TURNS = {"turns": [{"question": "What vehicle is this?", "answer": "A red bus."}]}


def _tool(data, name="record_turns"):
    return {"type": "tool_use", "id": "toolu_1", "name": name, "input": data}


def _teacher(api, tmp_path, **kw):
    return claude_teacher(
        api, tmp_path, KEY, **{"max_retries": 2, "timeout_s": 2.0, "max_retry_wait_s": 0.2, **kw}
    )


def _generate(teacher, request=REQUEST):
    return generate_once(teacher, request)


def _fails(teacher, reason):
    with pytest.raises(TeacherError) as err:
        _generate(teacher)
    assert err.value.reason == reason, err.value
    return err.value


# ---- time is bounded ----------------------------------------------------------------------
def _http_date_in(seconds):
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    "headers",
    [{"retry-after": "3600"}, {"retry-after-ms": "86400000"}, {"retry-after": _http_date_in(7200)}],
    ids=["seconds", "ms", "http-date"],
)
@pytest.mark.parametrize("status", [429, 529])
def test_a_huge_retry_after_is_capped(api, tmp_path, headers, status, caplog):
    api.script.append({"status": status, "headers": headers})
    start = time.monotonic()
    reply = _generate(_teacher(api, tmp_path, max_retry_wait_s=0.3))
    assert time.monotonic() - start < 5  # the SDK alone would sleep for hours
    assert reply.turns and [c["status"] for c in api.calls()] == [status, 200]
    assert "capped" in caplog.text


@pytest.mark.parametrize("limits", [{"timeout_s": 0}, {"max_retry_wait_s": -1}, {"max_retries": -1}])
def test_limits_that_bound_nothing_are_refused(tmp_path, limits):
    with pytest.raises(ValueError, match="max_retries >= 0"):
        ClaudeTeacher("claude-test", prices=TEST_PRICES, **limits)


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None
    assert retry_after_s({"retry-after-ms": "5", "retry-after": "3600"}) == 0.005  # the SDK's precedence
    assert 3500 < retry_after_s({"retry-after": _http_date_in(3600)}) <= 3600


def test_a_server_that_never_answers_fails_within_the_bound(api, tmp_path):
    api.script.extend([{"hang_s": 3}] * 3)
    teacher = _teacher(api, tmp_path, timeout_s=0.3, max_retries=1)
    start = time.monotonic()
    _fails(teacher, "api_timeout")
    assert time.monotonic() - start < call_deadline_s(1, 0.3, 0.2)
    assert len(api.calls()) == 2 and teacher.paid_requests == 0
    assert teacher.budget.reserved_usd == 0 and teacher.budget.spent_usd == 0


def test_a_trickled_body_is_cut_at_the_attempt_timeout_and_retried(api, tmp_path):
    api.script.append({"trickle_s": 0.1})  # ~100 chunks: over ten seconds for the whole body
    start = time.monotonic()
    reply = _generate(_teacher(api, tmp_path, timeout_s=0.5))
    assert time.monotonic() - start < 3
    assert reply.turns and len(api.calls()) == 2


# ---- transport faults and bodies that are not a Message ---------------------------------------
@pytest.mark.parametrize("fault", [{"drop": True}, {"truncate": 40}], ids=["closed", "truncated"])
def test_a_connection_closed_early_is_retried_then_counted(api, tmp_path, fault):
    api.script.extend([fault] * 3)
    teacher = _teacher(api, tmp_path)
    _fails(teacher, "api_connection")
    assert len(api.calls()) == 3 and len(teacher.cache) == 0 and teacher.budget.reserved_usd == 0


@pytest.mark.parametrize(
    "behaviour",
    [
        {"raw": b""},
        {"raw": b'{"type": "message", "content": [{"type": "te'},
        {"raw": b"<html>ok</html>", "content_type": "text/html"},
        {"raw": b"[1, 2]"},
        {"omit": ["content"]},
        {"content": "just a string"},
        {"content": ["a string block", 3]},
        {"message": {"type": "error"}},
        {"raw": b"[" * 100_000 + b"]" * 100_000},
    ],
    ids=[
        "empty",
        "truncated-json",
        "html",
        "json-list",
        "no-content",
        "content-str",
        "blocks-not-objects",
        "type",
        "nested-too-deep",
    ],
)
def test_a_200_that_is_not_a_message_is_a_counted_failure_charged_its_worst_case(api, tmp_path, behaviour):
    api.script.append(behaviour)
    teacher = _teacher(api, tmp_path)
    _fails(teacher, "api_bad_response")
    # a 200 was billed: counted as paid and charged its worst case, but never stored to replay
    worst = teacher.worst_case_usd(teacher.body(REQUEST))
    assert len(teacher.cache) == 0 and teacher.paid_requests == 1
    assert teacher.budget.spent_usd == pytest.approx(worst) and teacher.budget.reserved_usd == 0


# ---- status codes ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 413])
def test_client_errors_are_not_retried(api, tmp_path, status):
    api.script.append({"status": status})
    _fails(_teacher(api, tmp_path), f"api_status_{status}")
    assert len(api.calls()) == 1


@pytest.mark.parametrize("status", [408, 409, 429, 529])
def test_retryable_statuses_are_retried(api, tmp_path, status):
    api.script.append({"status": status})
    assert _generate(_teacher(api, tmp_path)).turns
    assert [c["status"] for c in api.calls()] == [status, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_beyond_the_retry_cap_stop_there(api, tmp_path, status):
    api.script.extend([{"status": status, "error_body": b"<html>upstream down</html>"}] * 10)
    _fails(_teacher(api, tmp_path, max_retries=2), f"api_status_{status}")
    assert len(api.calls()) == 3


@pytest.mark.parametrize("status", [401, 402, 403])
def test_a_refused_client_is_fatal_and_the_error_never_shows_the_key(api, tmp_path, status, caplog):
    caplog.set_level(logging.DEBUG)
    echo = f'{{"type": "error", "error": {{"type": "x", "message": "bad key {KEY}"}}}}'.encode()
    api.script.append({"status": status, "error_body": echo, "headers": {"content-type": "application/json"}})
    with pytest.raises(ApiFatalError) as err:
        _generate(_teacher(api, tmp_path))
    assert err.value.reason == f"api_status_{status}" and "bad key [redacted]" in str(err.value)
    assert err.value.__suppress_context__  # a traceback does not print the SDK error and its body
    assert KEY not in str(err.value) and KEY not in caplog.text
    assert len(api.calls()) == 1


# ---- replies that are not finished data -------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ({"stop_reason": None}, "unexpected_stop"),
        ({"omit": ["stop_reason"]}, "unexpected_stop"),
        ({"stop_reason": "something_new"}, "unexpected_stop"),
        ({"stop_reason": "pause_turn"}, "pause_turn"),
        ({"stop_reason": "model_context_window_exceeded"}, "context_window"),
        ({"content": [_tool("not an object")]}, "malformed_reply"),
        ({"content": [_tool({"turns": []})]}, "malformed_reply"),
        ({"content": [_tool({"turns": [{"question": 1, "answer": ["x"]}]})]}, "malformed_reply"),
        ({"content": [_tool({"turns": [{"question": "Only a question?"}]})]}, "malformed_reply"),
        ({"content": [_tool({"answers": ["x"]})]}, "malformed_reply"),
        ({"content": [_tool(GOOD_TURNS), _tool(GOOD_TURNS)]}, "malformed_reply"),
        (
            {"content": [{"type": "text", "text": "I would rather not."}], "stop_reason": "end_turn"},
            "unparseable",
        ),
        ({"content": [_tool(GOOD_TURNS, name="other_tool")]}, "empty_reply"),
    ],
)
def test_replies_that_are_not_data_are_counted_paid_once_and_replayed(api, tmp_path, behaviour, reason):
    api.script.append(behaviour)
    teacher = _teacher(api, tmp_path)
    _fails(teacher, reason)
    assert teacher.paid_requests == 1 and len(teacher.cache) == 1
    again = _fails(_teacher(api, tmp_path), reason)  # the rerun replays the stored reply
    assert again.cached and len(api.calls()) == 1


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "redacted_thinking", "data": "xx"}, _tool({**GOOD_TURNS, "note": "extra key"})],
        [{"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}}, _tool(GOOD_TURNS)],
        [{"type": "something_new", "payload": [1, 2]}, _tool(GOOD_TURNS)],
    ],
    ids=["redacted-thinking", "server-tool-use", "unknown-block"],
)
def test_unknown_blocks_and_extra_keys_are_ignored(api, tmp_path, content):
    extra = {"container": {"id": "c1"}, "something_new": [1, {"x": None}]}  # unknown top-level fields
    api.script.append({"content": content, "stop_reason": "stop_sequence", "message": extra})
    assert _generate(_teacher(api, tmp_path)).turns == [("What vehicle is this?", "A red bus.")]


# ---- usage ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "behaviour",
    [
        {"omit": ["usage"]},
        {"message": {"usage": None}},
        {"message": {"usage": [1, 2]}},
        {"message": {"usage": {"input_tokens": "many", "output_tokens": 5}}},
        {"message": {"usage": {"input_tokens": 10, "output_tokens": None}}},
        {"message": {"usage": {"input_tokens": -10_000_000, "output_tokens": 5}}},
    ],
    ids=["missing", "null", "list", "string", "null-field", "negative"],
)
def test_a_reply_without_usable_usage_is_charged_its_worst_case(api, tmp_path, behaviour):
    api.script.append(behaviour)
    teacher = _teacher(api, tmp_path)
    reply = _generate(teacher)
    assert reply.turns and teacher.paid_requests == 1
    worst = teacher.worst_case_usd(teacher.body(REQUEST))
    assert teacher.budget.spent_usd == pytest.approx(worst) and worst > 0
    assert teacher.budget.reserved_usd == 0
    replay = _teacher(api, tmp_path)
    assert _generate(replay).cached and replay.budget.spent_usd == 0  # replays without crashing


def test_key_is_in_no_request_log_entry_or_stored_reply(api, tmp_path):
    api.script.extend([{"status": 529, "headers": {"retry-after": "999"}}, {"omit": ["usage"]}])
    _generate(_teacher(api, tmp_path))
    assert all(KEY not in json.dumps(e) for e in api.log)
    assert all(KEY.encode() not in p.read_bytes() for p in tmp_path.iterdir())


@pytest.mark.parametrize("key", [KEY, "gateway-key-without-the-usual-prefix-77"])
def test_a_key_echoed_in_response_headers_is_redacted_from_debug_logs(api, tmp_path, caplog, key):
    caplog.set_level(logging.DEBUG)
    api.script.append({"status": 529, "headers": {"x-echo": key, "retry-after-ms": "1"}})
    teacher = ClaudeTeacher(
        "claude-test",
        max_retries=1,
        prices=TEST_PRICES,
        cache=RequestCache(tmp_path / "requests.sqlite"),
        client_kwargs={"api_key": key, "base_url": api.url},
    )
    assert _generate(teacher).turns
    assert "x-echo" in caplog.text and "[redacted]" in caplog.text  # the SDK logged the headers
    assert key not in caplog.text
