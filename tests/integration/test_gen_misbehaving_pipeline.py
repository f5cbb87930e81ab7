"""The generation run against a misbehaving Messages / Batches server: nothing lost, nothing
duplicated, nothing paid twice, every failure counted, a refused client stops cleanly."""

import asyncio
import json
import random
from pathlib import Path

import pytest

from api_helpers import pipeline_settings, write_coco
from fakes.anthropic_api import FakeAnthropicAPI
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError
from llava_lite.generation.base import TeacherReply
from llava_lite.generation.batches import BatchError
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.io import read_jsonl

KEY = "sk-ant-test-PIPELINE-MISBEHAVE-5d1a"
TYPES = 3


def _settings(tmp_path: Path, n_images: int, **overrides):
    cap, inst = write_coco(tmp_path, n_images)
    teacher = {
        "model": "claude-test",
        "max_retries": 1,
        "concurrency": 4,
        "timeout_s": 0.5,
        "max_retry_wait_s": 0.05,
    }
    return pipeline_settings(cap, inst, tmp_path / "out", teacher, **overrides)


def _pipeline(api, settings):
    return GenerationPipeline(settings, api_key=KEY, base_url=api.url)


def _ids(tmp_path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(tmp_path / "out" / "instruct.jsonl")]


def _stored_replies(tmp_path: Path) -> int:
    cache = RequestCache(tmp_path / "out" / "requests.sqlite")
    try:
        return len(cache)
    finally:
        cache.close()


def test_random_failures_under_concurrency_lose_nothing_and_pay_nothing_twice(api, tmp_path):
    n_jobs = 10 * TYPES
    behaviours = [
        {"status": 500},
        {"status": 529, "headers": {"retry-after": "3600"}},
        {"status": 400},
        {"drop": True},
        {"hang_s": 1.0},
        {"raw": b"<html>maintenance</html>", "content_type": "text/html"},
        {"stop_reason": None},
        {"stop_reason": "refusal"},
        {"content": [{"type": "tool_use", "id": "t", "name": "record_turns", "input": "x"}]},
        {"omit": ["usage"]},
        {"delay_s": 0.2},
    ]
    rng = random.Random(0)
    api.script.extend(rng.choice([*behaviours, {}, {}, {}]) for _ in range(80))
    first = _pipeline(api, _settings(tmp_path, 10)).run()
    ids = _ids(tmp_path)
    assert len(ids) == len(set(ids)) == sum(first.samples.values())
    assert len(ids) + first.failed_jobs + first.unfinished_jobs == n_jobs
    assert first.failed_jobs > 0 and sum(first.teacher_errors.values()) > 0
    unreadable = first.teacher_errors["api_bad_response"]  # billed 200s (html): paid, never stored
    assert first.paid_requests == _stored_replies(tmp_path) + unreadable

    api.script.clear()
    second = _pipeline(api, _settings(tmp_path, 10, max_attempts=4)).run()
    ids = _ids(tmp_path)
    assert len(ids) == len(set(ids)) == n_jobs and second.already_done == len(ids) - sum(
        second.samples.values()
    )
    # every paid reply is stored under its own request key: none was bought twice
    assert first.paid_requests + second.paid_requests == _stored_replies(tmp_path) + unreadable


def test_a_refused_client_stops_new_requests_and_keeps_those_in_flight(api, tmp_path):
    n_jobs = 4 * TYPES
    api.script.extend([{"delay_s": 0.5}, {"delay_s": 0.5}, {"status": 401}])
    settings = _settings(tmp_path, 4, teacher={"concurrency": 3, "timeout_s": 5.0})
    with pytest.raises(ApiFatalError, match="api_status_401"):
        _pipeline(api, settings).run()
    assert len(_ids(tmp_path)) == 2  # the two slow replies in flight were written, not lost
    assert len(api.calls()) == 3  # nothing was sent after the 401
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"] == "api_status_401" and summary["unfinished_jobs"] == n_jobs - 2
    assert summary["paid_requests"] == 2 == _stored_replies(tmp_path)

    final = _pipeline(api, _settings(tmp_path, 4)).run()
    ids = _ids(tmp_path)
    assert len(ids) == len(set(ids)) == n_jobs and final.already_done == 2
    assert final.paid_requests == n_jobs - 2 and _stored_replies(tmp_path) == n_jobs


