"""``llava-lite-eval``: Hydra front end of :func:`llava_lite.evaluation.run.run_eval`.

Examples::

    llava-lite-eval task=answers model_dir=outputs/model answers.questions_file=q.jsonl
    llava-lite-eval task=scienceqa model_dir=outputs/sqa scienceqa.base_dir=data/scienceqa
    llava-lite-eval task=llava_bench model_dir=outputs/model \\
        llava_bench.questions_file=bench/questions.jsonl llava_bench.context_file=bench/context.jsonl \\
        llava_bench.references_file=bench/answers_gpt4.jsonl

Decoding is set under ``decoding.`` (``decoding.max_new_tokens=64``; older configs called it
``generation``, which is now an error naming the new key).

Configs: the packaged ``conf/`` (``llava_lite.hydra_conf.config_dir``), or ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from llava_lite.cli import hydra_app
from llava_lite.cli.errors import run_cli
from llava_lite.evaluation.run import run_eval
from llava_lite.evaluation.settings import check_overrides, settings_from


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate from a composed config; prints and returns the result dict."""
    container = hydra_app.plain_config(cfg)
    result = run_eval(settings_from(container))
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    prog = Path(sys.argv[0]).name
    run_cli(prog, lambda: check_overrides(sys.argv[1:]))  # an old key name: one line, exit 1
    hydra_app.hydra_main("eval", run, prog=prog)


if __name__ == "__main__":
    main()
