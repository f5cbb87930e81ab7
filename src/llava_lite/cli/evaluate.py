"""``llava-lite-eval``: Hydra front end of :func:`llava_lite.evaluation.run.run_eval`.

Examples::

    llava-lite-eval task=answers model_dir=outputs/model answers.questions_file=q.jsonl
    llava-lite-eval task=scienceqa model_dir=outputs/sqa scienceqa.base_dir=data/scienceqa
    llava-lite-eval task=llava_bench model_dir=outputs/model \\
        llava_bench.questions_file=bench/questions.jsonl llava_bench.context_file=bench/context.jsonl \\
        llava_bench.references_file=bench/answers_gpt4.jsonl

Configs: the packaged ``conf/`` (``llava_lite.hydra_conf.config_dir``), or ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig

from llava_lite.cli import hydra_app
from llava_lite.evaluation.run import run_eval
from llava_lite.evaluation.settings import settings_from


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate from a composed config; prints and returns the result dict."""
    container = hydra_app.plain_config(cfg)
    result = run_eval(settings_from(container))
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    hydra_app.hydra_main("eval", run)


if __name__ == "__main__":
    main()
