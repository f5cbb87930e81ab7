"""Preference pairs end to end: a tiny model samples, the answer judge scores through the local
Messages API stand-in (or the synthetic world's offline judge), best vs worst becomes a pair;
a killed run resumes without repeating a pair or a paid request; the budget cap holds."""

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from api_helpers import TEST_PRICES, kill_at_request
from fakes.anthropic_api import FakeAnthropicAPI
from helpers import tiny_llava
from llava_lite.claude.prices import Budget
from llava_lite.cli import pairs as cli_pairs
from llava_lite.data import LlavaProcessor
from llava_lite.evaluation.answer_judge import AnswerRequest, ClaudeAnswerJudge
from llava_lite.evaluation.llava_bench import contexts_from_coco
from llava_lite.hydra_conf import config_dir
from llava_lite.inference.answers import read_questions
from llava_lite.io import read_jsonl
from llava_lite.preference import make_pairs
from llava_lite.synthetic import build_world
from llava_lite.synthetic.tasks import eval_questions

KEY = "sk-ant-test-PAIRS-NEVER-WRITE-5d1e"
N_QUESTIONS = 3
PAIR_KEYS = {
    "id", "image", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_reason",
    "rejected_reason", "judge",
}  # fmt: skip


def _score(answer: str) -> int:
    return 1 + int(hashlib.sha1(answer.encode()).hexdigest()[:4], 16) % 10


class FakeAnswerJudgeAPI(FakeAnthropicAPI):
    """Scores each answer 1-10 from a hash of its text, with a reason naming the score."""

    def reply(self, body):
        message = super().reply(body)
        answer = body["messages"][-1]["content"].split("[Answer]\n", 1)[1].split("\n\n[End of Answer]")[0]
        score = _score(answer)
        message["content"] = [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "record_score",
                "input": {"score": score, "reason": f"worth {score}"},
            }
        ]
        return message


@pytest.fixture
def api():
    with FakeAnswerJudgeAPI() as server:
        yield server


