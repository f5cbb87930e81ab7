"""llava-lite-eval end to end: Hydra config -> answers -> ScienceQA accuracy / LLaVA-Bench judging."""

import json
import sys

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fakes.anthropic_api import FakeAnthropicAPI
from llava_lite.cli import evaluate as eval_cli
from llava_lite.config import LlavaConfig
from llava_lite.hydra_conf import config_dir
from llava_lite.modeling import LlavaModel

KEY = "sk-ant-eval-cli-test-3b1d"

PROBLEMS = {
    "10": {
        "question": "Which is a mammal?",
        "choices": ["cat", "trout"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "grade": "grade3",
        "subject": "natural science",
        "split": "test",
    },
    "11": {
        "question": "Which word is a verb?",
        "choices": ["run", "blue", "tall"],
        "answer": 0,
        "hint": "Think about actions.",
        "image": None,
        "grade": "grade9",
        "subject": "language science",
        "split": "test",
    },
    "12": {
        "question": "Which city is a capital?",
        "choices": ["Paris", "Lyon"],
        "answer": 0,
        "hint": "",
        "image": None,
        "grade": "grade5",
        "subject": "social science",
        "split": "train",
    },
}


class ScoringAPI(FakeAnthropicAPI):
    """A judge stand-in: reference 8, model 4, as a record_scores tool call."""

    def reply(self, body):
        message = super().reply(body)
        message["content"] = [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": body["tools"][0]["name"],
                "input": {"explanation": "ok", "assistant_1_score": 8, "assistant_2_score": 4},
            }
        ]
        return message


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "tiny-model"
    LlavaModel(LlavaConfig.from_name("tiny")).save_pretrained(folder)
    return folder


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(config_dir("eval")), version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


@pytest.fixture
def release(tmp_path):
    base = tmp_path / "sqa"
    (base / "images" / "test" / "10").mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 90, 60)).save(base / "images" / "test" / "10" / "image.png")
    (base / "problems.json").write_text(json.dumps(PROBLEMS))
    (base / "pid_splits.json").write_text(json.dumps({"train": ["12"], "test": ["10", "11"]}))
    return base


def test_scienceqa_generate_score_and_resume(model_dir, release, tmp_path):
    out = tmp_path / "out"
    cfg = _compose(
        "task=scienceqa",
        f"model_dir={model_dir}",
        f"scienceqa.base_dir={release}",
        f"output_dir={out}",
        "decoding.max_new_tokens=3",
        "scienceqa.questions_file=sqa_q.jsonl",
    )
    result = eval_cli.run(cfg)
    assert result["generation"] == {"answered": 2, "skipped_done": 0, "total": 2}
    acc = result["accuracy"]
    assert acc["all"]["count"] == 2 and {"NAT", "LAN", "IMG", "TXT", "G1-6", "G7-12"} <= set(acc)
    # a random model rarely writes a letter: whatever it wrote is either parsed or counted
    assert result["unparseable"] + acc["all"]["correct"] <= 2 and result["missing"] == 0
    answers = [json.loads(x) for x in (out / "scienceqa_answers.jsonl").read_text().splitlines()]
    assert {a["question_id"] for a in answers} == {"10", "11"} and answers[0]["model_id"] == "tiny-model"
    assert json.loads((out / "scienceqa_results.json").read_text()) == result
    assert (out / "sqa_q.jsonl").is_file()
    again = eval_cli.run(cfg)
    assert again["generation"]["answered"] == 0 and again["accuracy"] == acc


def test_scienceqa_scores_given_answers_through_the_console_entry(release, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scienceqa_answers.jsonl").write_text(
        '{"question_id": "10", "text": "A"}\n{"question_id": "11", "text": "The answer is B."}\n'
    )
    monkeypatch.setattr(
        sys,
        "argv",
        ["llava-lite-eval", "task=scienceqa", f"scienceqa.base_dir={release}", f"output_dir={out}"],
    )
    eval_cli.main()
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"]["all"] == {"accuracy": 50.0, "correct": 1, "count": 2}
    assert printed["accuracy"]["IMG"]["accuracy"] == 100.0 and printed["generation"] is None


