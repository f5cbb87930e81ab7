"""Batch answers to LLaVA-format questions, written as LLaVA's ``model_vqa`` writes them.

Questions: JSON Lines (or a JSON array) of ``{"question_id", "text", "image"?, ...}``; the
image, if named, is read from ``image_root``. LLaVA's conversation-format question files
(``llava_test_CQM-A.json``: ``{"id", "image"?, "conversations"}``) are read as LLaVA's
``model_vqa_science`` reads them: the id, and the first turn without its ``<image>`` marker.
Answers: one JSON line per question with
``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``, ``metadata``. Lines are
appended and fsynced batch by batch, so a killed run resumes where it stopped: question ids
already in the answers file are skipped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llava_lite.config import IMAGE_TOKEN
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.collate import LlavaCollator
from llava_lite.inference.decoding import DecodingSettings
from llava_lite.inference.loading import image_error
from llava_lite.io import JsonlAppender, numbered_jsonl, read_json, read_jsonl, repair_torn_tail
from llava_lite.modeling.llava import VISUAL_INPUTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One question to answer; ``question_id`` keeps its original type (int or str) for output."""

    question_id: int | str
    text: str
    image: str | None = None
    category: str | None = None

    @property
    def key(self) -> str:
        return str(self.question_id)


@dataclass
class AnswerStats:
    answered: int = 0  # newly written in this call
    skipped_done: int = 0  # already in the answers file (resume)
    total: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"answered": self.answered, "skipped_done": self.skipped_done, "total": self.total}


