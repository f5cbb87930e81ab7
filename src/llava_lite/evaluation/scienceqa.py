"""ScienceQA: conversion to LLaVA format, answer-letter extraction, accuracy breakdowns.

Reads the original release: ``problems.json`` (``{pid: {question, choices, answer, hint,
image, subject, grade, split, ...}}``) and ``pid_splits.json`` (``{split: [pid, ...]}``);
images live at ``images/{split}/{pid}/image.png``. A prompt shows the context (the hint,
optionally the image caption, else ``N/A``), the question, the options lettered A..E and
the instruction to answer with the letter, as LLaVA-1.5 evaluates it.

Scoring follows the ScienceQA paper's table: accuracy overall, by subject (NAT / SOC /
LAN), by context modality (TXT: has a text hint, IMG: has an image, NO: neither; a problem
with both counts in TXT and IMG) and by grade (G1-6 / G7-12). A reply from which no valid
letter can be read counts as wrong and is counted as ``unparseable``; a question with no
answer at all counts as wrong and is counted as ``missing``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_lite.evaluation.metrics import GroupedAccuracy
from llava_lite.inference.answers import Question
from llava_lite.io import read_json, write_json_atomic

OPTIONS = ("A", "B", "C", "D", "E")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
ANSWER_FORMATS = ("letter", "sentence")


# ---- reading the release ----------------------------------------------------------------
def load_split(base_dir: str | Path, split: str = "test") -> dict[str, dict[str, Any]]:
    """``{pid: problem}`` for one split of ``base_dir/problems.json`` + ``base_dir/pid_splits.json``."""
    base = Path(base_dir)
    problems = _read_json(base / "problems.json")
    splits = _read_json(base / "pid_splits.json")
    if split not in splits:
        raise KeyError(f"{base / 'pid_splits.json'}: no split {split!r}; valid: {sorted(splits)}")
    out: dict[str, dict[str, Any]] = {}
    for pid in splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise KeyError(f"{base / 'pid_splits.json'}: {split} lists problem {pid}, not in problems.json")
        _check_problem(pid, problems[pid], base / "problems.json")
        out[pid] = problems[pid]
    return out


def _check_problem(pid: str, problem: Any, source: Path) -> None:
    where = f"{source}: problem {pid}"
    if not isinstance(problem, dict) or not isinstance(problem.get("question"), str):
        raise ValueError(f"{where}: needs a 'question' string")
    choices = problem.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(OPTIONS):
        raise ValueError(f"{where}: 'choices' must list 2..{len(OPTIONS)} options, got {choices!r}")
    answer = problem.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: 'answer' must index 'choices', got {answer!r}")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, dict, "JSON object", " (expected the ScienceQA release layout)")


# ---- prompts and conversion ---------------------------------------------------------------
def context_text(problem: Mapping[str, Any], use_caption: bool = False) -> str:
    parts = [str(problem.get("hint") or "").strip()]
    if use_caption:
        parts.append(str(problem.get("caption") or "").strip())
    return " ".join(p for p in parts if p) or "N/A"


def problem_prompt(problem: Mapping[str, Any], use_caption: bool = False) -> str:
    """The question text shown to the model (no ``<image>`` marker; the processor adds it)."""
    options = "\n".join(f"{OPTIONS[i]}. {c}" for i, c in enumerate(problem["choices"]))
    return f"Context: {context_text(problem, use_caption)}\n{problem['question']}\n{options}\n{INSTRUCTION}"


def image_path(pid: str, problem: Mapping[str, Any], split: str) -> str | None:
    """Image path relative to the release's ``images/`` folder, or None for text-only problems."""
    if not problem.get("image"):
        return None
    return f"{problem.get('split') or split}/{pid}/{problem['image']}"


def answer_letter(problem: Mapping[str, Any]) -> str:
    return OPTIONS[int(problem["answer"])]


