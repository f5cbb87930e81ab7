"""The generation run: COCO contexts → teacher → validated LLaVA samples, resumable.

A *job* is one (image, response type, sample index). Its id is the output record's ``id``,
so a rerun skips every job already in the output file. Each job gets at most
``max_attempts`` requests; a failed or rejected attempt is retried as a new request (its
own cache key), and every paid reply is in the request cache, so a rerun replays instead
of paying. Output lines are appended whole and fsynced; the summary and the optional JSON
export are written through temp + rename.

A budget stop or an API that refuses this client (:class:`ApiFatalError`: bad key, no
permission or credit) stops new requests, lets the ones in flight finish (their replies are
cached and their samples written), records ``stopped`` in the summary and, for the latter,
raises it. Any other exception in a worker stops the run the same way before it propagates.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from llava_lite.claude.aio import run_sync
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.client import ApiFatalError
from llava_lite.claude.estimate import TokenEstimator
from llava_lite.claude.prices import Budget, BudgetExceeded
from llava_lite.generation.base import GenerationRequest, Teacher, TeacherError, Usage
from llava_lite.generation.batches import BatchRunner
from llava_lite.generation.prompts import load_detail_instructions
from llava_lite.generation.settings import GenerateSettings
from llava_lite.generation.teacher import ClaudeTeacher, build_teacher
from llava_lite.generation.validation import SampleRejected, SampleValidator, dedupe_turns, to_conversations
from llava_lite.io import JsonlAppender, read_jsonl, repair_torn_tail, write_json_atomic
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
    unfinished_jobs: int = 0  # jobs not attempted (budget stop)
    skipped_images: Counter[str] = field(default_factory=Counter)
    skipped_jobs: Counter[str] = field(default_factory=Counter)  # e.g. nothing to show for this type
    duplicate_turns_dropped: int = 0
    paid_requests: int = 0
    cache_hits: int = 0
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
        for a local test server) go to ``AsyncAnthropic`` only and are never stored elsewhere."""
        self.settings = s = settings
        self.out_dir = Path(s.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.budget = Budget(s.budget_usd)
        self.cache: RequestCache | None = None
        if teacher is None:
            teacher = self._build_teacher(client_kwargs)
        self.teacher = teacher
        self.validator = SampleValidator(s.validation)
        self.summary = RunSummary()
        self._stop = False
        self._fatal: ApiFatalError | None = None

    def _build_teacher(self, client_kwargs: dict[str, Any]) -> Teacher:
        s, t = self.settings, self.settings.teacher
        if t.name != "anthropic":
            return build_teacher(t.name, seed=t.seed)
        self.cache = RequestCache(self.out_dir / CACHE_FILE)
        if t.base_url is not None:
            client_kwargs.setdefault("base_url", t.base_url)
        return ClaudeTeacher(
            model=t.model,
            max_tokens=t.max_tokens,
            context=s.context,
            prompt_version=s.prompt_version,
            prompt_caching=t.prompt_caching,
            concurrency=t.concurrency,
            max_retries=t.max_retries,
            timeout_s=t.timeout_s,
            max_retry_wait_s=t.max_retry_wait_s,
            cache=self.cache,
            budget=self.budget,
            prices=s.prices,
            estimator=TokenEstimator(s.estimate.encoding, s.estimate.token_ratio),
            client_kwargs=client_kwargs,
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
        """False when the parts this type is shown are empty (e.g. captions only, none given)."""
        if not isinstance(self.teacher, ClaudeTeacher):
            return True  # other teachers read the whole context themselves
        options = self.teacher.context[response_type]
        return bool(context.render(captions=options.captions, boxes=options.boxes).strip())

    def done_ids(self) -> set[str]:
        path = self.out_dir / OUTPUT_FILE
        repair_torn_tail(path)
        return {r["id"] for r in read_jsonl(path)}

    # ---- running ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Synchronous entry; works in notebooks too (see :func:`run_sync`)."""
        return run_sync(self.arun())

    async def arun(self) -> RunSummary:
        start = time.monotonic()
        lock = _lock_output_dir(self.out_dir)
        try:
            pending = list(self.jobs(self.contexts(), self.done_ids()))
            if self.settings.dry_run:
                self.summary.estimate = self.estimate(pending)
                return self.summary
            with JsonlAppender(self.out_dir / OUTPUT_FILE) as writer:
                await self._rounds(pending, writer)
            if self._fatal is not None:
                raise self._fatal
            if self.settings.export_json:
                write_json_atomic(self.out_dir / JSON_FILE, list(read_jsonl(self.out_dir / OUTPUT_FILE)))
            return self.summary
        finally:
            self.summary.elapsed_s = time.monotonic() - start
            self._finish_summary()
            if isinstance(self.teacher, ClaudeTeacher):
                await self.teacher.aclose()
            if self.cache is not None:
                self.cache.close()
            lock.close()

    async def _rounds(self, pending: list[GenerationRequest], writer: JsonlAppender) -> None:
        s = self.settings
        batch_mode = s.batch.enabled and isinstance(self.teacher, ClaudeTeacher)
        for attempt in range(s.max_attempts):
            if not pending or self._stop:
                break
            if batch_mode:
                await self._fill_by_batches(pending)
            retry = await self._run_round(pending, writer)
            if attempt + 1 < s.max_attempts:
                pending = [replace(r, attempt=attempt + 1) for r in retry]
            else:
                self.summary.failed_jobs += len(retry)
                pending = []
        self.summary.unfinished_jobs += len(pending)

    async def _fill_by_batches(self, requests: list[GenerationRequest]) -> None:
        assert isinstance(self.teacher, ClaudeTeacher)
        b = self.settings.batch
        runner = BatchRunner(
            self.teacher,
            max_requests_per_batch=b.max_requests_per_batch,
            poll_interval_s=b.poll_interval_s,
            max_wait_s=b.max_wait_s,
            max_rounds=b.max_rounds,
        )
        stats = await runner.fill_cache(requests)
        self.teacher.replay_only = True
        for k, v in vars(stats).items():
            if isinstance(v, Counter):
                merged = Counter(self.summary.batch.get(k, {}))
                merged.update(v)
                self.summary.batch[k] = dict(merged)
            elif isinstance(v, bool):
                self.summary.batch[k] = self.summary.batch.get(k, False) or v
            else:
                self.summary.batch[k] = self.summary.batch.get(k, 0) + v
        if stats.budget_stopped:
            self.summary.stopped = "budget"
            self._stop = True  # what was submitted is still read below; nothing new is bought

    async def _run_round(
        self, requests: list[GenerationRequest], writer: JsonlAppender
    ) -> list[GenerationRequest]:
        """Run ``requests`` with a bounded pool of workers; returns the ones to retry."""
        queue = iter(requests)
        retry: list[GenerationRequest] = []
        not_started: list[GenerationRequest] = []

        async def worker() -> None:
            for request in queue:
                if self._stop:
                    not_started.append(request)
                    continue
                try:
                    outcome = await self._one(request, writer)
                except BaseException:
                    self._stop = True  # the other workers finish what is in flight, then stop
                    not_started.append(request)
                    raise
                if outcome == "retry":
                    retry.append(request)
                elif outcome == "stopped":
                    not_started.append(request)

        n_workers = max(1, self.settings.teacher.concurrency)
        results = await asyncio.gather(*(worker() for _ in range(n_workers)), return_exceptions=True)
        self.summary.unfinished_jobs += len(not_started)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return retry

    async def _one(self, request: GenerationRequest, writer: JsonlAppender) -> str:
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
            return "retry"
        turns, dropped = dedupe_turns(reply.turns)
        self.summary.duplicate_turns_dropped += dropped
        try:
            conversations = to_conversations(turns)
            self.validator.validate(conversations)
        except SampleRejected as e:
            self.summary.rejects[e.reason] += 1
            log.info("image %s %s: rejected %s", request.context.image_id, request.response_type, e)
            return "retry"
        writer.append(self._record(request, conversations, reply.model))
        self.summary.samples[request.response_type] += 1
        return "ok"

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
            "prompt_version": getattr(self.teacher, "prompt_version", self.settings.prompt_version),
        }

    # ---- dry run ---------------------------------------------------------------------
    def estimate(self, requests: list[GenerationRequest]) -> dict[str, Any]:
        """Tokens and dollars the pending jobs would cost, counted with tiktoken; spends nothing.

        Expected: the shared prefix is written to the prompt cache once per type and read by
        every other request; outputs are ``expected_output_tokens``. Worst case: no cache
        hits and every reply runs to ``max_tokens``. Retries are not included.
        """
        if not isinstance(self.teacher, ClaudeTeacher):
            return {"requests": len(requests), "expected_usd": 0.0, "worst_case_usd": 0.0}
        est = self.teacher.estimator
        prices, batch = self.settings.prices, self.settings.batch.enabled
        expected, worst = Usage(), Usage()
        prefix_tokens: dict[str, int] = {}
        prefix_written: set[str] = set()
        for r in requests:
            body = self.teacher.body(r)
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
        if isinstance(self.teacher, ClaudeTeacher):
            self.summary.paid_requests = self.teacher.paid_requests
            self.summary.cache_hits = self.teacher.cache_hits
            self.summary.usage = self.teacher.usage
        self.summary.cost_usd = self.budget.spent_usd
        write_json_atomic(self.out_dir / SUMMARY_FILE, self.summary.to_dict())


def _lock_output_dir(out_dir: Path) -> IO[str]:
    """An exclusive lock on the output folder: two runs appending to one file would duplicate
    samples. The OS drops the lock when the process dies, so a killed run never blocks a rerun."""
    handle = open(out_dir / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"{out_dir} is in use by another generation run") from None
    return handle