def numbered_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` of a JSON array file (``where`` = "FILE record I") or of JSON Lines
    ("FILE:LINE", blank lines skipped, the last line's newline optional); a line that is not
    JSON or not UTF-8 is an error naming the file and the line."""
    path = Path(path)
    if path.suffix == ".json":
        for i, record in enumerate(read_json(path, list, "JSON array of records")):
            yield f"{path} record {i}", record
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    for lineno, record in numbered_jsonl(path, unterminated="record"):
        yield f"{path}:{lineno}", record


def parse_question(record: Any, where: str) -> Question:
    """Validate one question record; ``where`` (file:line) goes into the error."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a question must be an object, got {type(record).__name__}")
    if "question_id" not in record and "conversations" in record:
        record = _from_conversation(record, where)
    qid = record.get("question_id")
    if not isinstance(qid, int | str) or isinstance(qid, bool) or qid == "":
        raise ValueError(f"{where}: missing or invalid 'question_id' ({qid!r})")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: question {qid!r} has no 'text'")
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{where}: question {qid!r} has a non-string 'image' ({image!r})")
    category = record.get("category")
    return Question(qid, text, image or None, None if category is None else str(category))


def _from_conversation(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A LLaVA training-format record as a question: its id, first turn and image."""
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of turns")
    text = str(turns[0].get("value", "")).replace(IMAGE_TOKEN, "").strip()
    return {**record, "question_id": record.get("id"), "text": text}


def read_questions(path: str | Path) -> list[Question]:
    """Questions from a LLaVA questions file; duplicate ids are an error (resume keys on them)."""
    questions: list[Question] = []
    seen: set[str] = set()
    for where, record in numbered_records(path):
        q = parse_question(record, where)
        if q.key in seen:
            raise ValueError(f"{where}: duplicate question_id {q.question_id!r}")
        seen.add(q.key)
        questions.append(q)
    return questions


def read_answers(path: str | Path) -> dict[str, dict[str, Any]]:
    """Answers file → ``{str(question_id): record}`` (read only; a torn last line is an error,
    which :func:`generate_answers` repairs)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    answers: dict[str, dict[str, Any]] = {}
    for where, record in numbered_records(path):
        if (
            not isinstance(record, dict)
            or "question_id" not in record
            or not isinstance(record.get("text"), str)
        ):
            raise ValueError(f"{where}: an answer needs 'question_id' and a 'text' string")
        answers[str(record["question_id"])] = record
    return answers


def unanswered(questions: Sequence[Question], answers_file: str | Path) -> list[Question]:
    """The questions ``answers_file`` has no answer for yet (read only: a torn last line, which
    the writer will repair, counts as not answered)."""
    done: set[str] = set()
    if Path(answers_file).is_file():
        for record in read_jsonl(answers_file, torn_tail_ok=True):
            if isinstance(record, dict) and "question_id" in record:
                done.add(str(record["question_id"]))
    return [q for q in questions if q.key not in done]


def image_path(question: Question, image_root: str | Path | None) -> Path | None:
    """Where ``question``'s image is read from (None for a text-only question)."""
    if not question.image:
        return None
    return Path(image_root) / question.image if image_root is not None else Path(question.image)


def check_images(questions: Iterable[Question], image_root: str | Path | None) -> None:
    """Every named image exists: checked before any answer is generated (a benchmark's images
    are many; whether each decodes is found when it is read, naming the question)."""
    for q in questions:
        path = image_path(q, image_root)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"question {q.question_id!r}: missing_image: {path} not found")


def _answer_id(model_id: str, question_id: int | str, text: str) -> str:
    return hashlib.sha1(f"{model_id}\0{question_id}\0{text}".encode()).hexdigest()[:22]


def _batches(items: Sequence[Question], size: int) -> Iterable[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    answers_file: str | Path,
    *,
    image_root: str | Path | None = None,
    batch_size: int = 8,
    settings: DecodingSettings | None = None,
    model_id: str = "llava_lite",
    system: str | None = None,
) -> AnswerStats:
    """Answer every question not yet in ``answers_file``, appending one line per answer.

    ``model`` is a ``LlavaModel`` (or anything with its ``generate``/``tokenizer``);
    ``processor`` a ``LlavaProcessor`` built for it. Prompts are left-padded into batches and
    decoded greedily unless ``settings.do_sample``; generation stops at the template's
    end-of-turn tokens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = settings or DecodingSettings()
    repair_torn_tail(answers_file)  # a run killed mid-line left at most one partial line
    done = read_answers(answers_file) if Path(answers_file).is_file() else {}
    todo = [q for q in questions if q.key not in done]
    check_images(todo, image_root)  # before the first answer: a missing image is found at once
    stats = AnswerStats(skipped_done=len(questions) - len(todo), total=len(questions))
    if stats.skipped_done:
        log.info(
            "%s: %d of %d questions already answered; resuming",
            answers_file,
            stats.skipped_done,
            len(questions),
        )
    collator = LlavaCollator(
        processor.pad_token_id, padding_side="left", image_token_id=processor.image_token_id
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: JsonlAppender | None = None  # opened with the first answer: a failed start writes nothing
    try:
        for batch_questions in _batches(todo, batch_size):
            texts = _answer_batch(
                model, processor, collator, batch_questions, image_root, settings, system, device
            )
            if out is None:
                out = JsonlAppender(answers_file)
            for q, text in zip(batch_questions, texts, strict=True):
                prompt = f"{processor.image_token}\n{q.text}" if q.image else q.text
                out.append(
                    {
                        "question_id": q.question_id,
                        "prompt": prompt,
                        "text": text,
                        "answer_id": _answer_id(model_id, q.question_id, text),
                        "model_id": model_id,
                        "metadata": {},
                    }
                )
                stats.answered += 1
    finally:
        model.train(was_training)
        if out is not None:
            out.close()
    if out is None and not Path(answers_file).exists():
        JsonlAppender(answers_file).close()  # nothing to answer: an empty answers file, for readers
    return stats


@torch.no_grad()
def sample_answers(
    model: Any,
    processor: Any,
    questions: Sequence[Question],
    k: int,
    *,
    settings: DecodingSettings,
    image_root: str | Path | None = None,
    batch_size: int = 8,
    seed: int = 0,
    system: str | None = None,
) -> Iterator[tuple[Question, list[str]]]:
    """``k`` sampled answers to each question, yielded question by question.

    A question's ``k`` samples are ``k`` rows of one left-padded batch (``batch_size`` rows a
    call, never fewer than ``k``), so candidates for preference pairs cost one decode per
    batch. Each call draws from its own generator state, seeded from ``seed`` and the batch's
    first question id, inside :func:`torch.random.fork_rng`: the same questions give the same
    answers, and the caller's random state is left as it was.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"need k >= 1 and batch_size >= 1, got k={k}, batch_size={batch_size}")
    check_images(questions, image_root)
    collator = LlavaCollator(
        processor.pad_token_id, padding_side="left", image_token_id=processor.image_token_id
    )
    device = next(model.parameters()).device
    forked = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        for group in _batches(questions, max(1, batch_size // k)):
            rows = [q for q in group for _ in range(k)]
            digest = hashlib.sha256(f"{seed}:{group[0].key}".encode()).hexdigest()
            with torch.random.fork_rng(devices=forked):  # the CPU state, and the GPU's when on one
                torch.manual_seed(int(digest[:12], 16))
                texts = _answer_batch(model, processor, collator, rows, image_root, settings, system, device)
            for i, q in enumerate(group):
                yield q, texts[i * k : (i + 1) * k]
    finally:
        model.train(was_training)


def _answer_batch(
    model: Any,
    processor: Any,
    collator: LlavaCollator,
    questions: Sequence[Question],
    image_root: str | Path | None,
    settings: DecodingSettings,
    system: str | None,
    device: torch.device,
) -> list[str]:
    samples = []
    for q in questions:
        path = image_path(q, image_root)
        image = None if path is None else str(path)
        try:
            samples.append(processor.prompt(q.text, image, system=system))
        except BadSampleError as e:
            if e.reason in ("missing_image", "unreadable_image"):
                raise image_error(e, f"question {q.question_id!r}") from None
            raise ValueError(f"question {q.question_id!r}: {e}") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"question {q.question_id!r}: {e}") from e
    batch = collator(samples)
    images = {k: batch[k].to(device) for k in VISUAL_INPUTS if batch[k] is not None}
    new_tokens = model.generate(
        batch["input_ids"].to(device),  # [B, T], left-padded
        **images,  # pixel_values [N(_tiles), 3, H, W], image_sizes [N, 2] under AnyRes, videos
        attention_mask=batch["attention_mask"].to(device),  # [B, T]
        **settings.generate_kwargs(processor.stop_token_ids),
    )  # [B, T_new]
    texts = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [t.strip() for t in texts]
