"""Cost from usage, prices per model id, the budget's reservations, tiktoken offline, crash-safe
JSONL, the request cache."""

import asyncio
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from anthropic._data import DEPRECATED_MODELS
from anthropic.types import Model

from llava_lite.claude import estimate
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.prices import PRICES, Budget, BudgetExceeded, Prices, prices_for
from llava_lite.claude.settings import DEFAULT_MODEL, ClaudeSettings
from llava_lite.evaluation.settings import JudgeSettings
from llava_lite.generation.base import Usage
from llava_lite.generation.settings import TeacherSettings
from llava_lite.io import JsonlAppender, read_jsonl, repair_torn_tail, write_json_atomic


def test_cost_counts_every_usage_field_and_the_batch_discount():
    prices = Prices(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3, batch_discount=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_creation_input_tokens=200_000,
                  cache_read_input_tokens=2_000_000)  # fmt: skip
    expected = 3.0 + 1.5 + 0.75 + 0.6
    assert prices.cost(usage) == pytest.approx(expected)
    assert prices.cost(usage, batch=True) == pytest.approx(expected / 2)


def test_budget_reservations_stop_overspending_by_requests_in_flight():
    budget = Budget(1.0)
    budget.reserve(0.4)
    budget.reserve(0.4)
    with pytest.raises(BudgetExceeded, match="in flight"):
        budget.reserve(0.4)  # 0.8 in flight + 0.4 > 1.0
    budget.settle(0.4, 0.1)
    budget.reserve(0.4)  # 0.1 spent + 0.8 in flight
    assert budget.spent_usd == pytest.approx(0.1) and budget.reserved_usd == pytest.approx(0.8)
    Budget(None).reserve(1e9)


def test_tiktoken_encoding_loads_offline_from_bpe_openai(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    estimate.offline_encoding.cache_clear()
    try:
        enc = estimate.offline_encoding("cl100k_base")
        assert enc.encode("hello world") == [15339, 1917]  # cl100k_base ids, checked by tiktoken's hash
        assert len(list(tmp_path.iterdir())) == 1
        est = estimate.TokenEstimator(token_ratio=2.0)
        assert est.count("hello world") == 4
    finally:
        estimate.offline_encoding.cache_clear()


def test_torn_last_line_is_repaired_and_appends_are_whole_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlAppender(path) as w:
        w.append({"id": "a"})
        w.append({"id": "b"})
    with open(path, "a") as f:
        f.write('{"id": "c", "conversa')  # a kill mid-write
    with pytest.raises(ValueError, match="torn last line"):
        list(read_jsonl(path))
    assert repair_torn_tail(path) == len('{"id": "c", "conversa')
    with JsonlAppender(path) as w:
        w.append({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"out.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    write_json_atomic(tmp_path / "s.json", {"x": 1})
    assert (tmp_path / "s.json").read_text().startswith("{") and not (tmp_path / "s.json.tmp").exists()


def test_request_cache_persists_replies_and_open_batches(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put("k1", {"type": "message", "content": []})
    cache.put("k2", {"type": "message", "content": [{"type": "text", "text": "hi"}]}, batch=True)
    cache.add_batch("b1", ["k3", "k4"])
    cache.close()
    cache = RequestCache(tmp_path / "c.sqlite")
    assert "k1" in cache and len(cache) == 2
    assert cache.get("k2") == ({"type": "message", "content": [{"type": "text", "text": "hi"}]}, True)
    assert cache.get("nope") is None
    assert cache.open_batches() == [("b1", ["k3", "k4"])]
    cache.mark_collected("b1")
    assert cache.open_batches() == []
    cache.close()


def test_budget_acquire_waits_for_requests_in_flight_and_stops_when_nothing_can_fit():
    async def waits() -> tuple[bool, float]:
        budget = Budget(1.0)
        await budget.acquire(0.6)  # in flight
        second = asyncio.create_task(budget.acquire(0.6))  # fits only if the first costs < 0.4
        await asyncio.sleep(0.01)
        waited = not second.done()
        budget.settle(0.6, 0.1)  # the first settles far below its worst case
        await asyncio.wait_for(second, 1.0)
        return waited, budget.reserved_usd

    async def never_fits() -> None:
        budget = Budget(1.0)
        await budget.acquire(0.5)
        budget.settle(0.5, 0.7)
        await budget.acquire(0.4)  # 0.7 spent + 0.4 > 1 with nothing in flight: stop, don't wait

    assert asyncio.run(waits()) == (True, pytest.approx(0.6))
    with pytest.raises(BudgetExceeded, match="next request may cost up to"):
        asyncio.run(asyncio.wait_for(never_fits(), 1.0))


def test_every_model_has_a_price_or_is_refused_and_the_default_is_current():
    assert prices_for(DEFAULT_MODEL) == PRICES[DEFAULT_MODEL]
    given = Prices(input=1.0, output=2.0)
    assert prices_for("claude-unlisted", given) is given
    with pytest.raises(ValueError, match=r"model='claude-unlisted' has no price.*valid: \["):
        prices_for("claude-unlisted")
    # the SDK's own table of deprecated ids, and the ids it knows
    assert DEFAULT_MODEL not in DEPRECATED_MODELS and DEFAULT_MODEL in typing.get_args(
        typing.get_args(Model)[0]
    )
    assert ClaudeSettings().model == TeacherSettings().model == JudgeSettings().model == DEFAULT_MODEL
    conf = Path(__file__).parents[2] / "conf"
    teacher = yaml.safe_load((conf / "teacher" / "anthropic.yaml").read_text())  # generate.yaml's default
    judge = yaml.safe_load((conf / "eval.yaml").read_text())["judge"]
    for section in (teacher, judge):
        assert section["model"] == DEFAULT_MODEL and section["prices"] is None


def test_the_offline_encoding_raises_no_deprecation_warning(tmp_path):
    # a fresh interpreter: importing bpe_openai (as resources.files("bpe_openai.data") did) warns
    code = "from llava_lite.claude import estimate; print(estimate.offline_encoding().encode('hello world'))"
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True, text=True, env={**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[15339, 1917]"


def test_teacher_and_judge_pass_every_claude_setting_to_the_paying_layer(tmp_path):
    from dataclasses import fields, replace

    from llava_lite.claude.client import call_deadline_s
    from llava_lite.evaluation.judge import ClaudeJudge
    from llava_lite.generation.pipeline import GenerationPipeline
    from llava_lite.generation.settings import settings_from

    prices = Prices(input=1.0, output=2.0)
    claude = ClaudeSettings(model="claude-x", max_tokens=77, concurrency=3, max_retries=1, timeout_s=9.0,
                            max_retry_wait_s=4.0, base_url="http://127.0.0.1:9", prices=prices)  # fmt: skip
    assert set(claude.paying()) | {"model", "base_url"} == {f.name for f in fields(ClaudeSettings)}
    judge = ClaudeJudge.from_settings(claude)
    cap = tmp_path / "captions.json"
    cap.write_text('{"images": [], "annotations": []}')
    settings = settings_from({"captions_file": str(cap), "output_dir": str(tmp_path / "out")})
    settings = replace(settings, teacher=TeacherSettings(**vars(claude)))
    teacher = GenerationPipeline(settings).teacher
    for paid in (judge, teacher):
        assert (paid.model, paid.max_tokens, paid.concurrency, paid.prices) == ("claude-x", 77, 3, prices)
        assert paid.deadline_s == call_deadline_s(1, 9.0, 4.0)
        assert paid._client_kwargs["base_url"] == "http://127.0.0.1:9"
