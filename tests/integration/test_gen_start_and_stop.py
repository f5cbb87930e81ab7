"""How a generation run starts and stops against the local API stand-in: the model's lifecycle
and prices are checked before anything is paid or written, a failed start leaves the run
folder as it was, the budget waits for requests in flight, an unreachable API stops at once,
and jobs whose stored attempts failed are listed and can be retried."""

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from api_helpers import pipeline_settings, write_coco
from llava_lite.claude.client import ApiFatalError
from llava_lite.cli.generate import config_dir
from llava_lite.cli.generate import run as cli_run
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.io import read_jsonl

KEY = "sk-ant-test-START-STOP-77e1"
N_IMAGES = 4
N_JOBS = 3 * N_IMAGES


def _settings(tmp_path: Path, teacher=None, **overrides):
    cap, inst = write_coco(tmp_path, N_IMAGES)
    base = {"model": "claude-test", "max_retries": 0, "concurrency": 2, **(teacher or {})}
    return pipeline_settings(cap, inst, tmp_path / "out", base, **overrides)


def _run(url: str, settings):
    return GenerationPipeline(settings, api_key=KEY, base_url=url).run()


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---- the model's lifecycle, before any paid work -----------------------------------------------
def test_a_retired_model_is_refused_before_any_request_is_paid(api, tmp_path):
    api.models["claude-test"] = {"lifecycle": "retired", "retires_at": "2026-11-30T00:00:00Z"}
    with pytest.raises(ApiFatalError, match=r"model_retired: model='claude-test' was retired on 2026-11-30"):
        _run(api.url, _settings(tmp_path))
    assert [c["path"] for c in api.log] == [
        "/v1/models/claude-test",
        "/v1/models",
    ]  # asked, listed, nothing sent
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_refused_in_one_line(api, tmp_path):
    api.known_models_only = True
    with pytest.raises(ApiFatalError) as err:
        _run(api.url, _settings(tmp_path))
    assert err.value.reason == "model_unknown" and "\n" not in str(err.value)
    assert "not known to the Models API" in str(err.value) and api.calls() == []


@pytest.mark.parametrize(
    ("asked", "listed", "suggested"),
    [
        ("claude-sonet-4-6", ["claude-haiku-4-5", "claude-sonnet-4-6"], "claude-sonnet-4-6"),  # a typo's fix
        (
            "claude-sonnet-4-6",
            ["claude-haiku-4-5", "claude-opus-4-6"],
            "claude-opus-4-6",
        ),  # never the same id
        ("claude-test", ["claude-test-old"], "claude-test-old"),
        ("claude-sonnet-4-6", [], None),  # nothing to suggest: says so
    ],
)
def test_an_unknown_model_suggests_another_model_the_api_lists(api, tmp_path, asked, listed, suggested):
    api.known_models_only = True
    api.models = {model_id: {} for model_id in listed}
    with pytest.raises(ApiFatalError) as err:
        _run(api.url, _settings(tmp_path, teacher={"model": asked}))
    message = str(err.value)
    assert err.value.reason == "model_unknown" and "\n" not in message and api.calls() == []
    if suggested is None:
        assert "lists no other model" in message and "try" not in message
    else:
        assert message.endswith(f"; try {suggested!r}"), message
        assert suggested != asked


def test_a_retired_model_never_suggests_itself(api, tmp_path):
    api.models = {"claude-sonnet-4-6": {"lifecycle": "retired"}, "claude-opus-4-6": {}}
    with pytest.raises(ApiFatalError, match=r"retired; choose a current model, e.g. 'claude-opus-4-6'$"):
        _run(api.url, _settings(tmp_path, teacher={"model": "claude-sonnet-4-6"}))


def test_a_deprecated_model_runs_with_a_warning_naming_its_date(api, tmp_path, caplog):
    api.models["claude-test"] = {"lifecycle": "deprecated", "retires_at": "2027-01-22T00:00:00Z"}
    with caplog.at_level(logging.WARNING):
        summary = _run(api.url, _settings(tmp_path))
    assert sum(summary.samples.values()) == N_JOBS
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warned == [
        "model 'claude-test' is deprecated and retires on 2027-01-22; plan to move to a current model"
    ]


