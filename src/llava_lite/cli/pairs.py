"""``llava-lite-pairs``: preference pairs with AI feedback (Hydra front end of
:func:`llava_lite.preference.pairs.make_pairs`).

Example: ``llava-lite-pairs model_dir=out/stage2 questions_file=questions.jsonl image_root=images
captions_file=captions.json instances_file=instances.json output_dir=data/pairs``.
Configs come from ``conf/`` at the repository root, or from ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from omegaconf import DictConfig

from llava_lite.claude.prices import Budget
from llava_lite.cli import hydra_app
from llava_lite.evaluation.answer_judge import AnswerJudge, ClaudeAnswerJudge
from llava_lite.evaluation.llava_bench import contexts_from_coco
from llava_lite.evaluation.run import resolve_device
from llava_lite.generation.base import built_from_target
from llava_lite.inference.answers import read_questions
from llava_lite.inference.loading import load_model_dir
from llava_lite.preference.pairs import make_pairs
from llava_lite.preference.settings import JUDGE_TARGET_SETTING, PairsSettings, settings_from

log = logging.getLogger(__name__)


def build_judge(settings: PairsSettings, **client_kwargs: Any) -> AnswerJudge:
    """The configured judge: Claude (``client_kwargs``, e.g. ``api_key`` for a local test server,
    go to the SDK only), or the one ``judge._target_`` names."""
    j = settings.judge
    if j.target is not None:
        judge = built_from_target(j.target, JUDGE_TARGET_SETTING)
        if not all(hasattr(judge, a) for a in ("model", "prompt_version", "needs_context", "judge")):
            raise ValueError(
                f"{JUDGE_TARGET_SETTING}={j.target['_target_']!r} built a {type(judge).__name__}, not an "
                "answer judge (one needs model, prompt_version, needs_context and an async judge(request))"
            )
        return judge
    if j.base_url is not None:
        client_kwargs.setdefault("base_url", j.base_url)
    return ClaudeAnswerJudge(
        j.model,
        prompt_version=j.prompt_version,
        budget=Budget(settings.budget_usd),
        **j.paying(),
        **client_kwargs,
    )


def run(cfg: DictConfig | dict[str, Any], **client_kwargs: Any) -> dict[str, Any]:
    """Sample, judge and pair from a composed config; prints and returns the summary dict.
    Inputs and the judge are checked before the model is loaded."""
    s = settings_from(hydra_app.plain_config(cfg) if isinstance(cfg, DictConfig) else cfg)
    judge = build_judge(s, **client_kwargs)
    questions = read_questions(s.questions_file)
    contexts = contexts_from_coco(s.captions_file, s.instances_file) if s.captions_file else {}
    if judge.needs_context and not contexts:
        raise ValueError("captions_file must be set: the Claude judge reads each image's captions and boxes")
    model, processor = load_model_dir(s.model_dir, device=resolve_device(s.device), template=s.template)
    p = s.sampling
    summary = make_pairs(
        model, processor, questions, judge, s.output_dir, k=p.k, temperature=p.temperature, top_p=p.top_p,
        max_new_tokens=p.max_new_tokens, margin=s.margin, batch_size=p.batch_size, seed=p.seed,
        image_root=s.image_root, contexts=contexts, batch=s.batch,
    ).to_dict()  # fmt: skip
    print(json.dumps(summary, indent=2))
    if summary.get("stopped"):
        log.warning("run stopped early (%s); rerun with the same output_dir to continue", summary["stopped"])
    return summary


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    hydra_app.hydra_main("pairs", run)


if __name__ == "__main__":
    main()