def test_batch_results_that_do_not_check_out_are_skipped_counted_and_requeued(api, tmp_path):
    n_jobs = 4 * TYPES
    api.batch_item_script.extend(["missing", "duplicate", "malformed", "errored", "canceled"])
    unknown = {
        "custom_id": "f" * 64,
        "result": {"type": "succeeded", "message": {"type": "message", "content": []}},
    }
    api.batch_extra_lines = [b'{"custom_id": "tor', json.dumps(unknown).encode()]
    summary = _pipeline(api, _settings(tmp_path, 4, batch={"enabled": True})).run()
    ids = _ids(tmp_path)
    assert len(ids) == len(set(ids)) == n_jobs
    assert summary.batch["skipped_results"] == {"malformed_line": 1, "unknown_id": 1, "duplicate": 1}
    assert summary.batch["unfinished"] == {"missing": 1, "malformed_result": 1, "errored": 1, "canceled": 1}
    assert summary.batch["batches"] == 2 and summary.batch["submitted"] == n_jobs + 4
    assert summary.batch["succeeded"] == n_jobs and api.calls("/v1/messages") == []
    assert _stored_replies(tmp_path) == n_jobs  # nothing stored for an unknown id or a bad result


def test_a_batch_ended_without_results_url_stays_open_for_the_rerun(api, tmp_path):
    api.batch_results_url = False
    settings = _settings(tmp_path, 2, batch={"enabled": True})
    with pytest.raises(BatchError, match="without a results_url"):
        _pipeline(api, settings).run()
    api.batch_results_url = True
    _pipeline(api, settings).run()
    assert len(set(_ids(tmp_path))) == len(_ids(tmp_path)) == 2 * TYPES
    assert len(api.calls("/v1/messages/batches")) == 1  # collected, never resubmitted


def test_a_batch_stuck_in_an_unexpected_status_is_bounded_by_max_wait(api, tmp_path):
    api.batch_status = "canceling"
    settings = _settings(tmp_path, 2, batch={"enabled": True, "max_wait_s": 0.2, "poll_interval_s": 0.02})
    with pytest.raises(TimeoutError, match="still canceling"):
        _pipeline(api, settings).run()
    assert _ids(tmp_path) == []


@pytest.mark.parametrize("status", [401, 500])
def test_batch_api_errors_stop_with_a_clear_error_without_the_key(api, tmp_path, status):
    api.batch_error = status
    with pytest.raises(BatchError, match=f"HTTP {status}") as err:
        _pipeline(api, _settings(tmp_path, 2, batch={"enabled": True})).run()
    assert KEY not in str(err.value) and err.value.__suppress_context__
    assert _ids(tmp_path) == []


@pytest.mark.parametrize("fault", [{"drop": True}, {"delay_s": 1.0}], ids=["lost", "late"])
def test_a_lost_batch_creation_is_not_resubmitted_so_never_paid_twice(api, tmp_path, fault):
    api.batch_create_script.append(fault)  # the server creates the batch; its reply is lost or too late
    settings = _settings(tmp_path, 2, batch={"enabled": True})
    with pytest.raises(BatchError, match="may have been processed"):
        _pipeline(api, settings).run()
    assert len(api.batches) == 1 and len(api.calls("/v1/messages/batches")) == 1


@pytest.mark.parametrize("status", [429, 529])
def test_batch_creation_refused_by_the_server_is_retried(api, tmp_path, status):
    api.batch_create_script.append({"status": status})
    _pipeline(api, _settings(tmp_path, 2, batch={"enabled": True})).run()
    assert len(_ids(tmp_path)) == 2 * TYPES and len(api.batches) == 1
    assert [c["status"] for c in api.calls("/v1/messages/batches")] == [status, 200]


