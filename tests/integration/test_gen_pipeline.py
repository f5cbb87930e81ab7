"""The generation run end to end against a local Messages / Batches server: resume, budget, batches, keys."""

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from api_helpers import kill_at_request, pipeline_settings
from llava_lite.cli.generate import config_dir
from llava_lite.cli.generate import run as cli_run
from llava_lite.data.schema import normalize_conversation
from llava_lite.data.sources import iter_file
from llava_lite.generation.pipeline import GenerationPipeline, _lock_output_dir
from llava_lite.io import read_jsonl

KEY = "sk-ant-test-NEVER-WRITE-ME-41c2"
N_IMAGES = 4
N_JOBS = 3 * N_IMAGES


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    images = [
        {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, N_IMAGES + 1)
    ]
    things = ["dog", "kite", "bench", "boat"]
    captions = {
        "images": images,
        "annotations": [
            {"id": 10 * i + j, "image_id": i, "caption": f"A {things[i - 1]} in a park, seen from angle {j}."}
            for i in range(1, N_IMAGES + 1)
            for j in range(3)
        ],
    }
    instances = {
        "images": images,
        "categories": [{"id": k + 1, "name": t} for k, t in enumerate(things)],
        "annotations": [
            {"id": 100 + i, "image_id": i, "category_id": i, "bbox": [64, 48, 320, 240]}
            for i in range(1, N_IMAGES + 1)
        ],
    }
    cap, inst = tmp_path / "captions_train.json", tmp_path / "instances_train.json"
    cap.write_text(json.dumps(captions))
    inst.write_text(json.dumps(instances))
    return cap, inst


def _settings(tmp_path: Path, **overrides):
    cap, inst = _coco(tmp_path)
    teacher = {"model": "claude-test", "max_retries": 1, "concurrency": 2}
    return pipeline_settings(cap, inst, tmp_path / "out", teacher, **overrides)


def _run(api, settings):
    return GenerationPipeline(settings, api_key=KEY, base_url=api.url).run()


def _output(tmp_path: Path) -> list[dict]:
    return list(read_jsonl(tmp_path / "out" / "instruct.jsonl"))


def _assert_complete_once(tmp_path: Path) -> None:
    ids = [r["id"] for r in _output(tmp_path)]
    assert len(ids) == len(set(ids)) == N_JOBS


def _assert_no_successful_request_repeated(api) -> None:
    bodies = [json.dumps(c["body"], sort_keys=True) for c in api.calls(status=200)]
    assert len(bodies) == len(set(bodies))


def test_run_writes_llava_records_with_provenance_and_a_summary(api, tmp_path):
    summary = _run(api, _settings(tmp_path))
    assert dict(summary.samples) == {"conversation": 4, "detail": 4, "complex_reasoning": 4}
    assert summary.paid_requests == N_JOBS and summary.cost_usd > 0
    assert summary.usage.cache_read_input_tokens > 0  # prompt caching of the shared prefix
    records = _output(tmp_path)
    first = records[0]
    assert set(first) >= {
        "id",
        "image",
        "conversations",
        "response_type",
        "teacher",
        "model",
        "prompt_version",
    }
    assert (
        first["teacher"] == "anthropic"
        and first["model"] == "claude-test"
        and first["prompt_version"] == "v1"
    )
    assert first["conversations"][0]["value"].startswith("<image>\n")
    assert json.loads((tmp_path / "out" / "instruct.json").read_text()) == records
    for path in ("instruct.jsonl", "instruct.json"):  # what the data module reads
        raw = list(iter_file(str(tmp_path / "out" / path)))
        assert len(raw) == N_JOBS and all(r.error is None for r in raw)
        for r in raw:
            normalize_conversation(r.record["conversations"], has_image=r.has_image)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["samples_total"] == N_JOBS and saved["usage"]["output_tokens"] > 0


def test_failures_are_counted_and_the_run_continues(api, tmp_path):
    api.script.extend([{"status": 500}, {"status": 500}, {"stop_reason": "refusal"}, {"raw": b"not json"}])
    settings = _settings(tmp_path, max_attempts=1, teacher={"concurrency": 1, "max_retries": 1})
    summary = _run(api, settings)
    assert dict(summary.teacher_errors) == {"api_status_500": 1, "refusal": 1, "api_bad_response": 1}
    assert summary.failed_jobs == 3
    assert sum(summary.samples.values()) == N_JOBS - 3 == len(_output(tmp_path))


