"""run_sync works both with and without a running event loop (scripts and notebooks)."""

import asyncio

from llava_lite.claude.aio import run_sync


async def _answer() -> int:
    await asyncio.sleep(0)
    return 42


def test_run_sync_without_a_running_loop() -> None:
    assert run_sync(_answer()) == 42


def test_run_sync_inside_a_running_loop_as_in_jupyter() -> None:
    async def notebook_cell() -> int:
        # asyncio.run() would raise "cannot be called from a running event loop" here.
        return run_sync(_answer())

    assert asyncio.run(notebook_cell()) == 42
