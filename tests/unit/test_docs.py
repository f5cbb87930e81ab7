"""The README and docs/ name only configs, commands and files that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GROUP_OPTION = re.compile(r"(?<![\w.])(experiment|model|data|trainer|callbacks|logger)=([A-Za-z0-9_]+)")
COMMAND = re.compile(r"\bllava-lite-[a-z]+\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_docs_have_a_page_per_component() -> None:
    names = {p.stem for p in PAGES if p.parent.name == "docs"}
    assert {"README", "model", "data", "training", "generation", "evaluation"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_named_config_options_exist(page: Path) -> None:
    named = set(GROUP_OPTION.findall(page.read_text()))
    missing = [f"{g}={o}" for g, o in sorted(named) if not (ROOT / "conf" / g / f"{o}.yaml").is_file()]
    assert not missing, f"{page.name} names configs that conf/ lacks: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_named_commands_are_console_scripts(page: Path) -> None:
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    unknown = sorted(set(COMMAND.findall(page.read_text())) - scripts)
    assert not unknown, f"{page.name} names commands pyproject.toml does not install: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t]
    broken = [t for t in targets if not (page.parent / t).exists()]
    assert not broken, f"{page.name} links to missing files: {broken}"