def _inputs(root: Path) -> dict[str, Path]:
    """Three questions about three 32 px images, their COCO captions and boxes, and a saved tiny model."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(N_QUESTIONS)]
    for i in range(N_QUESTIONS):
        Image.new("RGB", (32, 32), (70 * i, 30, 30)).save(root / "images" / f"{i}.png")
    captions = {
        "images": images,
        "annotations": [
            {"id": i, "image_id": i, "caption": f"A square number {i}."} for i in range(N_QUESTIONS)
        ],
    }
    instances = {
        "images": images,
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20]} for i in range(N_QUESTIONS)
        ],
    }
    files = {
        "captions": root / "captions.json",
        "instances": root / "instances.json",
        "questions": root / "q.jsonl",
    }
    files["captions"].write_text(json.dumps(captions))
    files["instances"].write_text(json.dumps(instances))
    files["questions"].write_text(
        "".join(
            json.dumps({"question_id": i, "image": f"{i}.png", "text": f"What is in picture {i}?"}) + "\n"
            for i in range(N_QUESTIONS)
        )
    )
    model_dir = root / "model"
    if not model_dir.exists():
        tiny_llava().save_pretrained(model_dir)
    files["model"] = model_dir
    return files


def _config(files: dict[str, Path], out: Path, url: str, **overrides) -> dict:
    cfg = {
        "model_dir": str(files["model"]), "questions_file": str(files["questions"]),
        "image_root": str(files["model"].parent / "images"), "captions_file": str(files["captions"]),
        "instances_file": str(files["instances"]), "output_dir": str(out), "device": "cpu", "margin": 1.0,
        "budget_usd": None, "sampling": {"k": 4, "max_new_tokens": 8},
        "judge": {"model": "claude-test", "concurrency": 1, "max_retries": 0, "max_tokens": 64,
                  "base_url": url, "prices": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}},
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _pairs(out: Path) -> list[dict]:
    return list(read_jsonl(out / "pairs.jsonl"))


def _distinct_answers(out: Path) -> set[tuple[str, str]]:
    return {(c["id"], a) for c in read_jsonl(out / "candidates.jsonl") for a in c["answers"] if a.strip()}


def _assert_every_pair_and_judgement_once(out: Path, summary: dict) -> None:
    pairs = _pairs(out)
    assert len({p["id"] for p in pairs}) == len(pairs) == summary["pairs"]
    assert summary["pairs"] + sum(summary["no_pair"].values()) == N_QUESTIONS
    judged = [(j["id"], j["answer"]) for j in read_jsonl(out / "judgements.jsonl")]
    assert len(judged) == len(set(judged)) and set(judged) == _distinct_answers(out)


def _assert_no_paid_request_repeated(api) -> None:
    bodies = [json.dumps(c["body"], sort_keys=True) for c in api.calls(status=200)]
    assert len(bodies) == len(set(bodies))


def test_pairs_are_best_vs_worst_with_scores_reasons_and_the_judge(api, tmp_path):
    files = _inputs(tmp_path)
    summary = cli_pairs.run(_config(files, tmp_path / "out", api.url), api_key=KEY)
    out = tmp_path / "out"
    assert summary["sampled"] == N_QUESTIONS and summary["stopped"] is None and summary["judge_errors"] == {}
    assert summary["pairs"] >= 1
    answers = _distinct_answers(out)
    assert summary["paid_requests"] == len(answers) == len(api.calls(status=200))
    for pair in _pairs(out):
        assert set(pair) == PAIR_KEYS and pair["judge"] == {
            "model": "claude-test",
            "prompt_version": "answer-judge-v1",
        }
        assert (
            pair["prompt"] == f"<image>\nWhat is in picture {pair['id']}?"
            and pair["image"] == f"{pair['id']}.png"
        )
        assert pair["chosen_score"] == _score(pair["chosen"]) and pair["rejected_score"] == _score(
            pair["rejected"]
        )
        assert pair["chosen_score"] - pair["rejected_score"] >= 1.0 and pair["chosen"] != pair["rejected"]
        assert pair["chosen_reason"] == f"worth {_score(pair['chosen'])}"
        scores = [_score(a) for (qid, a) in answers if qid == pair["id"]]
        assert (pair["chosen_score"], pair["rejected_score"]) == (max(scores), min(scores))
    _assert_every_pair_and_judgement_once(out, summary)
    user = api.calls()[0]["body"]["messages"][0]["content"]
    assert "A square number" in user and "square: [0.125, 0.125, 0.750, 0.750]" in user  # captions and boxes
    again = cli_pairs.run(_config(files, tmp_path / "out", api.url), api_key=KEY)  # all done: nothing paid
    assert again["paid_requests"] == 0 and again["pairs"] == summary["pairs"] and again["sampled"] == 0
    assert KEY not in "".join(p.read_text(errors="replace") for p in out.glob("*.json*"))


_CHILD = textwrap.dedent(
    """
    import json, sys
    from llava_lite.cli.pairs import run
    cfg, key = json.loads(sys.argv[1]), sys.argv[2]
    run(cfg, api_key=key)
    """
)


def test_a_killed_run_resumes_with_every_pair_once_and_nothing_paid_twice(api, tmp_path):
    files = _inputs(tmp_path)
    out = tmp_path / "out"
    cfg = _config(files, out, api.url)
    api.script.extend([{}] * 5 + [{"hang_s": 20}])  # the 6th judge request never answers
    kill_at_request(api, [sys.executable, "-c", _CHILD, json.dumps(cfg), KEY], 6, 90)
    assert len(list(read_jsonl(out / "judgements.jsonl"))) == 5 and not (out / "pairs.jsonl").exists()
    with open(out / "judgements.jsonl", "a") as f:
        f.write('{"id": "0", "answ')  # as if the kill had hit a write
    api.script.clear()
    summary = cli_pairs.run(cfg, api_key=KEY)
    assert summary["already_sampled"] == N_QUESTIONS and summary["already_judged"] == 5
    _assert_every_pair_and_judgement_once(out, summary)
    _assert_no_paid_request_repeated(api)
    assert len(api.calls(status=200)) == len(_distinct_answers(out))


def test_the_budget_cap_is_exact_and_a_rerun_finishes(api, tmp_path):
    files = _inputs(tmp_path)
    out = tmp_path / "out"
    model = tiny_llava()
    processor = LlavaProcessor.from_model(model)
    questions = read_questions(files["questions"])
    contexts = contexts_from_coco(files["captions"], files["instances"])

    def judge(cap):
        return ClaudeAnswerJudge(
            "claude-test", api_key=KEY, base_url=api.url, max_retries=0, max_tokens=64, concurrency=2,
            prices=TEST_PRICES, budget=Budget(cap),
        )  # fmt: skip

    def run(j):
        return make_pairs(
            model, processor, questions, j, out, k=4, max_new_tokens=8, margin=1.0,
            image_root=tmp_path / "images", contexts=contexts,
        )  # fmt: skip

    capped = judge(None)
    worst = capped.worst_case_usd(
        capped.body(AnswerRequest(0, "0.png", "What is in picture 0?", "x" * 40, contexts["0.png"]))
    )
    cap = 4.5 * worst
    capped.budget = Budget(cap)
    summary = run(capped)
    assert summary.stopped == "budget"
    total = len(_distinct_answers(out))
    assert 0 < summary.judged < total and summary.unjudged == total - summary.judged
    assert summary.cost_usd <= cap and len(api.calls(status=200)) == summary.paid_requests == summary.judged
    assert summary.cost_usd + worst * 0.8 > cap  # it stopped only when the next request could not fit
    summary = run(judge(None))
    assert summary.stopped is None and summary.unjudged == 0 and summary.already_judged > 0
    _assert_every_pair_and_judgement_once(out, summary.to_dict())
    _assert_no_paid_request_repeated(api)


def test_an_unparseable_judgement_is_counted_and_never_becomes_a_pair(api, tmp_path):
    files = _inputs(tmp_path)
    out = tmp_path / "out"
    api.script.append(
        {"content": [{"type": "text", "text": "A fine answer, all told."}], "stop_reason": "end_turn"}
    )
    cfg = _config(files, out, api.url, sampling={"k": 2, "max_new_tokens": 8})
    summary = cli_pairs.run(cfg, api_key=KEY)
    assert summary["judge_errors"] == {"unparseable": 1}
    [failed] = [j for j in read_jsonl(out / "judgements.jsonl") if j["error"]]
    assert failed["score"] is None and failed["error"] == "unparseable"
    assert all(failed["answer"] not in (p["chosen"], p["rejected"]) for p in _pairs(out))
    assert failed["id"] not in {p["id"] for p in _pairs(out)}  # k=2: one scored answer is no pair
    assert summary["no_pair"].get("too_few_scored", 0) + summary["no_pair"].get("identical_answers", 0) >= 1
    paid = len(api.calls())
    again = cli_pairs.run(cfg, api_key=KEY)  # the stored failure stays a failure and costs nothing
    assert len(api.calls()) == paid and again["pairs"] == summary["pairs"]
    _assert_every_pair_and_judgement_once(out, again)


def test_a_run_folder_is_never_continued_by_another_judge(api, tmp_path):
    files = _inputs(tmp_path)
    cli_pairs.run(_config(files, tmp_path / "out", api.url), api_key=KEY)
    other = _config(files, tmp_path / "out", api.url, judge={"model": "claude-other"})
    with pytest.raises(ValueError, match=r"judged by .*claude-test.* use another output_dir"):
        cli_pairs.run(other, api_key=KEY)


def test_the_offline_judge_makes_pairs_from_the_world_with_the_pairs_config(tmp_path):
    world = build_world(tmp_path / "world", n_train=0, n_val=0, n_test=3, image_size=32)
    records = eval_questions(world, "test")
    questions_file = tmp_path / "q.jsonl"
    questions_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    tiny_llava().save_pretrained(tmp_path / "model")
    overrides = [
        "judge=offline", f"judge.world={world.root}", f"model_dir={tmp_path / 'model'}",
        f"questions_file={questions_file}", f"image_root={world.image_root}", f"output_dir={tmp_path / 'out'}",
        "device=cpu", "sampling.k=3", "sampling.max_new_tokens=6",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(config_dir("pairs")), version_base="1.3"):
        cfg = compose(config_name="pairs", overrides=overrides)
    summary = cli_pairs.run(cfg)
    assert summary["judge"] == {"model": "offline-checker", "prompt_version": "checker-v1"}
    assert summary["questions"] == summary["sampled"] == len(records) and summary["paid_requests"] == 0
    assert summary["pairs"] + sum(summary["no_pair"].values()) == len(records)
    judgements = list(read_jsonl(tmp_path / "out" / "judgements.jsonl"))
    assert judgements and all((j["score"] is None) == (j["error"] is not None) for j in judgements)
    assert all(1.0 <= j["score"] <= 10.0 for j in judgements if j["score"] is not None)
    assert sum(j["error"] is not None for j in judgements) == sum(summary["judge_errors"].values())


def test_a_judge_without_what_it_reads_or_not_a_judge_fails_before_anything_is_written(tmp_path):
    files = _inputs(tmp_path)
    cfg = _config(files, tmp_path / "out", "http://127.0.0.1:9", captions_file=None)
    with pytest.raises(ValueError, match="captions_file must be set"):
        cli_pairs.run(cfg, api_key=KEY)
    bad = _config(files, tmp_path / "out", "http://127.0.0.1:9", judge={"_target_": "collections.Counter"})
    bad["judge"] = {"_target_": "collections.Counter"}
    with pytest.raises(
        ValueError, match=r"judge._target_='collections.Counter' built a Counter, not an answer judge"
    ):
        cli_pairs.run(bad)
    assert not (tmp_path / "out").exists()
