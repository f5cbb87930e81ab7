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
model answer is missing is counted as ``missing`` and not judged; a judgement without
scores is counted by reason and never scored. Each question is judged in both orders
(reference first, then model first) and scores the mean of its scored orders; the result
reports the judge's position bias, a bootstrap 95% interval on every relative score, the
judge model id and prompt version, and :func:`write_chart` draws the per-category bars.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llava_lite.claude.aio import run_sync
from llava_lite.evaluation.judge import JUDGE_PROMPT_VERSION, ClaudeJudge, Judgement, JudgeRequest
from llava_lite.evaluation.metrics import GroupedRelativeScore
from llava_lite.inference.answers import Question, numbered_records, read_answers, read_questions
from llava_lite.io import write_jsonl_atomic
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
    for where, record in numbered_records(path):  # errors name the file and line
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str):
            raise ValueError(f"{where}: a context line needs an 'image' string")
        captions = record.get("caption", record.get("captions"))
        lines = [captions] if isinstance(captions, str) else [str(c) for c in captions or []]
        boxes = [f"{inst['category']}: {inst['bbox']}" for inst in record.get("instances") or []]
        text = "\n".join(lines) + ("\n\n" + "\n".join(boxes) if boxes else "")
        if not text.strip():
            raise ValueError(f"{where}: image {image!r} has neither captions nor instances")
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
    both_orders: bool = False,
) -> tuple[list[JudgeRequest], list[str]]:
    """Judge requests for answered questions, and the ids of questions with no model answer.

    With ``both_orders`` each question gives two requests, reference first, then model first.
    A question with no context or no reference answer is an error: the benchmark files do
    not belong together.
    """
    orders = (False, True) if both_orders else (False,)
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
        requests.extend(
            JudgeRequest(
                question_id=q.question_id,
                category=category,
                context=contexts[q.image],
                question=q.text,
                reference_answer=str(reference["text"]),
                model_answer=str(answer["text"]),
                model_first=model_first,
            )
            for model_first in orders
        )
    return requests, missing


@dataclass
class BenchResult:
    # category | "all" -> relative, reference_mean, model_mean, count, ci95 ([low, high] of relative)
    scores: dict[str, dict[str, Any]]
    judged: int = 0  # questions scored in at least one order
    unscored: int = 0  # questions with no scored judgement
    missing: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed judgements by reason (each order)
    position_bias: dict[str, Any] | None = None  # with both orders: see position_bias()
    judge: dict[str, Any] = field(default_factory=dict)  # model id, prompt version, orders judged
    paid_requests: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "judged": self.judged,
            "missing": self.missing,
            "unscored": self.unscored,
            "failures": dict(self.failures),
            "position_bias": self.position_bias,
            "judge": self.judge,
            "paid_requests": self.paid_requests,
            "cache_hits": self.cache_hits,
            "cost_usd": round(self.cost_usd, 6),
        }


Scores = tuple[float, float]  # (reference, model)


def summarize(
    judgements: Sequence[Judgement], missing: int = 0, n_bootstrap: int = 1000, seed: int = 0
) -> BenchResult:
    """Relative score per category and overall, with a bootstrap 95% interval; failures counted.

    A question judged in both orders scores the mean of its scored orders; a failed judgement
    is counted by reason and never scored, and a question none of whose orders scored is
    ``unscored``. The interval resamples questions with replacement (``n_bootstrap`` times,
    seeded) and takes the 2.5th and 97.5th percentiles of the relative score.
    """
    failures: Counter[str] = Counter()
    pairs: dict[tuple[str, str], dict[bool, Scores]] = {}  # (question, category) -> model_first -> scores
    for j in judgements:
        orders = pairs.setdefault((str(j.request.question_id), j.request.category), {})
        if j.scores is None:
            failures[j.error or "unknown"] += 1
        else:
            orders[j.request.model_first] = j.scores
    metric = GroupedRelativeScore()
    rows: dict[str, list[Scores]] = {"all": []}
    for (_, category), orders in pairs.items():
        if orders:
            pair = (_mean(s[0] for s in orders.values()), _mean(s[1] for s in orders.values()))
            metric.update(*pair, [category])
            rows.setdefault(category, []).append(pair)
            rows["all"].append(pair)
    scores: dict[str, dict[str, Any]] = dict(metric.compute())
    for name, group in scores.items():
        group["ci95"] = bootstrap_ci(rows[name], n_bootstrap, seed)
    judged = sum(1 for orders in pairs.values() if orders)
    return BenchResult(
        scores=scores,
        judged=judged,
        unscored=len(pairs) - judged,
        missing=missing,
        failures=dict(failures),
        position_bias=position_bias(list(pairs.values())),
    )


