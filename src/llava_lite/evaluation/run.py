"""One evaluation run from :class:`EvalSettings`: what ``llava-lite-eval`` executes.

Also callable from notebooks: ``run_eval(settings_from({...}))`` returns the result dict and
writes it to ``{output_dir}/{task}_results.json``. Relative output file names (answers,
reviews, judge cache) live under ``output_dir``. Every step resumes: answers already in the
answers file are kept, judge replies already paid for are replayed from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llava_lite.claude.aio import run_sync
from llava_lite.claude.prices import Budget
from llava_lite.evaluation import llava_bench, scienceqa
from llava_lite.evaluation.judge import ClaudeJudge
from llava_lite.evaluation.settings import EvalSettings
from llava_lite.inference.answers import (
    Question,
    check_images,
    generate_answers,
    read_answers,
    read_questions,
    unanswered,
)
from llava_lite.inference.loading import load_model_dir
from llava_lite.io import write_json_atomic

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"{name} must be set for this task")
    return value


async def _check_judge_model(judge: ClaudeJudge) -> None:
    """The judge's model lifecycle, asked now (``ApiFatalError`` for a retired or unknown one);
    the client is closed after, as it belongs to this event loop."""
    try:
        await judge.check_model()
    finally:
        await judge.aclose()


class _Runner:
    def __init__(self, settings: EvalSettings) -> None:
        self.s = settings
        self.output_dir = Path(settings.output_dir)  # created by the first file written into it

    def out(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.output_dir / path

    def answer(
        self,
        questions: list[Question],
        answers_file: Path,
        image_root: str | None,
        before: Callable[[], None] | None = None,
    ) -> dict[str, int]:
        """Generate the missing answers with the model in ``model_dir``.

        What fails fast comes first: missing images, then ``before`` (run only when there is
        something to answer), then the model folder; nothing is written until answers are.
        """
        model_dir = _required(self.s.model_dir, "model_dir")
        todo = unanswered(questions, answers_file)
        check_images(todo, image_root)
        if todo and before is not None:
            before()
        model, processor = load_model_dir(
            model_dir, device=resolve_device(self.s.device), template=self.s.template
        )
        stats = generate_answers(
            model,
            processor,
            questions,
            answers_file,
            image_root=image_root,
            batch_size=self.s.batch_size,
            settings=self.s.decoding,
            model_id=self.s.model_id or Path(model_dir).resolve().name,
        )
        return stats.to_dict()

    # ---- tasks ----------------------------------------------------------------------
    def answers(self) -> dict[str, Any]:
        a = self.s.answers
        questions = read_questions(_required(a.questions_file, "answers.questions_file"))
        answers_file = self.out(a.answers_file)
        return {"answers_file": str(answers_file), **self.answer(questions, answers_file, a.image_root)}

    def scienceqa(self) -> dict[str, Any]:
        q = self.s.scienceqa
        base = Path(_required(q.base_dir, "scienceqa.base_dir"))
        problems = scienceqa.load_split(base, q.split)
        questions = scienceqa.to_questions(problems, q.split, q.use_caption)
        answers_file = self.out(q.answers_file)
        generation = None
        if self.s.model_dir:
            generation = self.answer(questions, answers_file, str(base / "images"))
        if q.questions_file:  # after the answers: a start that fails writes nothing
            scienceqa.write_question_file(questions, self.out(q.questions_file))
        answers = read_answers(answers_file)
        result = scienceqa.score(problems, answers).to_dict()
        return {"answers_file": str(answers_file), "generation": generation, **result}

    def scienceqa_convert(self) -> dict[str, Any]:
        q = self.s.scienceqa
        out = self.out(q.llava_file)
        n = scienceqa.convert_release(
            _required(q.base_dir, "scienceqa.base_dir"), q.split, out, q.answer_format, q.use_caption
        )
        return {"llava_file": str(out), "split": q.split, "records": n}

    def llava_bench(self) -> dict[str, Any]:
        b, j = self.s.llava_bench, self.s.judge
        questions_file = _required(b.questions_file, "llava_bench.questions_file")
        references_file = _required(b.references_file, "llava_bench.references_file")
        if b.context_file:
            contexts = llava_bench.read_contexts(b.context_file)
        elif b.captions_file:
            contexts = llava_bench.contexts_from_coco(b.captions_file, b.instances_file)
        else:
            raise ValueError("llava_bench needs context_file or captions_file (+ instances_file)")
        # a judge model without prices fails here, before any answer or file is written
        judge = ClaudeJudge.from_settings(j, budget=Budget(j.budget_usd))
        answers_file = self.out(b.answers_file)
        generation = None
        if self.s.model_dir:
            # a retired or unknown judge model is found before anyone waits for answers
            generation = self.answer(
                read_questions(questions_file),
                answers_file,
                b.image_root,
                before=lambda: run_sync(_check_judge_model(judge)),
            )
        result = llava_bench.evaluate(
            judge,
            questions_file,
            references_file,
            answers_file,
            contexts,
            reviews_file=self.out(b.reviews_file),
            both_orders=j.both_orders,
            chart_file=self.out("llava_bench_scores.png"),
            cache_file=self.out(j.cache_file),  # created only once the judge's model check passed
        )
        return {"answers_file": str(answers_file), "generation": generation, **result.to_dict()}


def _new_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` would create, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def run_eval(settings: EvalSettings) -> dict[str, Any]:
    """Run ``settings.task``; the result is also written to ``{output_dir}/{task}_results.json``.

    A run that fails leaves no empty ``output_dir`` behind (nor the empty parents it created).
    """
    runner = _Runner(settings)
    created = _new_folders(runner.output_dir.absolute())
    try:
        result = {"task": settings.task, **getattr(runner, settings.task)()}
        write_json_atomic(runner.out(f"{settings.task}_results.json"), result)
    except BaseException:
        for folder in created:  # deepest first; stops at the first that holds something
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise
    return result