def test_an_active_model_is_checked_once_before_the_first_message(api, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _run(api.url, _settings(tmp_path))
    paths = [c["path"] for c in api.log]
    assert paths[0] == "/v1/models/claude-test" and paths.count("/v1/models/claude-test") == 1
    assert not any("deprecated" in r.getMessage() for r in caplog.records)


def test_a_dry_run_asks_nothing(api, tmp_path):
    _run(api.url, _settings(tmp_path, dry_run=True))
    assert api.log == []


# ---- a failed start changes nothing ------------------------------------------------------------
def test_a_failed_start_leaves_a_finished_run_folder_as_it_was(api, tmp_path):
    settings = _settings(tmp_path)
    _run(api.url, settings)
    out = tmp_path / "out"
    before = _snapshot(out)
    assert {"summary.json", "requests.sqlite", "instruct.jsonl"} <= set(before)
    api.models["claude-test"] = {"lifecycle": "retired"}
    starts = [
        (_settings(tmp_path, captions_file=str(tmp_path / "missing.json")), FileNotFoundError),
        (_settings(tmp_path), ApiFatalError),  # retired
        (_settings(tmp_path, teacher={"model": "claude-unpriced", "prices": None}), ValueError),
        (_settings(tmp_path, teacher={"_target_": "llava_lite.no_such_module.Teacher"}), ValueError),
    ]
    for bad, error in starts:
        with pytest.raises(error):
            _run(api.url, bad)
        assert _snapshot(out) == before, bad
    assert not (out / ".lock").exists()


def test_a_dry_run_changes_nothing_in_a_run_folder(api, tmp_path):
    settings = _settings(tmp_path, max_images=N_IMAGES - 1)
    _run(api.url, settings)
    out = tmp_path / "out"
    with open(out / "instruct.jsonl", "ab") as f:
        f.write(b'{"id": "torn')  # a killed run's partial last line: a dry run must not cut it
    before = _snapshot(out)
    n_logged = len(api.log)
    summary = _run(api.url, _settings(tmp_path, dry_run=True))
    assert summary.estimate["requests"] == 3  # only the image left out above is pending
    assert _snapshot(out) == before and len(api.log) == n_logged


def test_a_dry_run_creates_no_run_folder(api, tmp_path):
    summary = _run(api.url, _settings(tmp_path, dry_run=True))
    assert summary.estimate["requests"] == N_JOBS and not (tmp_path / "out").exists()


# ---- the budget waits for requests in flight ---------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 8])
def test_the_budget_waits_for_requests_in_flight_instead_of_stopping(api, tmp_path, concurrency):
    # Each request reserves ~$0.02 (1024 output tokens) but costs ~$0.003: a cap of 3 worst cases
    # stopped the run after ~3 samples at concurrency 8 while all 12 fit.
    settings = _settings(tmp_path, teacher={"concurrency": concurrency}, budget_usd=0.065)
    summary = _run(api.url, settings)
    assert summary.stopped is None and sum(summary.samples.values()) == N_JOBS
    assert 0 < summary.cost_usd <= 0.065


def test_the_budget_still_stops_when_the_next_request_cannot_fit(api, tmp_path):
    summary = _run(api.url, _settings(tmp_path, teacher={"concurrency": 8}, budget_usd=0.03))
    done = len(list(read_jsonl(tmp_path / "out" / "instruct.jsonl")))
    assert summary.stopped == "budget" and 0 < done < N_JOBS and summary.cost_usd <= 0.03


# ---- an API that cannot be reached -------------------------------------------------------------
def test_an_unreachable_api_stops_at_once_with_a_clear_error(tmp_path):
    url = _closed_port_url()
    start = time.monotonic()
    with pytest.raises(ApiFatalError, match="api_unreachable: cannot reach the API at"):
        _run(url, _settings(tmp_path, teacher={"max_retries": 1}))
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()


def test_requests_that_keep_failing_to_connect_stop_the_run(api, tmp_path):
    api.script.extend({"drop": True} for _ in range(50))
    with pytest.raises(ApiFatalError, match="3 requests in a row could not connect"):
        _run(api.url, _settings(tmp_path, teacher={"concurrency": 1}))
    assert len(api.calls()) == 3  # then nothing more was sent
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"] == "api_unreachable"


def test_the_cli_exits_non_zero_with_one_error_line_when_nothing_listens(tmp_path):
    cap, inst = write_coco(tmp_path, 1)
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    env.pop("LLAVA_LITE_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, "-m", "llava_lite.cli.generate", f"captions_file={cap}", f"instances_file={inst}",
         f"output_dir={tmp_path / 'out'}", f"teacher.base_url={_closed_port_url()}", "teacher.max_retries=0"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "api_unreachable" in errors[0] and "Traceback" not in done.stderr


# ---- stored failures -----------------------------------------------------------------------------
REFUSAL = {"stop_reason": "refusal", "content": [{"type": "text", "text": "I can't help with that."}]}


def test_stored_failures_are_listed_replayed_free_and_retried_on_request(api, tmp_path):
    one = {"response_types": ["conversation"], "max_images": 1, "teacher": {"concurrency": 1}}
    api.script.extend([REFUSAL, REFUSAL])
    first = _run(api.url, _settings(tmp_path, **one))
    assert first.failed_samples == {"1_conversation_0": "refusal"} and first.paid_requests == 2
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["failed_samples"] == {"1_conversation_0": "refusal"}

    again = _run(api.url, _settings(tmp_path, **one))  # replays both refusals for free
    assert again.failed_samples == {"1_conversation_0": "refusal"} and again.paid_requests == 0

    retried = _run(api.url, _settings(tmp_path, retry_stored_failures=True, **one))
    assert retried.failed_samples == {} and retried.paid_requests == 1 and retried.cache_hits == 2
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "instruct.jsonl")] == ["1_conversation_0"]


