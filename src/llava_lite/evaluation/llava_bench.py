"""LLaVA-Bench: read the benchmark files, judge model answers against references, summarise.

Files, as the original LLaVA release ships them:

- ``questions.jsonl``: ``{"question_id", "image", "text", "category"}`` with category
  ``conv`` / ``detail`` / ``complex``;
- context, keyed by ``image``: LLaVA-Bench (In-the-Wild) ``context.jsonl`` lines
  ``{"id", "image", "caption"}``, or the COCO set's ``{"image", "captions": [...],
  "instances": [{"category", "bbox"}]}``; or, for COCO-format data (the synthetic world),
  the symbolic context (captions + normalised boxes) of ``llava_lite.symbolic``;
- reference answers (``answers_gpt4.jsonl``) and model answers: ``{"question_id", "text"}``.

Questions are joined to answers by ``question_id`` (not by line order). A question whose
model answer is missing is counted as ``missing`` and not judged; one whose judgement has
no scores is counted by reason. Neither enters the means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_lite.claude.aio import run_sync
from llava_lite.evaluation.judge import ClaudeJudge, Judgement, JudgeRequest
from llava_lite.evaluation.metrics import GroupedRelativeScore
from llava_lite.inference.answers import Question, read_answers, read_questions
from llava_lite.io import read_jsonl, write_jsonl_atomic
from llava_lite.symbolic import load_coco

CATEGORIES = {
    "conv": "conversation",
    "conversation": "conversation",
    "detail": "detail",
    "complex": "complex",
    "complex_reasoning": "complex",
}


def category_of(question: Question, source: str | Path) -> str:
    name = CATEGORIES.get(question.category or "")
    if name is None:
        raise ValueError(
            f"{source}: question {question.question_id!r} has category {question.category!r}; "
            f"valid: {sorted(CATEGORIES)}"
        )
    return name


def read_contexts(path: str | Path) -> dict[str, str]:
    """``{image: context text}`` from a LLaVA-Bench context JSONL (either layout above)."""
    contexts: dict[str, str] = {}
    for i, record in enumerate(read_jsonl(path), 1):
        image = record.get("image")
        if not isinstance(image, str):
            raise ValueError(f"{path}:{i}: a context line needs an 'image' string")
        captions = record.get("caption", record.get("captions"))
        lines = [captions] if isinstance(captions, str) else [str(c) for c in captions or []]
        boxes = [f"{inst['category']}: {inst['bbox']}" for inst in record.get("instances") or []]
        text = "\n".join(lines) + ("\n\n" + "\n".join(boxes) if boxes else "")
        if not text.strip():
            raise ValueError(f"{path}:{i}: image {image!r} has neither captions nor instances")
        contexts[image] = text
    return contexts


def contexts_from_coco(captions_file: str | Path, instances_file: str | Path | None = None) -> dict[str, str]:
    """``{file_name: symbolic context}`` (captions, then one line per box) from COCO-format files."""
    return {
        c.file_name: c.render(captions=True, boxes=True) for c in load_coco(captions_file, instances_file)
    }


def build_requests(
    questions: Sequence[Question],
    contexts: Mapping[str, str],
    references: Mapping[str, Mapping[str, Any]],
    answers: Mapping[str, Mapping[str, Any]],
    source: str | Path = "questions",
) -> tuple[list[JudgeRequest], list[str]]:
    """Judge requests for answered questions, and the ids of questions with no model answer.

    A question with no context or no reference answer is an error: the benchmark files do
    not belong together.
    """
    requests: list[JudgeRequest] = []
    missing: list[str] = []
    for q in questions:
        category = category_of(q, source)
        if q.image is None or q.image not in contexts:
            raise KeyError(f"{source}: question {q.question_id!r}: no context for image {q.image!r}")
        reference = references.get(q.key)
        if reference is None:
            raise KeyError(f"{source}: question {q.question_id!r} has no reference answer")
        answer = answers.get(q.key)
        if answer is None:
            missing.append(q.key)
            continue
        requests.append(
            JudgeRequest(
                question_id=q.question_id,
                category=category,
                context=contexts[q.image],
                question=q.text,
                reference_answer=str(reference["text"]),
                model_answer=str(answer["text"]),
            )
        )
    return requests, missing


@dataclass
class BenchResult:
    scores: dict[str, dict[str, float]]  # category | "all" -> relative, reference_mean, model_mean, count
    judged: int = 0
    missing: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count (unparseable, api_status_..)
    paid_requests: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0

    @property
    def unscored(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "judged": self.judged,
            "missing": self.missing,
            "unscored": self.unscored,
            "failures": dict(self.failures),
            "paid_requests": self.paid_requests,
            "cache_hits": self.cache_hits,
            "cost_usd": round(self.cost_usd, 6),
        }


def summarize(judgements: Sequence[Judgement], missing: int = 0) -> BenchResult:
    """Relative score per category and overall from judgements; failures counted by reason."""
    metric = GroupedRelativeScore()
    failures: Counter[str] = Counter()
    for j in judgements:
        if j.scores is None:
            failures[j.error or "unknown"] += 1
            continue
        reference, model = j.scores
        metric.update(reference, model, [j.request.category])
    scored = len(judgements) - sum(failures.values())
    return BenchResult(scores=metric.compute(), judged=scored, missing=missing, failures=dict(failures))


def evaluate(
    judge: ClaudeJudge,
    questions_file: str | Path,
    references_file: str | Path,
    answers_file: str | Path,
    contexts: Mapping[str, str],
    reviews_file: str | Path | None = None,
) -> BenchResult:
    """Judge every answered question; write one review per line (LLaVA's ``tuple`` layout)."""
    questions = read_questions(questions_file)
    requests, missing = build_requests(
        questions, contexts, read_answers(references_file), read_answers(answers_file), questions_file
    )
    judgements = run_sync(judge.judge_all(requests))
    if reviews_file is not None:
        write_jsonl_atomic(reviews_file, (j.to_record() for j in judgements))  # reruns replay the cache
    result = summarize(judgements, missing=len(missing))
    result.paid_requests, result.cache_hits, result.cost_usd = (
        judge.paid_requests,
        judge.cache_hits,
        judge.spent_usd,
    )
    return result
