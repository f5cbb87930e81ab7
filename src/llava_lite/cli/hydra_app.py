"""What the Hydra entry points share: the config folder, the plain config dict, ``main`` (with
the shared error report of :mod:`llava_lite.cli.errors`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import llava_lite
from llava_lite.cli.errors import reporting_task, run_cli

CONF_ENV = "LLAVA_LITE_CONF"


def config_dir(config_name: str) -> Path:
    """``$LLAVA_LITE_CONF`` if set, else ``conf/`` at the repository root; must hold ``<config_name>.yaml``."""
    env = os.environ.get(CONF_ENV)
    path = (
        Path(env).expanduser().resolve() if env else Path(llava_lite.__file__).resolve().parents[2] / "conf"
    )
    if not (path / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no {config_name}.yaml in {path}; set {CONF_ENV} to a folder holding it")
    return path


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config resolved to plain containers, without Hydra's own ``hydra`` node."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def hydra_main(
    config_name: str, run: Callable[[DictConfig], Any], folder: Callable[[], Path], prog: str | None = None
) -> None:
    """Run ``run`` under Hydra on ``config_name`` from ``folder()`` (command-line overrides apply).

    A mistake the user can fix (missing config folder or file, unknown key, bad value) prints one
    error line and a hint and exits 1; see :mod:`llava_lite.cli.errors`.
    """
    prog = prog or Path(sys.argv[0]).name

    def body() -> None:
        task = reporting_task(prog, run)
        hydra.main(config_path=str(folder()), config_name=config_name, version_base="1.3")(task)()

    run_cli(prog, body)