def test_a_retry_after_a_cut_reply_asks_for_more_tokens(api, tmp_path):
    api.script.append({"stop_reason": "max_tokens"})
    settings = _settings(
        tmp_path,
        teacher={"concurrency": 1, "max_tokens": 300, "max_tokens_after_cut": 500},
        response_types=["conversation"],
        max_images=1,
        max_attempts=3,
    )
    api.script.append({"stop_reason": "max_tokens"})
    summary = _run(api.url, settings)
    assert summary.teacher_errors["max_tokens"] == 2 and sum(summary.samples.values()) == 1
    assert [c["body"]["max_tokens"] for c in api.calls()] == [300, 500, 500]  # doubled, capped


def test_the_cli_says_how_to_retry_failed_samples(api, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    cap, inst = write_coco(tmp_path, 1)
    api.script.extend([REFUSAL, REFUSAL])
    overrides = [
        f"captions_file={cap}",
        f"instances_file={inst}",
        f"output_dir={tmp_path / 'out'}",
        f"teacher.base_url={api.url}",
        "teacher.model=claude-test",
        "teacher.prices={input:3.0,output:15.0}",
        "teacher.concurrency=1",
        "response_types=[conversation]",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        summary = cli_run(compose(config_name="generate", overrides=overrides))
    assert summary["failed_samples"] == {"1_conversation_0": "refusal"}
    assert "1 samples failed every attempt" in caplog.text and "retry_stored_failures=true" in caplog.text


def test_a_failed_cli_start_leaves_a_finished_run_folder_as_it_was(api, tmp_path):
    cap, inst = write_coco(tmp_path, 1)
    args = [f"captions_file={cap}", f"instances_file={inst}", f"output_dir={tmp_path / 'out'}",
            f"teacher.base_url={api.url}", "teacher.model=claude-test", "teacher.prices={input:3.0,output:15.0}"]  # fmt: skip
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    env.pop("LLAVA_LITE_TRACEBACK", None)
    command = [sys.executable, "-m", "llava_lite.cli.generate", *args]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    before = _snapshot(tmp_path / "out")
    api.models["claude-test"] = {"lifecycle": "retired"}
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert failed.returncode == 1 and "model_retired" in failed.stderr
    assert _snapshot(tmp_path / "out") == before  # Hydra writes nothing there either
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "captions_train.json",
        "instances_train.json",
        "out",
    ]