def test_images_and_types_without_usable_context_are_skipped_and_counted(api, tmp_path):
    settings = _settings(tmp_path)
    cap = Path(settings.captions_file)
    captions = json.loads(cap.read_text())
    captions["annotations"] = [
        a for a in captions["annotations"] if a["image_id"] != 1
    ]  # image 1: boxes only
    captions["images"].append(
        {"id": 99, "file_name": "bare.jpg", "width": 10, "height": 10}
    )  # nothing at all
    cap.write_text(json.dumps(captions))
    summary = _run(api, settings)
    assert dict(summary.skipped_images) == {"no_annotations": 1}
    assert dict(summary.skipped_jobs) == {"empty_context": 1}  # image 1's conversation: captions only
    assert sum(summary.samples.values()) == N_JOBS - 1 == len(api.calls(status=200))


def test_rejected_reply_is_retried_as_a_new_request(api, tmp_path):
    leak = {"turns": [{"question": "What does the caption say?", "answer": "A dog."}]}
    api.script.append({"content": [{"type": "tool_use", "id": "t", "name": "record_turns", "input": leak}]})
    summary = _run(api, _settings(tmp_path, response_types=["conversation"], teacher={"concurrency": 1}))
    assert dict(summary.rejects) == {"source_leak": 1}
    assert summary.samples["conversation"] == N_IMAGES and summary.paid_requests == N_IMAGES + 1


def test_budget_cap_stops_cleanly_and_a_rerun_finishes(api, tmp_path):
    settings = _settings(tmp_path, budget_usd=0.02, teacher={"max_tokens": 64})
    summary = _run(api, settings)
    assert summary.stopped == "budget"
    done = len(_output(tmp_path))
    assert 0 < done < N_JOBS and summary.cost_usd <= 0.02
    assert summary.unfinished_jobs == N_JOBS - done
    summary = _run(api, _settings(tmp_path, teacher={"max_tokens": 64}))
    assert summary.already_done == done and summary.stopped is None
    _assert_complete_once(tmp_path)
    _assert_no_successful_request_repeated(api)


_CHILD = textwrap.dedent(
    """
    import sys
    from llava_lite.generation.pipeline import GenerationPipeline, _lock_output_dir
    from llava_lite.generation.settings import settings_from
    cap, inst, out, url, key = sys.argv[1:]
    settings = settings_from({"captions_file": cap, "instances_file": inst, "output_dir": out, "budget_usd": None,
                              "teacher": {"model": "claude-test", "concurrency": 1, "max_retries": 0,
                                          "prices": {"input": 3.0, "output": 15.0}}})
    GenerationPipeline(settings, api_key=key, base_url=url).run()
    """
)


def test_killed_run_resumes_with_every_sample_once_and_no_paid_request_repeated(api, tmp_path):
    cap, inst = _coco(tmp_path)
    api.script.extend([{}, {}, {}, {}, {}, {"hang_s": 20}])  # the 6th request never answers
    kill_at_request(
        api, [sys.executable, "-c", _CHILD, str(cap), str(inst), str(tmp_path / "out"), api.url, KEY], 6, 60
    )
    before = len(_output(tmp_path))
    assert before == 5
    with open(tmp_path / "out" / "instruct.jsonl", "a") as f:
        f.write('{"id": "torn')  # and as if the kill had hit a write
    api.script.clear()
    summary = _run(api, _settings(tmp_path))
    assert summary.already_done == before
    _assert_complete_once(tmp_path)
    _assert_no_successful_request_repeated(api)
    assert len(api.calls(status=200)) == N_JOBS


def test_key_never_in_logs_outputs_or_cache(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    api.script.extend([{"status": 429}, {"stop_reason": "max_tokens"}])
    _run(api, _settings(tmp_path))
    assert caplog.records and KEY not in caplog.text
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"instruct.jsonl", "instruct.json", "requests.sqlite", "summary.json"}
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


