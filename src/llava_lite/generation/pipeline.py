"""The generation run: COCO contexts → teacher → validated LLaVA samples, resumable.

A *job* is one (image, response type, sample index). Its id is the output record's ``id``,
so a rerun skips every job already in the output file. Each job gets at most
``max_attempts`` requests; a failed or rejected attempt is retried as a new request (its
own cache key; after a reply cut by ``max_tokens`` with a doubled ``max_tokens``, up to
``teacher.max_tokens_after_cut``), and every paid reply is in the request cache, so a rerun
replays instead of paying. Jobs that used all their attempts are listed in the summary
(``failed_samples``: id -> last reason); a rerun replays their stored failures for free,
unless ``retry_stored_failures=true``, which gives each such job fresh paid attempts.
Output lines are appended whole and fsynced; the summary and the optional JSON export are
written through temp + rename.

Starting checks everything that can fail before the run folder is touched: the input
files, the prices of the model (when the teacher is built), and, before any paid work,
the model's lifecycle (:meth:`PaidTeacher.check_model`), and the output already written.
A failed start leaves an existing run folder exactly as it was. A dry run
(``dry_run=true``) writes nothing at all, not even ``summary.json``: its estimate is
returned in :attr:`RunSummary.estimate` (the command prints it).

A budget stop or an API that refuses this client (:class:`ApiFatalError`: bad key, no
permission or credit, unreachable) stops new requests, lets the ones in flight finish
(their replies are cached and their samples written), records ``stopped`` in the summary
and, for the latter, raises it. Any other exception in a worker stops the run the same
way before it propagates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llava_lite.claude.aio import run_sync
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError
from llava_lite.claude.estimate import TokenEstimator
from llava_lite.claude.prices import Budget, BudgetExceeded, Usage
from llava_lite.generation.base import GenerationRequest, PaidTeacher, Teacher, TeacherError
from llava_lite.generation.prompts import load_detail_instructions
from llava_lite.generation.settings import GenerateSettings
from llava_lite.generation.teacher import ClaudeTeacher, build_teacher
from llava_lite.generation.validation import SampleRejected, SampleValidator, dedupe_turns, to_conversations
from llava_lite.io import JsonlAppender, lock_folder, read_jsonl, repair_torn_tail, write_json_atomic
from llava_lite.symbolic import SymbolicContext, load_coco

log = logging.getLogger(__name__)

OUTPUT_FILE = "instruct.jsonl"
JSON_FILE = "instruct.json"
CACHE_FILE = "requests.sqlite"
SUMMARY_FILE = "summary.json"


def sample_id(context: SymbolicContext, response_type: str, sample_index: int) -> str:
    return f"{context.image_id}_{response_type}_{sample_index}"


@dataclass
class RunSummary:
    samples: Counter[str] = field(default_factory=Counter)  # written this run, per response type
    already_done: int = 0  # found in the output from an earlier run
    rejects: Counter[str] = field(default_factory=Counter)  # validation, by reason
    teacher_errors: Counter[str] = field(default_factory=Counter)  # replies that are not data, by reason
    failed_jobs: int = 0  # jobs that used all their attempts
    failed_samples: dict[str, str] = field(default_factory=dict)  # their ids -> the last attempt's reason
    unfinished_jobs: int = 0  # jobs not attempted (budget stop)
    skipped_images: Counter[str] = field(default_factory=Counter)
    skipped_jobs: Counter[str] = field(default_factory=Counter)  # e.g. nothing to show for this type
    duplicate_turns_dropped: int = 0
    paid_requests: int = 0  # replies bought one by one this run
    bought_in_batches: int = 0  # replies bought in Message Batches this run
    cache_hits: int = 0  # replies replayed from earlier runs (paid for then)
    batch: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    elapsed_s: float = 0.0
    stopped: str | None = None  # "budget" (the cap) or the fatal API error's reason, e.g. "api_status_401"
    estimate: dict[str, Any] | None = None  # dry run only

    def to_dict(self) -> dict[str, Any]:
        d = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}
        d["usage"] = asdict(self.usage)
        d["samples_total"] = sum(self.samples.values())
        d["cost_usd"] = round(self.cost_usd, 6)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


class GenerationPipeline:
    def __init__(
        self, settings: GenerateSettings, teacher: Teacher | None = None, **client_kwargs: Any
    ) -> None:
        """``teacher`` overrides the configured one; ``client_kwargs`` (e.g. ``api_key``, ``base_url``
        for a local test server) go to ``AsyncAnthropic`` only and are never stored elsewhere.
        Nothing is written here: a model without prices or an unknown teacher fails first."""
        self.settings = settings
        self.out_dir = Path(settings.output_dir)
        self.budget = Budget(settings.budget_usd)
        self.cache: RequestCache | None = None
        if teacher is None:
            teacher = self._build_teacher(client_kwargs)
        self.teacher = teacher
        self.paid: PaidTeacher | None = teacher if isinstance(teacher, PaidTeacher) else None
        self.validator = SampleValidator(settings.validation)
        self.summary = RunSummary()
        self._stop = False
        self._fatal: ApiFatalError | None = None

    def _build_teacher(self, client_kwargs: dict[str, Any]) -> Teacher:
        s, t = self.settings, self.settings.teacher
        if t.target is not None:  # a teacher named by `_target_` in config
            return build_teacher(t.target)
        if t.base_url is not None:
            client_kwargs.setdefault("base_url", t.base_url)
        return ClaudeTeacher(
            t.model,
            context=s.context,
            prompt_version=s.prompt_version,
            prompt_caching=t.prompt_caching,
            budget=self.budget,
            estimator=TokenEstimator(s.estimate.encoding, s.estimate.token_ratio),
            client_kwargs=client_kwargs,
            **t.paying(),
        )

    # ---- jobs ------------------------------------------------------------------------
    def contexts(self) -> list[SymbolicContext]:
        s = self.settings
        contexts = load_coco(s.captions_file, s.instances_file)
        if s.max_images is not None:
            contexts = contexts[: s.max_images]
        kept = []
        for c in contexts:
            if not c.captions and not c.objects:
                self.summary.skipped_images["no_annotations"] += 1
            elif s.image_root is not None and not (Path(s.image_root) / c.file_name).is_file():
                self.summary.skipped_images["missing_image"] += 1
            else:
                kept.append(c)
        for reason, n in self.summary.skipped_images.items():
            log.warning("skipping %d images: %s", n, reason)
        return kept

    def jobs(self, contexts: list[SymbolicContext], done: set[str]) -> Iterator[GenerationRequest]:
        s = self.settings
        instructions = load_detail_instructions(s.prompt_version)
        for c in contexts:
            for rtype in s.response_types:
                for k in range(s.samples_per_type.get(rtype, 0)):
                    if sample_id(c, rtype, k) in done:
                        self.summary.already_done += 1
                        continue
                    if not self._has_context(c, rtype):
                        self.summary.skipped_jobs["empty_context"] += 1
                        continue
                    instruction = None
                    if rtype == "detail":
                        instruction = random.Random(f"{s.seed}:{c.image_id}:{k}").choice(instructions)
                    yield GenerationRequest(
                        context=c, response_type=rtype, sample_index=k, instruction=instruction
                    )

    def _has_context(self, context: SymbolicContext, response_type: str) -> bool:
        """False when the parts this type is shown are empty (e.g. captions only, none given);
        unpaid teachers read the whole context themselves."""
        return self.paid is None or self.paid.shows(context, response_type)

    def done_ids(self, repair: bool = True) -> set[str]:
        """Ids already in the output. ``repair=False`` (the dry run) leaves a torn last line in
        place and does not count it: its job was never done."""
        path = self.out_dir / OUTPUT_FILE
        if repair:
            repair_torn_tail(path)
        return {r["id"] for r in read_jsonl(path, torn_tail_ok=not repair)}

    # ---- running ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Synchronous entry; works in notebooks too (see :func:`run_sync`)."""
        return run_sync(self.arun())

    async def arun(self) -> RunSummary:
        """Start (read-only: inputs, lock, model check, pending jobs), then either the dry run's
        estimate, which writes nothing, or the paid work, which ends by writing ``summary.json``."""
        start = time.monotonic()
        lock: int | None = None
        dry = self.settings.dry_run
        try:
            contexts = self.contexts()  # a missing or malformed input fails before the folder is touched
            if self.out_dir.is_dir():  # locking changes nothing in the folder
                lock = _lock_output_dir(self.out_dir)
            if self.paid is not None and not dry:
                await self.paid.check_model()  # before any paid work and any write
            pending = list(self.jobs(contexts, self.done_ids(repair=not dry)))
            if dry:
                self.summary.estimate = self.estimate(pending)
                self.summary.elapsed_s = time.monotonic() - start
                return self.summary
            if lock is None:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                lock = _lock_output_dir(self.out_dir)
            try:
                await self._run(pending)
            finally:
                self.summary.elapsed_s = time.monotonic() - start
                self._finish_summary()
                if self.cache is not None:
                    self.cache.close()
        finally:
            if lock is not None:
                os.close(lock)
            if self.paid is not None:
                await self.paid.aclose()
        return self.summary

    async def _run(self, pending: list[GenerationRequest]) -> None:
        if self.paid is not None:
            self.cache = RequestCache(self.out_dir / CACHE_FILE)
            self.paid.use_cache(self.cache)
        with JsonlAppender(self.out_dir / OUTPUT_FILE) as writer:
            await self._rounds(pending, writer)
        if self._fatal is not None:
            raise self._fatal
        if self.settings.export_json:
            write_json_atomic(self.out_dir / JSON_FILE, list(read_jsonl(self.out_dir / OUTPUT_FILE)))

    async def _rounds(self, pending: list[GenerationRequest], writer: JsonlAppender) -> None:
        """Rounds of requests until every job is written, failed or stopped.

        A job fails after ``max_attempts`` tries; with ``retry_stored_failures`` a failure
        replayed from the cache does not count as a try, so the job gets fresh paid ones.
        """
        s = self.settings
        tries: Counter[str] = Counter()
        while pending and not self._stop:
            if self.paid is not None and s.batch.enabled:
                await self._fill_by_batches(pending)
            failed = await self._run_round(pending, writer)
            pending = []
            for request, reason, stored in failed:
                sid = sample_id(request.context, request.response_type, request.sample_index)
                if not (stored and s.retry_stored_failures):
                    tries[sid] += 1
                if tries[sid] < s.max_attempts:
                    pending.append(self._next_attempt(request, reason))
                else:
                    self.summary.failed_jobs += 1
                    self.summary.failed_samples[sid] = reason
        self.summary.unfinished_jobs += len(pending)

    def _next_attempt(self, request: GenerationRequest, reason: str) -> GenerationRequest:
        """The retry of a failed attempt: a new cache key, and room to finish after a cut reply."""
        max_tokens = request.max_tokens
        if reason == "max_tokens":
            t = self.settings.teacher
            max_tokens = max(
                max_tokens or t.max_tokens, min(2 * (max_tokens or t.max_tokens), t.max_tokens_after_cut)
            )
        return replace(request, attempt=request.attempt + 1, max_tokens=max_tokens)

    async def _fill_by_batches(self, requests: list[GenerationRequest]) -> None:
        assert self.paid is not None
        stats = await self.paid.fill_by_batches(requests, self.settings.batch)
        for k, v in vars(stats).items():
            if isinstance(v, Counter):
                merged = Counter(self.summary.batch.get(k, {}))
                merged.update(v)
                self.summary.batch[k] = dict(merged)
            elif isinstance(v, bool):
                self.summary.batch[k] = self.summary.batch.get(k, False) or v
            else:
                self.summary.batch[k] = self.summary.batch.get(k, 0) + v
        self.summary.bought_in_batches += stats.succeeded
        if stats.budget_stopped:
            self.summary.stopped = "budget"
            self._stop = True  # what was submitted is still read below; nothing new is bought

    async def _run_round(
        self, requests: list[GenerationRequest], writer: JsonlAppender
    ) -> list[tuple[GenerationRequest, str, bool]]:
        """Run ``requests`` with a bounded pool of workers; returns the failed attempts as
        (request, reason, whether the failure was replayed from the cache)."""
        queue = deque(requests)
        failed: list[tuple[GenerationRequest, str, bool]] = []
        not_started: list[GenerationRequest] = []

        async def worker() -> None:
            while queue:
                request = queue.popleft()
                if self._stop:
                    not_started.append(request)
                    continue
                try:
                    outcome = await self._one(request, writer)
                except BaseException:
                    self._stop = True  # the other workers finish what is in flight, then stop
                    not_started.append(request)
                    raise
                if outcome == "stopped":
                    not_started.append(request)
                elif outcome is not None:
                    failed.append((request, *outcome))

        n_workers = max(1, self.settings.teacher.concurrency)
        results = await asyncio.gather(*(worker() for _ in range(n_workers)), return_exceptions=True)
        self.summary.unfinished_jobs += len(not_started)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return failed

    async def _one(self, request: GenerationRequest, writer: JsonlAppender) -> tuple[str, bool] | str | None:
        """None when the sample was written, "stopped", or (reason, replayed) for a failed attempt."""
        try:
            reply = await self.teacher.generate(request)
        except BudgetExceeded as e:
            if not self._stop:
                log.warning("stopping: %s; finished samples are kept", e)
            self._stop = True
            self.summary.stopped = "budget"
            return "stopped"
        except ApiFatalError as e:
            if self._fatal is None:
                log.error("stopping: the API refuses this client (%s); finished samples are kept", e)
                self._fatal = e
                self.summary.stopped = e.reason
            self._stop = True
            return "stopped"
        except TeacherError as e:
            if e.reason == "no_batch_result" and self.summary.stopped == "budget":
                return "stopped"  # never submitted: the cap stopped batch submission
            self.summary.teacher_errors[e.reason] += 1
            log.info("image %s %s: teacher error %s", request.context.image_id, request.response_type, e)
            return e.reason, e.cached
        turns, dropped = dedupe_turns(reply.turns)
        self.summary.duplicate_turns_dropped += dropped
        try:
            conversations = to_conversations(turns)
            self.validator.validate(conversations)
        except SampleRejected as e:
            self.summary.rejects[e.reason] += 1
            log.info("image %s %s: rejected %s", request.context.image_id, request.response_type, e)
            return e.reason, reply.cached
        record = self._record(request, conversations, reply.model)
        writer.append(record)
        self.summary.samples[request.response_type] += 1
        return None

    def _record(
        self, request: GenerationRequest, conversations: list[dict[str, str]], model: str
    ) -> dict[str, Any]:
        c = request.context
        return {
            "id": sample_id(c, request.response_type, request.sample_index),
            "image": c.file_name,
            "conversations": conversations,
            "response_type": request.response_type,
            "image_id": c.image_id,
            "sample_index": request.sample_index,
            "teacher": self.teacher.name,
            "model": model,
            "prompt_version": self.paid.prompt_version
            if self.paid is not None
            else self.settings.prompt_version,
        }

    # ---- dry run ---------------------------------------------------------------------
    def estimate(self, requests: list[GenerationRequest]) -> dict[str, Any]:
        """Tokens and dollars the pending jobs would cost, counted with tiktoken; spends nothing.

        Expected: the shared prefix is written to the prompt cache once per type and read by
        every other request; outputs are ``expected_output_tokens``. Worst case: no cache
        hits and every reply runs to ``max_tokens``. Retries are not included.
        """
        if self.paid is None:
            return {"requests": len(requests), "expected_usd": 0.0, "worst_case_usd": 0.0}
        est = self.paid.estimator
        prices, batch = self.paid.prices, self.settings.batch.enabled
        expected, worst = Usage(), Usage()
        prefix_tokens: dict[str, int] = {}
        prefix_written: set[str] = set()
        for r in requests:
            body = self.paid.body(r)
            prefix, message = est.prefix_tokens(body), est.message_tokens(body)
            prefix_tokens[r.response_type] = prefix
            out = self.settings.estimate.expected_output_tokens.get(
                r.response_type, self.settings.teacher.max_tokens
            )
            if not self.settings.teacher.prompt_caching:
                expected = expected + Usage(input_tokens=prefix + message, output_tokens=out)
            elif r.response_type in prefix_written:
                expected = expected + Usage(
                    input_tokens=message, output_tokens=out, cache_read_input_tokens=prefix
                )
            else:
                prefix_written.add(r.response_type)
                expected = expected + Usage(
                    input_tokens=message, output_tokens=out, cache_creation_input_tokens=prefix
                )
            worst = worst + Usage(input_tokens=prefix + message, output_tokens=int(body["max_tokens"]))
        minimum = self.settings.estimate.min_cacheable_tokens
        for rtype, n in prefix_tokens.items():
            if self.settings.teacher.prompt_caching and n < minimum:
                log.warning(
                    "%s: shared prefix ~%d tokens < %d, the model may not cache it", rtype, n, minimum
                )
        return {
            "requests": len(requests),
            "encoding": self.settings.estimate.encoding,
            "prefix_tokens": prefix_tokens,
            "expected_usage": asdict(expected),
            "expected_usd": round(prices.cost(expected, batch=batch), 6),
            "worst_case_usd": round(prices.cost(worst, batch=batch), 6),
            "budget_usd": self.settings.budget_usd,
        }

    def _finish_summary(self) -> None:
        if self.paid is not None:
            self.summary.paid_requests = self.paid.paid_requests
            self.summary.cache_hits = self.paid.cache_hits
            self.summary.usage = self.paid.usage
        self.summary.cost_usd = self.budget.spent_usd
        write_json_atomic(self.out_dir / SUMMARY_FILE, self.summary.to_dict())


def _lock_output_dir(out_dir: Path) -> int:
    """The run folder's lock (:func:`~llava_lite.io.lock_folder`); the folder's descriptor to close."""
    return lock_folder(out_dir, "generation run")
