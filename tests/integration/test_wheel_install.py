"""A wheel of the project runs its Hydra commands outside the repository: the configs ship inside.

Builds the wheel from the checkout's files with the project venv's setuptools (no build
isolation, so nothing is downloaded), installs it without dependencies into a fresh venv that
sees the project venv's packages (torch and friends, not the editable ``llava_lite``), and runs
``llava-lite-train/-eval/-generate --cfg job`` from a folder outside the repository.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _checkout_files() -> list[str]:
    """Tracked and new (not ignored) files of the checkout, as a wheel built from it would see them."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in out.split("\0") if name and os.path.lexists(ROOT / name)]


def _copy_checkout(dest: Path) -> None:
    for name in _checkout_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)  # the conf link stays a link


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the venv it is installed in)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the project's files")
    base = tmp_path_factory.mktemp("wheel")
    source, dist, venv = base / "src", base / "dist", base / "venv"
    _copy_checkout(source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("llava_lite-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The project venv's packages, as plain path entries: their .pth files (the editable
    # llava_lite among them) are not processed, so llava_lite comes from the wheel only.
    (purelib / "project_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return wheel, venv


def _clean_env() -> dict[str, str]:
    drop = ("LLAVA_LITE_CONF", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_wheel_ships_the_configs(wheel_venv: tuple[Path, Path]) -> None:
    wheel, _ = wheel_venv
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            n.removeprefix("llava_lite/conf/") for n in archive.namelist() if n.startswith("llava_lite/conf/")
        }
    source = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*") if p.is_file()}
    assert shipped == source


def test_wheel_ships_py_typed(wheel_venv: tuple[Path, Path]) -> None:
    """PEP 561: type checkers read the installed package's hints only with this marker."""
    wheel, venv = wheel_venv
    with zipfile.ZipFile(wheel) as archive:
        assert "llava_lite/py.typed" in archive.namelist()
    assert list(venv.glob("lib/python*/site-packages/llava_lite/py.typed"))


def test_installed_commands_find_their_configs_outside_the_repo(
    wheel_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = wheel_venv
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import llava_lite.hydra_conf as h; print(h.config_dir('train'))",
        ],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT)
    expected = {
        "llava-lite-train": "run_name:",
        "llava-lite-eval": "task:",
        "llava-lite-generate": "teacher:",
    }
    for command, key in expected.items():
        result = subprocess.run(
            [str(venv / "bin" / command), "--cfg", "job"],
            cwd=tmp_path,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert key in result.stdout, result.stdout
