"""``llava-lite-eval``: Hydra front end of :func:`llava_lite.evaluation.run.run_eval`.

Examples::

    llava-lite-eval task=answers model_dir=outputs/model answers.questions_file=q.jsonl
    llava-lite-eval task=scienceqa model_dir=outputs/sqa scienceqa.base_dir=data/scienceqa
    llava-lite-eval task=llava_bench model_dir=outputs/model \\
        llava_bench.questions_file=bench/questions.jsonl llava_bench.context_file=bench/context.jsonl \\
        llava_bench.references_file=bench/answers_gpt4.jsonl

Configs come from ``conf/`` at the repository root, or from ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import llava_lite
from llava_lite.evaluation.run import run_eval
from llava_lite.evaluation.settings import settings_from

CONF_ENV = "LLAVA_LITE_CONF"


def config_dir() -> Path:
    """``$LLAVA_LITE_CONF`` if set, else ``conf/`` at the repository root; must hold eval.yaml."""
    env = os.environ.get(CONF_ENV)
    path = (
        Path(env).expanduser().resolve() if env else Path(llava_lite.__file__).resolve().parents[2] / "conf"
    )
    if not (path / "eval.yaml").is_file():
        raise FileNotFoundError(f"no eval.yaml in {path}; set {CONF_ENV} to a folder holding it")
    return path


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate from a composed config; prints and returns the result dict."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    result = run_eval(settings_from(container))
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    try:
        conf = str(config_dir())
    except FileNotFoundError as err:
        sys.exit(str(err))
    hydra.main(config_path=conf, config_name="eval", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
