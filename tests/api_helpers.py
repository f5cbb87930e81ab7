"""Builders shared by the tests that run the teacher or the generation pipeline against the
local Messages API stand-in (the ``api`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fakes.anthropic_api import FakeAnthropicAPI
from llava_lite.claude.cache import RequestCache
from llava_lite.claude.prices import Prices
from llava_lite.generation.base import GenerationRequest, TeacherReply
from llava_lite.generation.settings import GenerateSettings, settings_from
from llava_lite.generation.teacher import ClaudeTeacher

# "claude-test" has no entry in the price table: tests give the Sonnet list prices
TEST_PRICES = Prices(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)


def claude_teacher(api: FakeAnthropicAPI, tmp_path: Path, key: str, **kw: Any) -> ClaudeTeacher:
    """A ``claude-test`` teacher talking to ``api`` with ``key`` at :data:`TEST_PRICES`; its
    cache is ``tmp_path/requests.sqlite`` unless ``cache`` is given."""
    kw.setdefault("cache", RequestCache(tmp_path / "requests.sqlite"))
    kw.setdefault("prices", TEST_PRICES)
    return ClaudeTeacher("claude-test", client_kwargs={"api_key": key, "base_url": api.url}, **kw)


def generate_once(teacher: ClaudeTeacher, request: GenerationRequest) -> TeacherReply:
    """``teacher.generate(request)`` in a fresh event loop; the client is closed after."""

    async def go() -> TeacherReply:
        try:
            return await teacher.generate(request)
        finally:
            await teacher.aclose()

    return asyncio.run(go())


def write_coco(folder: Path, n_images: int) -> tuple[Path, Path]:
    """COCO captions + instances files for ``n_images`` images (one kite each) in ``folder``."""
    images = [
        {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)
    ]
    captions = {
        "images": images,
        "annotations": [
            {"id": i, "image_id": i, "caption": f"A kite number {i} flies over a beach."}
            for i in range(1, n_images + 1)
        ],
    }
    instances = {
        "images": images,
        "categories": [{"id": 1, "name": "kite"}],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [64, 48, 320, 240]}
            for i in range(1, n_images + 1)
        ],
    }
    cap, inst = folder / "captions_train.json", folder / "instances_train.json"
    cap.write_text(json.dumps(captions))
    inst.write_text(json.dumps(instances))
    return cap, inst


def pipeline_settings(
    captions_file: Path, instances_file: Path, output_dir: Path, teacher: dict[str, Any], /, **overrides: Any
) -> GenerateSettings:
    """Settings of an uncapped run with quick batch polling at :data:`TEST_PRICES`; a dict
    override (``teacher=`` too) updates that section, anything else replaces the field."""
    teacher = {"prices": asdict(TEST_PRICES), **teacher}
    cfg: dict[str, Any] = {
        "captions_file": str(captions_file),
        "instances_file": str(instances_file),
        "output_dir": str(output_dir),
        "budget_usd": None,
        "teacher": teacher,
        "batch": {"poll_interval_s": 0.01},
    }
    for k, v in overrides.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return settings_from(cfg)


def kill_at_request(api: FakeAnthropicAPI, argv: list[str], calls: int, timeout_s: float) -> None:
    """Run ``argv`` and SIGKILL it once the fake API has seen ``calls`` requests (the last one
    scripted to hang), as a crash mid-run would; fails if it exits or stalls before that."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while len(api.calls()) < calls:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the child never reached the hanging request"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