def test_batch_creation_failing_with_a_server_error_is_not_retried(api, tmp_path):
    api.batch_create_script.extend([{"status": 500}] * 3)
    with pytest.raises(BatchError, match="HTTP 500"):
        _pipeline(api, _settings(tmp_path, 2, batch={"enabled": True})).run()
    assert len(api.calls("/v1/messages/batches")) == 1


class _TeacherWithABug:
    """Answers slowly; its third request raises an unexpected exception."""

    name = "buggy"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("bug in the teacher")
        await asyncio.sleep(0.3)
        return TeacherReply(turns=[("What flies over the beach?", "A kite flies over the sand.")], model="m")


def test_an_unexpected_error_stops_the_run_after_in_flight_work_is_written(tmp_path):
    settings = _settings(tmp_path, 4, teacher={"concurrency": 3})
    teacher = _TeacherWithABug()
    with pytest.raises(RuntimeError, match="bug in the teacher"):
        GenerationPipeline(settings, teacher=teacher).run()
    assert len(_ids(tmp_path)) == 2 and teacher.calls == 3  # nothing started after the error
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["samples_total"] == 2


def test_a_reply_with_invalid_unicode_is_stored_rejected_and_replayed(api, tmp_path):
    turns = {"turns": [{"question": "What is \ud800 over the beach?", "answer": "A kite."}]}
    api.script.append({"content": [{"type": "tool_use", "id": "t", "name": "record_turns", "input": turns}]})
    settings = _settings(
        tmp_path, 2, response_types=["conversation"], max_attempts=1, teacher={"concurrency": 1}
    )
    summary = _pipeline(api, settings).run()
    assert dict(summary.rejects) == {"invalid_text": 1} and summary.failed_jobs == 1
    assert len(_ids(tmp_path)) == 1 and _stored_replies(tmp_path) == 2  # the paid bad reply is stored
    again = _pipeline(api, settings).run()  # replays the stored reply instead of paying for it again
    assert again.paid_requests == 0 and dict(again.rejects) == {"invalid_text": 1}


def test_a_results_url_on_another_host_gets_no_credentials(api, tmp_path, caplog):
    with FakeAnthropicAPI() as other:
        api.batch_results_url = f"{other.url}/v1/messages/batches/msgbatch_0001/results"
        with pytest.raises(BatchError, match="not on the API host"):
            _pipeline(api, _settings(tmp_path, 2, batch={"enabled": True})).run()
        assert other.log == []  # never contacted, so never given the key
    api.batch_results_url = True
    _pipeline(api, _settings(tmp_path, 2, batch={"enabled": True})).run()  # the rerun collects it
    assert len(_ids(tmp_path)) == 2 * TYPES and len(api.calls("/v1/messages/batches")) == 1


def test_an_open_batch_the_api_no_longer_knows_is_given_up_not_retried_forever(api, tmp_path):
    settings = _settings(tmp_path, 2, batch={"enabled": True})
    (tmp_path / "out").mkdir()
    cache = RequestCache(tmp_path / "out" / "requests.sqlite")
    cache.add_batch("msgbatch_deleted", ["k1", "k2"])  # left open by an old interrupted run
    cache.close()
    summary = _pipeline(api, settings).run()
    assert summary.batch["unfinished"] == {"batch_not_found": 2}
    assert len(_ids(tmp_path)) == 2 * TYPES
    again = _pipeline(api, settings).run()
    assert again.batch.get("unfinished", {}) == {} and again.already_done == 2 * TYPES


def test_batch_results_without_usage_or_unusable_are_charged_their_worst_case(api, tmp_path):
    api.batch_item_script.extend(["no_usage", "malformed"])
    settings = _settings(tmp_path, 2, batch={"enabled": True})
    summary = _pipeline(api, settings).run()
    assert len(_ids(tmp_path)) == 2 * TYPES and summary.batch["unfinished"] == {"malformed_result": 1}
    reported = settings.teacher.prices.cost(summary.usage, batch=True)  # the results that reported usage
    assert summary.cost_usd > reported + 0.001  # plus two worst cases (~$0.008 each at max_tokens)
