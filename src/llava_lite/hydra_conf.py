"""Where the Hydra configs are: the one place every entry point, notebook and test asks.

``conf/`` at the repository root is the source; the package holds it as ``llava_lite/conf``
(a link to ``../../conf`` in a checkout and an editable install, a copy of it in a wheel or a
``pip install .``), so the same lookup works from a source tree and from an installed wheel.
``$LLAVA_LITE_CONF`` points at a folder of your own instead.
"""

from __future__ import annotations

import os
from pathlib import Path

CONF_ENV = "LLAVA_LITE_CONF"
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"


def config_dir(config_name: str = "train") -> Path:
    """``$LLAVA_LITE_CONF`` if set, else the packaged configs; must hold ``<config_name>.yaml``."""
    env = os.environ.get(CONF_ENV)
    path = Path(env).expanduser().resolve() if env else PACKAGED_CONF
    if not (path / f"{config_name}.yaml").is_file():
        where = f"${CONF_ENV}={env}" if env else "the packaged configs"
        raise FileNotFoundError(
            f"no {config_name}.yaml in {path} ({where}); set {CONF_ENV} to a folder holding it"
        )
    return path
