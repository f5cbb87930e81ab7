"""``llava-lite-generate``: Hydra front end of :class:`llava_lite.generation.pipeline.GenerationPipeline`.

Example: ``llava-lite-generate captions_file=.../captions_train2017.json
instances_file=.../instances_train2017.json output_dir=data/instruct dry_run=true``.
Configs come from ``conf/`` at the repository root, or from ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import llava_lite
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.generation.settings import settings_from

log = logging.getLogger(__name__)
CONF_ENV = "LLAVA_LITE_CONF"


def config_dir() -> Path:
    """``$LLAVA_LITE_CONF`` if set, else ``conf/`` at the repository root; must hold generate.yaml."""
    env = os.environ.get(CONF_ENV)
    path = (
        Path(env).expanduser().resolve() if env else Path(llava_lite.__file__).resolve().parents[2] / "conf"
    )
    if not (path / "generate.yaml").is_file():
        raise FileNotFoundError(f"no generate.yaml in {path}; set {CONF_ENV} to a folder holding it")
    return path


def run(cfg: DictConfig) -> dict:
    """Run (or dry-run) generation from a composed config; returns the summary dict."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    settings = settings_from(container)
    summary = GenerationPipeline(settings).run().to_dict()
    print(json.dumps(summary, indent=2))
    if summary.get("stopped"):
        log.warning("run stopped early (%s); rerun with the same output_dir to continue", summary["stopped"])
    return summary


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    try:
        conf = str(config_dir())
    except FileNotFoundError as err:
        sys.exit(str(err))
    hydra.main(config_path=conf, config_name="generate", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
