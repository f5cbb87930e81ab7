"""What the Hydra entry points share: the plain config dict and ``main`` (with the shared error
report of :mod:`llava_lite.cli.errors`); ``config_dir`` is :func:`llava_lite.hydra_conf.config_dir`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from llava_lite.cli.errors import reporting_task, run_cli
from llava_lite.hydra_conf import config_dir

__all__ = ["config_dir", "hydra_main", "plain_config"]


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config resolved to plain containers, without Hydra's own ``hydra`` node."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def hydra_main(
    config_name: str,
    run: Callable[[DictConfig], Any],
    folder: Callable[[], Path] | None = None,
    prog: str | None = None,
) -> None:
    """Run ``run`` under Hydra on ``config_name`` from ``folder()``, by default
    :func:`llava_lite.hydra_conf.config_dir` (command-line overrides apply).

    A mistake the user can fix (missing config folder or file, unknown key, bad value) prints one
    error line and a hint and exits 1; see :mod:`llava_lite.cli.errors`.
    """
    prog = prog or Path(sys.argv[0]).name

    def body() -> None:
        conf = folder() if folder is not None else config_dir(config_name)
        task = reporting_task(prog, run)
        hydra.main(config_path=str(conf), config_name=config_name, version_base="1.3")(task)()

    run_cli(prog, body)