def test_llava_bench_generate_judge_and_replay(model_dir, tmp_path, monkeypatch):
    Image.new("RGB", (50, 50), (0, 0, 255)).save(tmp_path / "001.jpg")
    rows = {
        "questions.jsonl": [
            {"question_id": 0, "image": "001.jpg", "text": "What is shown?", "category": "conv"},
            {
                "question_id": 1,
                "image": "001.jpg",
                "text": "Describe the image in detail.",
                "category": "detail",
            },
            {"question_id": 2, "image": "001.jpg", "text": "What might happen next?", "category": "complex"},
        ],
        "context.jsonl": [{"id": "001", "image": "001.jpg", "caption": "A plain blue square."}],
        "answers_gpt4.jsonl": [{"question_id": i, "text": f"reference {i}"} for i in range(3)],
    }
    for name, lines in rows.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in lines))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with ScoringAPI() as api:
        overrides = [
            "task=llava_bench",
            f"model_dir={model_dir}",
            f"output_dir={tmp_path / 'out'}",
            "decoding.max_new_tokens=4",
            f"judge.base_url={api.url}",
            "judge.model=claude-test",
            "judge.prices={input:3.0,output:15.0}",  # claude-test has no entry in the price table
            f"llava_bench.questions_file={tmp_path / 'questions.jsonl'}",
            f"llava_bench.context_file={tmp_path / 'context.jsonl'}",
            f"llava_bench.references_file={tmp_path / 'answers_gpt4.jsonl'}",
            f"llava_bench.image_root={tmp_path}",
        ]
        result = eval_cli.run(_compose(*overrides))
        assert result["generation"]["answered"] == 3
        assert result["judged"] == 3 and result["unscored"] == 0 and result["missing"] == 0
        # the stand-in always scores Assistant 1 8 and Assistant 2 4: judged in both orders, the
        # answers tie (relative 100, not 50) and the whole gap shows as position bias
        for cat in ("conversation", "detail", "complex", "all"):
            assert result["scores"][cat]["relative"] == pytest.approx(100.0)
            assert result["scores"][cat]["ci95"] == [100.0, 100.0]
        assert result["position_bias"] == {"questions": 3, "mean_score_change": 4.0, "flipped_share": 1.0}
        assert result["judge"] == {"model": "claude-test", "prompt_version": "judge-v1", "orders": 2}
        assert result["paid_requests"] == 6 and result["cost_usd"] > 0
        assert (tmp_path / "out" / "llava_bench_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        again = eval_cli.run(_compose(*overrides))
        assert (
            again["paid_requests"] == 0 and again["cache_hits"] == 6 and again["scores"] == result["scores"]
        )
        assert len(api.calls()) == 6
    reviews = (tmp_path / "out" / "llava_bench_reviews.jsonl").read_text()
    assert KEY not in reviews and len(reviews.splitlines()) == 6
    lines = [json.loads(line) for line in reviews.splitlines()]
    assert {(r["order"], tuple(r["tuple"])) for r in lines} == {
        ("reference_first", (8, 4)),
        ("model_first", (4, 8)),
    }
    assert {(r["judge_model"], r["prompt_version"]) for r in lines} == {("claude-test", "judge-v1")}


def test_unknown_key_and_task_are_errors(tmp_path):
    with pytest.raises(Exception, match="nonsense"):
        eval_cli.run(_compose("+nonsense=1", f"output_dir={tmp_path}"))
    with pytest.raises(ValueError, match="task='vqa'"):
        eval_cli.run(_compose("task=vqa", f"output_dir={tmp_path}"))


def test_scienceqa_convert_task_writes_llava_json(release, tmp_path):
    result = eval_cli.run(
        _compose(
            "task=scienceqa_convert",
            f"scienceqa.base_dir={release}",
            "scienceqa.split=train",
            f"output_dir={tmp_path / 'out'}",
            "scienceqa.answer_format=sentence",
        )
    )
    assert result["records"] == 1
    [record] = json.loads((tmp_path / "out" / "scienceqa_llava.json").read_text())
    assert record["id"] == "12" and record["conversations"][1]["value"] == "The answer is A."
    assert "image" not in record
