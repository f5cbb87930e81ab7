"""How a LLaVA-Bench judging run starts, against the local API stand-in: the judge's start
checks (prices, the model's lifecycle) come before its request cache is created and before any
answer is generated, and a failed
start, through the console command too, leaves the run folder exactly as it was (Hydra writes
nothing into it)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import write_llava_bench_files
from llava_lite.claude.client import ApiFatalError
from llava_lite.evaluation.run import run_eval
from llava_lite.evaluation.settings import settings_from

KEY = "sk-ant-judge-start-5d0e"


def _bench(tmp_path: Path) -> list[str]:
    """Benchmark files with the model's answers already given; the overrides that judge them."""
    write_llava_bench_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "llava_bench_answers.jsonl").write_text(
        "".join(json.dumps({"question_id": i, "text": f"answer {i}"}) + "\n" for i in range(3))
    )
    return [
        "task=llava_bench",
        f"output_dir={out}",
        f"llava_bench.questions_file={tmp_path / 'questions.jsonl'}",
        f"llava_bench.context_file={tmp_path / 'context.jsonl'}",
        f"llava_bench.references_file={tmp_path / 'answers_gpt4.jsonl'}",
    ]


def _settings(overrides: list[str], **judge):
    cfg: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        section, _, name = key.rpartition(".")
        (cfg.setdefault(section, {}) if section else cfg)[name] = value
    cfg["judge"] = {"model": "claude-test", "prices": {"input": 3.0, "output": 15.0}, **judge}
    return settings_from(cfg)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_failed_judge_start_creates_no_request_cache(api, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    overrides = _bench(tmp_path)
    out = tmp_path / "out"
    before = _snapshot(out)
    with pytest.raises(ValueError, match="claude-unpriced"):
        run_eval(_settings(overrides, model="claude-unpriced", prices=None, base_url=api.url))
    api.models["claude-test"] = {"lifecycle": "retired"}
    with pytest.raises(ApiFatalError, match="model_retired"):
        run_eval(_settings(overrides, base_url=api.url))
    assert _snapshot(out) == before and api.calls() == []  # no judge_requests.sqlite either


def test_a_failed_cli_start_leaves_a_judged_run_folder_as_it_was(api, tmp_path):
    args = [*_bench(tmp_path), f"judge.base_url={api.url}", "judge.model=claude-test",
            "judge.prices={input:3.0,output:15.0}"]  # fmt: skip
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    env.pop("LLAVA_LITE_TRACEBACK", None)
    command = [sys.executable, "-m", "llava_lite.cli.evaluate", *args]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    out = tmp_path / "out"
    assert json.loads((out / "llava_bench_results.json").read_text())["judged"] == 3
    before = _snapshot(out)
    assert not any(name.startswith("hydra") for name in before), sorted(before)
    api.models["claude-test"] = {"lifecycle": "retired"}
    failed = subprocess.run(
        [*command, "judge.max_tokens=512"],  # a new request body: not in the cache, so the model is asked
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 1 and "model_retired" in failed.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "answers_gpt4.jsonl", "context.jsonl", "out", "questions.jsonl"
    ]  # fmt: skip


def test_a_retired_judge_model_is_found_before_any_answer_is_generated(api, tmp_path, monkeypatch):
    """With answers to generate, the judge's model is checked first: nobody waits for answers
    (nor for the model to load) to learn that the judge cannot run, and nothing is written."""
    import llava_lite.evaluation.run as run_module

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    overrides = _bench(tmp_path)
    out = tmp_path / "out"
    (out / "llava_bench_answers.jsonl").unlink()  # every question still to answer
    before = _snapshot(out)
    api.models["claude-test"] = {"lifecycle": "retired"}

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the judge's model check")

    monkeypatch.setattr(run_module, "load_model_dir", no_model)
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "001.jpg")
    settings = _settings(
        [*overrides, f"model_dir={tmp_path / 'any-model'}", f"llava_bench.image_root={tmp_path}"],
        base_url=api.url,
    )
    with pytest.raises(ApiFatalError, match="model_retired"):
        run_eval(settings)
    assert _snapshot(out) == before
    assert len(api.calls("/v1/models/claude-test")) == 1 and api.calls() == []  # asked, nothing paid


def test_answers_all_given_need_no_judge_check_before_answering(api, tmp_path, monkeypatch):
    """Nothing to answer: no early model check (the judge decides, and replays need none)."""
    import llava_lite.evaluation.run as run_module

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    checked = []

    async def spy(judge):
        checked.append(judge.model)

    def no_model(*args, **kwargs):
        raise ValueError("no model")

    monkeypatch.setattr(run_module, "_check_judge_model", spy)
    monkeypatch.setattr(run_module, "load_model_dir", no_model)
    overrides = _bench(tmp_path)
    with pytest.raises(ValueError, match="no model"):  # all answered: straight to loading the model
        run_eval(_settings([*overrides, "model_dir=m"], base_url=api.url))
    assert checked == []
