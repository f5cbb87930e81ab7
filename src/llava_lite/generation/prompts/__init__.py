"""Versioned teacher prompts, shipped as package files.

Layout: ``prompts/<version>/<response_type>/system.txt`` + ``examples.json`` (few-shot
examples as symbolic context and the reply in the tool's JSON shape), and
``prompts/<version>/detail_instructions.txt`` (the varied phrasings the "detail" question
is drawn from). Editing a prompt means adding a new version folder: the version is part of
every output record and of the request cache key, so old replies are never mixed with new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from llava_lite.generation.base import RESPONSE_TYPES
from llava_lite.symbolic import ObjectBox, SymbolicContext

PROMPT_VERSION = "v1"


@dataclass(frozen=True)
class FewShotExample:
    context: SymbolicContext
    response: dict[str, Any]  # the tool input the teacher should produce for ``context``


@dataclass(frozen=True)
class PromptSet:
    """The system message and few-shot examples of one response type, at one version."""

    version: str
    response_type: str
    system: str
    examples: tuple[FewShotExample, ...]


def available_versions() -> list[str]:
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def load_prompt_set(response_type: str, version: str = PROMPT_VERSION) -> PromptSet:
    if response_type not in RESPONSE_TYPES:
        raise KeyError(f"unknown response type {response_type!r}; valid: {list(RESPONSE_TYPES)}")
    folder = _version_folder(version) / response_type
    system = (folder / "system.txt").read_text(encoding="utf-8").strip()
    raw = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    examples = tuple(_example(e, i) for i, e in enumerate(raw))
    return PromptSet(version=version, response_type=response_type, system=system, examples=examples)


def load_detail_instructions(version: str = PROMPT_VERSION) -> tuple[str, ...]:
    text = (_version_folder(version) / "detail_instructions.txt").read_text(encoding="utf-8")
    lines = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not lines:
        raise ValueError(f"prompts/{version}/detail_instructions.txt is empty")
    return lines


def _version_folder(version: str) -> Any:
    folder = resources.files(__name__) / version
    if not folder.is_dir():
        raise KeyError(f"unknown prompt version {version!r}; valid: {available_versions()}")
    return folder


def _example(raw: dict[str, Any], index: int) -> FewShotExample:
    context = SymbolicContext(
        image_id=-(index + 1),
        file_name=f"example_{index}",
        width=0,
        height=0,
        captions=tuple(raw["captions"]),
        objects=tuple(ObjectBox(o["category"], tuple(o["box"])) for o in raw.get("objects", [])),
    )
    return FewShotExample(context=context, response=raw["response"])
