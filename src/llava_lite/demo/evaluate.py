"""Closed-form evaluation on held-out images: greedy answers, exact match after normalisation.

Answers come from the library's batch answerer (``llava_lite.inference.answers``, resumable
JSONL as LLaVA's ``model_vqa``); accuracy per question type from its torchmetrics-backed
``GroupedAccuracy``. Chance per type is the mean of 1 / number of choices.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llava_lite.config import IMAGE_TOKEN
from llava_lite.evaluation import GroupedAccuracy
from llava_lite.inference import DecodingSettings, Question, generate_answers, read_answers
from llava_lite.synthetic.language import NUMBER_WORDS
from llava_lite.synthetic.tasks import chance_by_type

_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits ('Three.' -> '3')."""
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _ARTICLES]
    return " ".join(str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in words)


def to_questions(records: list[dict[str, Any]], image_token: str = IMAGE_TOKEN) -> list[Question]:
    """Held-out LLaVA records -> questions for the batch answerer (the answerer adds the image)."""
    return [
        Question(
            question_id=r["id"],
            text=r["conversations"][0]["value"].replace(image_token, "").strip(),
            image=r["image"],
            category=r["question_type"],
        )
        for r in records
    ]


def evaluate_closed_form(
    model: Any,
    processor: Any,
    records: list[dict[str, Any]],
    image_root: str | Path,
    answers_file: str | Path,
    batch_size: int = 32,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Answer every held-out question, then score it.

    Returns ``({type: {"accuracy" (percent), "correct", "count", "chance" (percent)}}`` with
    ``"all"`` last, and ``{question id: predicted text}``).
    """
    generate_answers(
        model,
        processor,
        to_questions(records, processor.image_token),
        answers_file,
        image_root=image_root,
        batch_size=batch_size,
        settings=DecodingSettings(max_new_tokens=6),
        model_id="llava_lite_demo",
    )
    answers = read_answers(answers_file)
    missing = [r["id"] for r in records if r["id"] not in answers]
    if missing:
        raise RuntimeError(f"{answers_file}: no answer for {len(missing)} questions, e.g. {missing[:3]}")
    metric = GroupedAccuracy()
    predictions = {}
    for r in records:
        predicted = str(answers[r["id"]]["text"])
        predictions[r["id"]] = predicted
        metric.update(normalize_answer(predicted) == normalize_answer(r["answer"]), [r["question_type"]])
    scores = metric.compute()
    chance = chance_by_type(records)
    for qtype, row in scores.items():
        if qtype == "all":
            row["chance"] = 100.0 * sum(1.0 / len(r["choices"]) for r in records) / len(records)
        else:
            row["chance"] = 100.0 * chance[qtype]
    return scores, predictions
