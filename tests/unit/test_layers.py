"""Import layers: the synthetic world sits on top of the library, never under it.

``llava_lite.synthetic`` (the shape world, its rule-based teacher) and ``llava_lite.demo`` may
use everything else; no other module may import the world, so the library runs on real data
without it. ``llava_lite.generation`` does not even name it (no import, no string such as a
``_target_`` or a docstring pointer): teachers other than Claude arrive by a config
``_target_`` (``conf/teacher/``). Checked on the source with ``ast``, function-local and
relative imports included, so a lazy import cannot slip through.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llava_lite"
WORLD = "llava_lite.synthetic"
MAY_IMPORT_WORLD = ("llava_lite.synthetic", "llava_lite.demo")
NEVER_NAMES_WORLD = "llava_lite.generation"
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path), path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name ``node`` imports, relative imports resolved against ``module``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)  # `from llava_lite import synthetic`
    elif isinstance(node, ast.Call):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called in DYNAMIC_IMPORTS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value


def _where(path: Path, node: ast.AST) -> tuple[str, int]:
    return str(path.relative_to(PACKAGE.parent.parent)), getattr(node, "lineno", 0)


def _listing(places: list[tuple[str, int]]) -> str:
    return "\n".join(f"  {file}:{line}" for file, line in sorted(set(places)))


def test_only_the_world_and_the_demo_import_the_world() -> None:
    offending = []
    for module, path, tree in _modules():
        if any(_within(module, allowed) for allowed in MAY_IMPORT_WORLD):
            continue
        for node in ast.walk(tree):
            if any(_within(name, WORLD) for name in _imported(node, module, path.name == "__init__.py")):
                offending.append(_where(path, node))
    assert not offending, f"modules outside {MAY_IMPORT_WORLD} import {WORLD}:\n" + _listing(offending)


def test_generation_never_names_the_world() -> None:
    offending = []
    for module, path, tree in _modules():
        if not _within(module, NEVER_NAMES_WORLD):
            continue
        for node in ast.walk(tree):
            named = [*_imported(node, module, path.name == "__init__.py")]
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named.append(node.value)
            if any("synthetic" in text for text in named):
                offending.append(_where(path, node))
    assert not offending, (
        f"{NEVER_NAMES_WORLD} names the synthetic world (choose teachers by a config _target_):\n"
        + _listing(offending)
    )


def test_relative_imports_are_resolved() -> None:
    """The checker itself: relative and dotted forms resolve to the module they import."""
    tree = ast.parse(
        "from ..synthetic import world\nfrom .. import synthetic\nimport llava_lite.synthetic.scene"
    )
    names = [n for node in tree.body for n in _imported(node, "llava_lite.generation.teacher", False)]
    assert "llava_lite.synthetic" in names and "llava_lite.synthetic.world" in names
    assert "llava_lite.synthetic.scene" in names
    assert [*_imported(ast.parse("from . import scene").body[0], "llava_lite.synthetic", True)] == [
        "llava_lite.synthetic",
        "llava_lite.synthetic.scene",
    ]