def test_batch_mode_requeues_errored_and_expired_items(api, tmp_path):
    api.batch_item_script.extend(["succeeded", "errored", "succeeded", "expired"])
    settings = _settings(tmp_path, batch={"enabled": True})
    summary = _run(api, settings)
    _assert_complete_once(tmp_path)
    assert summary.batch["batches"] == 2 and summary.batch["submitted"] == N_JOBS + 2
    assert summary.batch["unfinished"] == {"errored": 1, "expired": 1}
    assert api.calls("/v1/messages") == []  # nothing bought at full price
    # what was bought is said: every reply in batches, none one by one, none from earlier runs
    assert summary.paid_requests == 0 and summary.bought_in_batches == N_JOBS and summary.cache_hits == 0
    full_price = settings.teacher.prices.cost(summary.usage)
    assert (
        summary.cost_usd == pytest.approx(full_price * (1 - settings.teacher.prices.batch_discount))
        and full_price > 0
    )


def test_batch_mode_resumes_an_open_batch_instead_of_resubmitting(api, tmp_path):
    api.batch_polls_before_end = 10_000
    settings = _settings(tmp_path, batch={"enabled": True, "max_wait_s": 0.2, "poll_interval_s": 0.02})
    with pytest.raises(TimeoutError, match="still in_progress"):
        _run(api, settings)
    assert _output(tmp_path) == [] and len(api.calls("/v1/messages/batches")) == 1
    api.batch_polls_before_end = 0
    _run(api, _settings(tmp_path, batch={"enabled": True}))
    _assert_complete_once(tmp_path)
    assert len(api.calls("/v1/messages/batches")) == 1  # collected, not resubmitted


def test_two_runs_cannot_share_an_output_folder(api, tmp_path):
    settings = _settings(tmp_path)
    Path(settings.output_dir).mkdir(parents=True)
    held = _lock_output_dir(Path(settings.output_dir))
    try:
        with pytest.raises(RuntimeError, match="in use by another generation run"):
            _run(api, settings)
    finally:
        os.close(held)
    assert api.log == []


def test_dry_run_estimates_without_any_request(api, tmp_path):
    summary = _run(api, _settings(tmp_path, dry_run=True))
    est = summary.estimate
    assert est["requests"] == N_JOBS and 0 < est["expected_usd"] < est["worst_case_usd"]
    assert est["expected_usage"]["cache_read_input_tokens"] > 0
    assert set(est["prefix_tokens"]) == {"conversation", "detail", "complex_reasoning"}
    assert min(est["prefix_tokens"].values()) > 1024  # the shipped prompts are long enough to be cached
    assert api.log == [] and _output(tmp_path) == []


def test_cli_dry_run_needs_no_credentials(tmp_path, monkeypatch, capsys):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    cap, inst = _coco(tmp_path)
    overrides = [
        f"captions_file={cap}",
        f"instances_file={inst}",
        f"output_dir={tmp_path / 'dry'}",
        "dry_run=true",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        summary = cli_run(compose(config_name="generate", overrides=overrides))
    assert summary["estimate"]["requests"] == N_JOBS and summary["estimate"]["expected_usd"] > 0
    assert json.loads(capsys.readouterr().out)["estimate"] == summary["estimate"]  # printed as well


def test_cli_config_composes_and_runs_the_offline_teacher(tmp_path):
    from llava_lite.synthetic import build_world

    world = build_world(tmp_path / "world", n_train=4, n_val=0, n_test=0, image_size=48)
    overrides = [
        f"captions_file={world.captions('train')}",
        f"instances_file={world.instances('train')}",
        f"image_root={world.image_root}",
        f"output_dir={tmp_path / 'gen'}",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        old_form = compose(config_name="generate", overrides=[*overrides, "teacher.name=offline"])
        with pytest.raises(ValueError, match=r"teacher.name='offline'.*teacher=offline"):
            cli_run(old_form)  # the teacher is a config group now; the old form says so in one line
        assert not (tmp_path / "gen").exists()
        cfg = compose(config_name="generate", overrides=[*overrides, "teacher=offline"])
        summary = cli_run(cfg)
        assert summary["samples_total"] > 0
        records = list(read_jsonl(tmp_path / "gen" / "instruct.jsonl"))
        assert records and all(r["teacher"] == "offline" for r in records)
        bad = compose(config_name="generate", overrides=[*overrides, "teacher=offline", "+no_such_key=1"])
    with pytest.raises(Exception, match="no_such_key"):
        cli_run(bad)