def bootstrap_ci(pairs: Sequence[Scores], n: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile interval of ``100 * mean(model) / mean(reference)`` over resampled pairs."""
    scores = np.asarray(pairs, dtype=np.float64)  # [N, 2]
    draws = np.random.default_rng(seed).integers(0, len(scores), size=(n, len(scores)))  # [n, N]
    relative = 100.0 * scores[draws, 1].mean(axis=1) / scores[draws, 0].mean(axis=1)  # [n]
    low, high = np.percentile(relative, [2.5, 97.5])
    return [round(float(low), 3), round(float(high), 3)]


def position_bias(pairs: Sequence[Mapping[bool, Scores]]) -> dict[str, Any] | None:
    """How the order of the answers sways the judge, over questions scored in both orders.

    ``mean_score_change``: the mean change of an answer's score when it moves from second to
    first place (positive: the judge favours Assistant 1). ``flipped_share``: the share of
    questions whose preferred answer (higher score, or a tie) differs between the orders.
    None when no question was scored in both orders.
    """
    both = [(p[False], p[True]) for p in pairs if len(p) == 2]
    if not both:
        return None
    changes = [
        c
        for ref_first, model_first in both
        for c in (ref_first[0] - model_first[0], model_first[1] - ref_first[1])
    ]
    flips = sum(_preferred(ref_first) != _preferred(model_first) for ref_first, model_first in both)
    return {
        "questions": len(both),
        "mean_score_change": round(_mean(changes), 4),
        "flipped_share": round(flips / len(both), 4),
    }


def _preferred(scores: Scores) -> int:
    """1: the model's answer, -1: the reference, 0: a tie."""
    return int(np.sign(scores[1] - scores[0]))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def write_chart(result: BenchResult, path: str | Path) -> None:
    """A bar chart of the relative score per category (and overall) with its 95% interval."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    names = list(result.scores)
    relative = [result.scores[n]["relative"] for n in names]
    # A percentile interval need not contain the point estimate (rounding, one-question groups).
    low = [max(0.0, r - result.scores[n]["ci95"][0]) for n, r in zip(names, relative, strict=True)]
    high = [max(0.0, result.scores[n]["ci95"][1] - r) for n, r in zip(names, relative, strict=True)]
    fig = Figure(figsize=(1.6 + 1.2 * len(names), 3.6))
    ax = fig.add_subplot()
    ax.bar(names, relative, yerr=[low, high], capsize=4, color="#4C72B0")
    ax.axhline(100.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("relative score (%)")
    judge = result.judge
    ax.set_title(
        f"LLaVA-Bench, judge {judge.get('model', '?')} ({judge.get('prompt_version', '?')})", fontsize=9
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def evaluate(
    judge: ClaudeJudge,
    questions_file: str | Path,
    references_file: str | Path,
    answers_file: str | Path,
    contexts: Mapping[str, str],
    reviews_file: str | Path | None = None,
    both_orders: bool = True,
    chart_file: str | Path | None = None,
    cache_file: str | Path | None = None,
) -> BenchResult:
    """Judge every answered question (in both orders unless ``both_orders=False``); write one
    review per judgement (LLaVA's ``tuple`` layout) and, if asked, the per-category chart.

    The benchmark files are read and joined before anything is sent or written;
    ``cache_file`` is the judge's request cache (see :meth:`ClaudeJudge.judge_all`)."""
    questions = read_questions(questions_file)
    requests, missing = build_requests(
        questions,
        contexts,
        read_answers(references_file),
        read_answers(answers_file),
        questions_file,
        both_orders=both_orders,
    )
    judgements = run_sync(judge.judge_all(requests, cache_file))
    result = summarize(judgements, missing=len(missing))
    result.judge = {
        "model": judge.model,
        "prompt_version": JUDGE_PROMPT_VERSION,
        "orders": 2 if both_orders else 1,
    }
    result.paid_requests, result.cache_hits, result.cost_usd = (
        judge.paid_requests,
        judge.cache_hits,
        judge.spent_usd,
    )
    if reviews_file is not None:
        write_jsonl_atomic(reviews_file, (j.to_record() for j in judgements))  # reruns replay the cache
    if chart_file is not None:
        write_chart(result, chart_file)
    return result
