"""Cost from usage, the budget's reservations, tiktoken offline, crash-safe JSONL, the request cache."""

import pytest

from llava_lite.claude import estimate
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.prices import Budget, BudgetExceeded, Prices
from llava_lite.generation.base import Usage
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
