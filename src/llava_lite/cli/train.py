"""``llava-lite-train``: Hydra front end of ``llava_lite.training.train``.

Example: ``llava-lite-train experiment=tiny_pretrain data.train_files=data/train.jsonl``.
Configs: the packaged ``conf/`` (``llava_lite.hydra_conf.config_dir``), or ``$LLAVA_LITE_CONF``.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from llava_lite.cli import hydra_app
from llava_lite.training.run import train


def _run(cfg: DictConfig) -> None:
    # DDP re-launches this script once per extra device; pin the run name so every rank
    # resolves the same output folder.
    os.environ.setdefault("LLAVA_LITE_RUN_NAME", str(cfg.run_name))
    result = train(cfg)
    print({k: v for k, v in result.items() if k != "metrics"})
    print({"metrics": result["metrics"]})


def main() -> None:
    """Console entry point; arguments are Hydra overrides (``key=value``, ``group=option``)."""
    hydra_app.hydra_main("train", _run)


if __name__ == "__main__":
    main()