def to_llava_records(
    problems: Mapping[str, Mapping[str, Any]],
    split: str = "train",
    answer_format: str = "letter",
    use_caption: bool = False,
) -> list[dict[str, Any]]:
    """LLaVA training records (``id``, ``image``?, ``conversations``) answering with the letter.

    ``answer_format="sentence"`` answers ``"The answer is X."`` instead of the bare letter.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={answer_format!r}; valid: {list(ANSWER_FORMATS)}")
    records = []
    for pid, problem in problems.items():
        letter = answer_letter(problem)
        answer = letter if answer_format == "letter" else f"The answer is {letter}."
        image = image_path(pid, problem, split)
        question = problem_prompt(problem, use_caption)
        record: dict[str, Any] = {
            "id": pid,
            "conversations": [
                {"from": "human", "value": f"<image>\n{question}" if image else question},
                {"from": "gpt", "value": answer},
            ],
        }
        if image:
            record["image"] = image
        records.append(record)
    return records


def convert_release(
    base_dir: str | Path,
    split: str,
    out_file: str | Path,
    answer_format: str = "letter",
    use_caption: bool = False,
) -> int:
    """Write one split as a LLaVA JSON array (images relative to ``base_dir/images``); returns its size."""
    records = to_llava_records(load_split(base_dir, split), split, answer_format, use_caption)
    write_json_atomic(out_file, records)
    return len(records)


def to_questions(
    problems: Mapping[str, Mapping[str, Any]], split: str = "test", use_caption: bool = False
) -> list[Question]:
    """Questions for :func:`llava_lite.inference.answers.generate_answers` (category = subject)."""
    return [
        Question(
            question_id=pid,
            text=problem_prompt(problem, use_caption),
            image=image_path(pid, problem, split),
            category=str(problem.get("subject") or "") or None,
        )
        for pid, problem in problems.items()
    ]


def write_question_file(questions: list[Question], path: str | Path) -> None:
    """A LLaVA questions JSONL (``question_id``, ``text``, ``image``, ``category``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q in questions:
            record = {"question_id": q.question_id, "text": q.text, "image": q.image, "category": q.category}
            f.write(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False) + "\n")


# ---- answer extraction ------------------------------------------------------------------
_ALONE = re.compile(r"^\(?([A-E])\)?[.:]?$")
_LEADING = re.compile(r"^(?:\(([A-E])\)|([A-E])[.):])\s")
# The phrase is case-insensitive; the letter is not (so "the answer is a dog" reads nothing).
_STATED = re.compile(r"\b(?i:(?:the\s+)?(?:correct\s+)?answer\s*(?:is|:))\s*\(?([A-E])\b(?![\w'])")


def extract_answer(text: str, n_choices: int = len(OPTIONS)) -> str | None:
    """The option letter a free-text reply gives, or None when none can be read.

    Accepted: the letter alone (``"B"``, ``"B."``, ``"(B)"``), a reply starting with it and
    punctuation (``"B. red"``, ``"B) red"``, ``"(B) red"``), or a statement anywhere
    (``"The answer is B."``, ``"Answer: B"``). The letter must name one of the problem's
    ``n_choices`` options; anything else (``"A red ball"``, ``"F"``) reads nothing.
    """
    reply = " ".join(text.split())
    valid = OPTIONS[:n_choices]
    match = _ALONE.match(reply) or _LEADING.match(reply) or _STATED.search(reply)
    if match is None:
        return None
    letter = next(g for g in match.groups() if g)
    return letter if letter in valid else None


# ---- scoring ------------------------------------------------------------------------------
def problem_groups(problem: Mapping[str, Any]) -> list[str]:
    """The breakdown groups one problem belongs to (ScienceQA paper's columns)."""
    groups = []
    subject = SUBJECTS.get(str(problem.get("subject") or ""))
    if subject:
        groups.append(subject)
    has_text = bool(str(problem.get("hint") or "").strip())
    has_image = bool(problem.get("image"))
    if has_text:
        groups.append("TXT")
    if has_image:
        groups.append("IMG")
    if not has_text and not has_image:
        groups.append("NO")
    grade = re.search(r"\d+", str(problem.get("grade") or ""))
    if grade:
        groups.append("G1-6" if int(grade.group()) <= 6 else "G7-12")
    return groups


@dataclass
class ScienceQAResult:
    accuracy: dict[str, dict[str, float]]  # group -> {"accuracy" (%), "correct", "count"}; "all" overall
    unparseable: int = 0
    missing: int = 0
    per_question: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_questions: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "unparseable": self.unparseable,
            "missing": self.missing,
        }
        if with_questions:
            out["per_question"] = self.per_question
        return out


def score(
    problems: Mapping[str, Mapping[str, Any]], answers: Mapping[str, Mapping[str, Any]]
) -> ScienceQAResult:
    """Accuracy of ``answers`` (``{str(question_id): {"text": ...}}``) on ``problems``."""
    metric = GroupedAccuracy()
    result = ScienceQAResult(accuracy={})
    for pid, problem in problems.items():
        answer = answers.get(pid)
        truth = answer_letter(problem)
        if answer is None:
            result.missing += 1
            predicted, text = None, None
        else:
            text = str(answer.get("text", ""))
            predicted = extract_answer(text, len(problem["choices"]))
            if predicted is None:
                result.unparseable += 1
        correct = predicted == truth
        metric.update(correct, problem_groups(problem))
        result.per_question.append(
            {"question_id": pid, "text": text, "parsed": predicted, "truth": truth, "correct": correct}
        )
    result.accuracy = metric.compute()
    return result
