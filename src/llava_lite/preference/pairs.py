"""Preference pairs with AI feedback: sample k answers, judge each, keep best vs worst.

Three steps, each resumable from its own file in the run folder:

1. ``candidates.jsonl``: the model samples ``k`` answers per question
   (:func:`~llava_lite.inference.answers.sample_answers`: batched, seeded), one line per
   question, appended and fsynced.
2. ``judgements.jsonl``: a judge scores every distinct answer (Claude against the image's
   captions and boxes, :class:`~llava_lite.evaluation.answer_judge.ClaudeAnswerJudge`, or any
   :class:`~llava_lite.evaluation.answer_judge.AnswerJudge`), one line per answer as it comes
   back. A paid reply is in the request cache (``judge_requests.sqlite``) before it is
   parsed, so a killed run replays it on the rerun instead of paying again; a reply that
   yields no score is written with its reason (it would fail the same way again), counted,
   and never becomes a pair; a call that got no reply is counted and asked again next run.
3. ``pairs.jsonl``: per question, the best and the worst scored answers, when they differ
   and their scores are at least ``margin`` apart, with both scores, both reasons and the
   judge's model and prompt version; rewritten whole (temp + rename) from the two files
   above at the end of every run, so each pair appears once. A question without a pair is
   counted in ``summary.json`` by reason.

A budget stop or a refused client stops new judge requests, lets those in flight finish and
be written, and records ``stopped``; a rerun with the same ``output_dir`` continues. A run
folder judged by one model and prompt is never continued by another (one error line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_lite.claude.aio import run_sync
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError
from llava_lite.claude.prices import BudgetExceeded
from llava_lite.config import IMAGE_TOKEN
from llava_lite.evaluation.answer_judge import AnswerJudge, AnswerJudgement, AnswerRequest
from llava_lite.evaluation.judging import PaidJudge
from llava_lite.generation.base import BatchSettings
from llava_lite.inference.answers import Question, check_images, sample_answers
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.io import (
    JsonlAppender,
    lock_folder,
    read_jsonl,
    repair_torn_tail,
    write_json_atomic,
    write_jsonl_atomic,
)

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.jsonl"
JUDGEMENTS_FILE = "judgements.jsonl"
PAIRS_FILE = "pairs.jsonl"
CACHE_FILE = "judge_requests.sqlite"
SUMMARY_FILE = "summary.json"


@dataclass
class PairsSummary:
    questions: int = 0  # given
    skipped: Counter[str] = field(default_factory=Counter)  # not sampled: no_image, no_context
    sampled: int = 0  # questions sampled this run
    already_sampled: int = 0  # found in candidates.jsonl
    empty_answers: int = 0  # sampled answers with no text (never judged)
    judged: int = 0  # judgements written this run (scored or failed)
    already_judged: int = 0  # found in judgements.jsonl
    judge_errors: Counter[str] = field(default_factory=Counter)  # answers this run scored nothing, by reason
    unjudged: int = 0  # answers left for a rerun (stopped, or a call that got no reply)
    pairs: int = 0  # in pairs.jsonl
    no_pair: Counter[str] = field(default_factory=Counter)  # sampled questions without a pair, by reason
    judge: dict[str, str] = field(default_factory=dict)  # model, prompt_version
    paid_requests: int = 0
    bought_in_batches: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    stopped: str | None = None  # "budget" or the fatal API error's reason

    def to_dict(self) -> dict[str, Any]:
        d = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}
        d["cost_usd"] = round(self.cost_usd, 6)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def make_pairs(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    judge: AnswerJudge,
    out_dir: str | Path,
    *,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    margin: float = 2.0,
    batch_size: int = 8,
    seed: int = 0,
    image_root: str | Path | None = None,
    contexts: Mapping[str, str] | None = None,
    batch: BatchSettings | None = None,
) -> PairsSummary:
    """Sample ``k`` answers per question with ``model`` / ``processor`` (a ``LlavaModel`` and its
    ``LlavaProcessor``), judge them with ``judge`` and write ``pairs.jsonl`` in ``out_dir``;
    resumes whatever an earlier run there left. ``contexts`` (``{image file_name: symbolic
    context}``, e.g. :func:`~llava_lite.evaluation.llava_bench.contexts_from_coco`) is what a
    judge with ``needs_context`` reads; ``batch`` buys a paid judge's replies in Message Batches.
    Works in notebooks too (:func:`~llava_lite.claude.aio.run_sync`)."""
    sampling = DecodingSettings(max_new_tokens, True, temperature, top_p)
    if k < 2:
        raise ValueError(f"k={k}; valid: 2 or more (a pair needs two answers)")
    if margin <= 0:
        raise ValueError(f"margin={margin}; valid: > 0")
    run = _PairsRun(judge, Path(out_dir), margin, contexts or {}, batch or BatchSettings())
    sampler = {
        "k": k,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    return run_sync(run.arun(model, processor, questions, sampling, sampler, batch_size, image_root))


def choose_pair(
    candidate: Mapping[str, Any],
    judged: Mapping[str, Mapping[str, Any]],
    margin: float,
    judge: Mapping[str, str],
) -> tuple[dict[str, Any] | None, str]:
    """The pair of one question's candidates (``judged``: answer text -> judgement record), or
    None and why: ``unjudged`` (an answer has no judgement yet), ``identical_answers`` (fewer
    than two distinct texts), ``too_few_scored`` (fewer than two answers scored) or
    ``below_margin``. Ties keep the earlier answer on top and the later one at the bottom."""
    texts = distinct_answers(candidate["answers"])
    if any(t not in judged for t in texts):
        return None, "unjudged"
    if len(texts) < 2:
        return None, "identical_answers"
    scored = [
        (float(judged[t]["score"]), i, t) for i, t in enumerate(texts) if judged[t]["score"] is not None
    ]
    if len(scored) < 2:
        return None, "too_few_scored"
    best = max(scored, key=lambda s: (s[0], -s[1]))
    worst = min(scored, key=lambda s: (s[0], -s[1]))
    if best[0] - worst[0] < margin:
        return None, "below_margin"
    return {
        "id": candidate["id"],
        "image": candidate["image"],
        "prompt": f"{IMAGE_TOKEN}\n{candidate['question']}",
        "chosen": best[2],
        "rejected": worst[2],
        "chosen_score": best[0],
        "rejected_score": worst[0],
        "chosen_reason": judged[best[2]]["reason"],
        "rejected_reason": judged[worst[2]]["reason"],
        "judge": dict(judge),
    }, "pair"


def distinct_answers(answers: Sequence[str]) -> list[str]:
    """The non-empty answer texts, first occurrence of each: identical texts are judged once."""
    return list(dict.fromkeys(a for a in answers if a.strip()))


class _PairsRun:
    def __init__(
        self,
        judge: AnswerJudge,
        out_dir: Path,
        margin: float,
        contexts: Mapping[str, str],
        batch: BatchSettings,
    ) -> None:
        self.judge = judge
        self.paid = judge if isinstance(judge, PaidJudge) else None
        self.out_dir = out_dir
        self.margin = margin
        self.contexts = contexts
        self.batch = batch
        self.summary = PairsSummary(judge={"model": judge.model, "prompt_version": judge.prompt_version})
        self._stop = False
        self._fatal: ApiFatalError | None = None

    async def arun(
        self,
        model: Any,
        processor: Any,
        questions: Sequence[Question],
        sampling: DecodingSettings,
        sampler: dict[str, Any],
        batch_size: int,
        image_root: str | Path | None,
    ) -> PairsSummary:
        start = time.monotonic()
        usable = self._usable(questions)
        check_images(usable, image_root)  # a missing image fails before the folder is touched
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(self.out_dir, "pairs run")
        opened_cache = False
        try:
            candidates = self._read_candidates(sampler)
            judged = self._read_judgements()
            todo = [q for q in usable if str(q.question_id) not in candidates]
            self.summary.already_sampled = len(usable) - len(todo)
            if self.paid is not None and (todo or self._requests(candidates, judged)):
                await self.paid.check_model()  # before any sampling or paid work
            with JsonlAppender(self.out_dir / CANDIDATES_FILE) as out:
                k = sampler["k"]
                for q, answers in sample_answers(
                    model, processor, todo, k, settings=sampling, image_root=image_root,
                    batch_size=batch_size, seed=sampler["seed"],
                ):  # fmt: skip
                    record = {
                        "id": str(q.question_id), "image": q.image, "question": q.text,
                        "answers": answers, "sampling": sampler,
                    }  # fmt: skip
                    out.append(record)
                    candidates[record["id"]] = record
                    self.summary.sampled += 1
            requests = self._requests(candidates, judged)
            self.summary.already_judged = len(judged)
            if self.paid is not None and self.paid.cache is None:
                self.paid.cache = RequestCache(self.out_dir / CACHE_FILE)
                opened_cache = True
            try:
                await self._judge_all(requests, judged)
            finally:
                self._write_pairs(candidates, judged)
                self._finish(start)
        finally:
            if self.paid is not None:
                await self.paid.aclose()
                if opened_cache and self.paid.cache is not None:
                    self.paid.cache.close()
                    self.paid.cache = None
            os.close(lock)
        if self._fatal is not None:
            raise self._fatal
        return self.summary

    # ---- inputs ----------------------------------------------------------------------
    def _usable(self, questions: Sequence[Question]) -> list[Question]:
        kept = []
        for q in questions:
            if not q.image:
                self.summary.skipped["no_image"] += 1
            elif self.judge.needs_context and not self.contexts.get(q.image, "").strip():
                self.summary.skipped["no_context"] += 1
            else:
                kept.append(q)
        self.summary.questions = len(questions)
        for reason, n in self.summary.skipped.items():
            log.warning("skipping %d questions: %s", n, reason)
        return kept

    def _read_candidates(self, sampler: dict[str, Any]) -> dict[str, dict[str, Any]]:
        path = self.out_dir / CANDIDATES_FILE
        repair_torn_tail(path)
        candidates: dict[str, dict[str, Any]] = {}
        for r in read_jsonl(path):
            if r.get("sampling") != sampler:
                raise ValueError(
                    f"{path}: question {r.get('id')!r} was sampled with {r.get('sampling')}, this run samples "
                    f"with {sampler}; use another output_dir"
                )
            candidates[r["id"]] = r
        return candidates

    def _read_judgements(self) -> dict[tuple[str, str], dict[str, Any]]:
        path = self.out_dir / JUDGEMENTS_FILE
        repair_torn_tail(path)
        judged: dict[tuple[str, str], dict[str, Any]] = {}
        for r in read_jsonl(path):
            if r.get("judge") != self.summary.judge:
                raise ValueError(
                    f"{path}: answers were judged by {r.get('judge')}, this run's judge is "
                    f"{self.summary.judge}; use another output_dir"
                )
            judged[(r["id"], r["answer"])] = r
        return judged

    def _requests(
        self, candidates: Mapping[str, Mapping[str, Any]], judged: Mapping[tuple[str, str], Any]
    ) -> list[AnswerRequest]:
        requests = []
        for qid, c in candidates.items():
            for text in distinct_answers(c["answers"]):
                if (qid, text) not in judged:
                    context = self.contexts.get(c["image"], "") if self.judge.needs_context else ""
                    requests.append(AnswerRequest(qid, c["image"], c["question"], text, context))
        return requests

    # ---- judging ---------------------------------------------------------------------
    async def _judge_all(
        self, requests: list[AnswerRequest], judged: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        if not requests:
            return
        if self.paid is not None and self.batch.enabled:
            stats = await self.paid.fill_by_batches(requests, self.batch)
            self.summary.bought_in_batches += stats.succeeded
            if stats.budget_stopped:
                self.summary.stopped = "budget"
        queue = deque(requests)
        with JsonlAppender(self.out_dir / JUDGEMENTS_FILE) as out:

            async def worker() -> None:
                while queue and not self._stop:
                    request = queue.popleft()
                    try:
                        judgement = await self.judge.judge(request)
                    except BudgetExceeded as e:
                        if not self._stop:
                            log.warning("stopping: %s; finished judgements are kept", e)
                        self._stop, self.summary.stopped = True, "budget"
                        return
                    except ApiFatalError as e:
                        if self._fatal is None:
                            log.error("stopping: the API refuses this client (%s); finished work is kept", e)
                            self._fatal, self.summary.stopped = e, e.reason
                        self._stop = True
                        return
                    except BaseException:
                        self._stop = True  # the other workers finish what is in flight, then stop
                        raise
                    self._take(judgement, out, judged)

            n_workers = getattr(self.judge, "concurrency", 1)
            results = await asyncio.gather(*(worker() for _ in range(n_workers)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _take(
        self, j: AnswerJudgement, out: JsonlAppender, judged: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        r = j.request
        never_sent = j.error == "no_batch_result" and self.summary.stopped == "budget"  # the cap stopped it
        if j.error is not None and not never_sent:
            self.summary.judge_errors[j.error] += 1
        if j.score is None and not j.stored:
            return  # no reply was stored: the rerun asks again
        record = {
            "id": str(r.question_id), "answer": r.answer, "score": j.score, "reason": j.reason,
            "error": j.error, "judge": self.summary.judge,
        }  # fmt: skip
        out.append(record)
        judged[(record["id"], r.answer)] = record
        self.summary.judged += 1

    # ---- pairs -----------------------------------------------------------------------
    def _write_pairs(
        self, candidates: Mapping[str, Mapping[str, Any]], judged: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> None:
        pairs = []
        by_question: dict[str, dict[str, Mapping[str, Any]]] = {}
        for (qid, text), record in judged.items():
            by_question.setdefault(qid, {})[text] = record
        self.summary.no_pair.clear()
        self.summary.empty_answers = 0
        answers_left = 0
        for qid, c in candidates.items():
            self.summary.empty_answers += sum(not a.strip() for a in c["answers"])
            mine = by_question.get(qid, {})
            answers_left += sum(t not in mine for t in distinct_answers(c["answers"]))
            pair, why = choose_pair(c, mine, self.margin, self.summary.judge)
            if pair is None:
                self.summary.no_pair[why] += 1
            else:
                pairs.append(pair)
        self.summary.unjudged = answers_left
        self.summary.pairs = len(pairs)
        write_jsonl_atomic(self.out_dir / PAIRS_FILE, pairs)

    def _finish(self, start: float) -> None:
        if self.paid is not None:
            self.summary.paid_requests = self.paid.paid_requests
            self.summary.cache_hits = self.paid.cache_hits
            self.summary.cost_usd = self.paid.budget.spent_usd
        self.summary.elapsed_s = time.monotonic() - start
        write_json_atomic(self.out_dir / SUMMARY_FILE, self.summary.to_dict())
