"""ScienceQA: conversion from the original release layout, letter extraction, accuracy breakdowns."""

import json

import pytest

from llava_lite.data import normalize_conversation
from llava_lite.evaluation import scienceqa
from llava_lite.evaluation.scienceqa import INSTRUCTION, extract_answer
from llava_lite.inference.answers import read_questions

# Hand-made problems in the shape of ScienceQA's problems.json.
PROBLEMS = {
    "1": {
        "question": "Which of these states is farthest north?",
        "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "task": "closed choice",
        "grade": "grade2",
        "subject": "social science",
        "topic": "geography",
        "category": "Geography",
        "skill": "Read a map: cardinal directions",
        "lecture": "Maps have four cardinal directions.",
        "solution": "West Virginia is farthest north.",
        "split": "test",
    },
    "2": {
        "question": "Which word does not rhyme?",
        "choices": ["bike", "hike", "kid"],
        "answer": 2,
        "hint": "",
        "image": None,
        "grade": "grade1",
        "subject": "language science",
        "lecture": "",
        "solution": "",
        "split": "test",
    },
    "3": {
        "question": "Which property do these objects have in common?",
        "choices": ["shiny", "opaque"],
        "answer": 1,
        "hint": "Select the best answer.",
        "image": "image.png",
        "grade": "grade8",
        "subject": "natural science",
        "split": "test",
    },
    "4": {
        "question": "What is the temperature of a cup of tea?",
        "choices": ["65°C", "65°F"],
        "answer": 0,
        "hint": "Tea is hot.",
        "image": None,
        "grade": "grade10",
        "subject": "natural science",
        "split": "train",
    },
}
SPLITS = {"train": ["4"], "val": [], "test": ["1", "2", "3"]}


@pytest.fixture
def release(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps(SPLITS))
    return tmp_path


def test_load_split_and_prompt_layout(release):
    test = scienceqa.load_split(release, "test")
    assert list(test) == ["1", "2", "3"]
    prompt = scienceqa.problem_prompt(test["3"])
    assert prompt == (
        "Context: Select the best answer.\nWhich property do these objects have in common?\n"
        f"A. shiny\nB. opaque\n{INSTRUCTION}"
    )
    assert scienceqa.problem_prompt(test["2"]).startswith("Context: N/A\n")
    with pytest.raises(KeyError, match="valid"):
        scienceqa.load_split(release, "minitest")


def test_bad_problem_names_pid_and_file(release):
    bad = dict(PROBLEMS, **{"2": dict(PROBLEMS["2"], answer=5)})
    (release / "problems.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"problems.json: problem 2: 'answer'"):
        scienceqa.load_split(release, "test")


def test_to_llava_records_are_valid_training_records(release):
    records = scienceqa.to_llava_records(scienceqa.load_split(release, "train"), split="train")
    assert records == [
        {
            "id": "4",
            "conversations": [
                {"from": "human", "value": scienceqa.problem_prompt(PROBLEMS["4"])},
                {"from": "gpt", "value": "A"},
            ],
        }
    ]
    test = scienceqa.to_llava_records(scienceqa.load_split(release, "test"), answer_format="sentence")
    assert test[0]["image"] == "test/1/image.png"
    assert test[0]["conversations"][0]["value"].startswith("<image>\nContext: N/A\n")
    assert test[2]["conversations"][1]["value"] == "The answer is B."
    # The data package accepts them as conversations with one image.
    msgs = normalize_conversation(test[0]["conversations"], "<image>", has_image=True)
    assert msgs[1] == ("assistant", "The answer is A.")


def test_question_file_round_trip(release, tmp_path):
    questions = scienceqa.to_questions(scienceqa.load_split(release, "test"))
    scienceqa.write_question_file(questions, tmp_path / "q.jsonl")
    back = read_questions(tmp_path / "q.jsonl")
    assert back == questions
    assert back[0].image == "test/1/image.png" and back[1].image is None


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("B", 4, "B"),
        ("B.", 4, "B"),
        ("(C)", 4, "C"),
        ("  A\n", 4, "A"),
        ("B. opaque", 4, "B"),
        ("D) Oklahoma", 4, "D"),
        ("The answer is C.", 4, "C"),
        ("Looking at the map, the answer is A", 4, "A"),
        ("Answer: B", 4, "B"),
        ("The correct answer is (D).", 4, "D"),
        ("E", 4, None),  # not one of the options
        ("The answer is E.", 4, None),
        ("A red ball", 4, None),  # a word, not a letter
        ("the answer is a dog", 4, None),
        ("I think it is B", 4, None),
        ("", 4, None),
    ],
)
def test_extract_answer(text, n, expected):
    assert extract_answer(text, n) == expected


def test_score_breakdowns_unparseable_and_missing(release):
    problems = scienceqa.load_split(release, "test")
    answers = {
        "1": {"text": "A"},  # correct; SOC, IMG, G1-6
        "2": {"text": "It is kid"},  # unparseable -> wrong; LAN, NO, G1-6
        # "3" missing -> wrong; NAT, TXT + IMG, G7-12
    }
    result = scienceqa.score(problems, answers)
    acc = result.accuracy
    assert acc["all"]["count"] == 3 and acc["all"]["correct"] == 1
    assert acc["all"]["accuracy"] == pytest.approx(100 / 3)
    assert acc["SOC"]["accuracy"] == 100.0 and acc["LAN"]["accuracy"] == 0.0 and acc["NAT"]["count"] == 1
    assert acc["IMG"] == {"accuracy": 50.0, "correct": 1, "count": 2}
    assert acc["TXT"]["count"] == 1 and acc["NO"]["count"] == 1
    assert acc["G1-6"]["accuracy"] == 50.0 and acc["G7-12"]["count"] == 1
    assert result.unparseable == 1 and result.missing == 1
    per = {r["question_id"]: r for r in result.to_dict(with_questions=True)["per_question"]}
    assert per["2"]["parsed"] is None and per["3"]["text"] is None and per["1"]["correct"]
