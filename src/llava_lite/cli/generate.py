"""``llava-lite-generate``: Hydra front end of :class:`llava_lite.generation.pipeline.GenerationPipeline`.

Example: ``llava-lite-generate captions_file=.../captions_train2017.json
instances_file=.../instances_train2017.json output_dir=data/instruct dry_run=true``.
Configs come from ``conf/`` at the repository root, or from ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from llava_lite.cli import hydra_app
from llava_lite.generation.pipeline import GenerationPipeline
from llava_lite.generation.settings import settings_from

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """``$LLAVA_LITE_CONF`` if set, else ``conf/`` at the repository root; must hold generate.yaml."""
    return hydra_app.config_dir("generate")


def run(cfg: DictConfig) -> dict:
    """Run (or dry-run) generation from a composed config; returns the summary dict."""
    container = hydra_app.plain_config(cfg)
    settings = settings_from(container)
    summary = GenerationPipeline(settings).run().to_dict()
    print(json.dumps(summary, indent=2))
    if summary.get("stopped"):
        log.warning("run stopped early (%s); rerun with the same output_dir to continue", summary["stopped"])
    if summary.get("failed_samples"):
        log.warning(
            "%d samples failed every attempt (ids and last reasons: failed_samples in summary.json); a rerun "
            "replays their stored replies for free, retry_stored_failures=true pays for fresh attempts",
            len(summary["failed_samples"]),
        )
    return summary


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``)."""
    hydra_app.hydra_main("generate", run, config_dir)


if __name__ == "__main__":
    main()
