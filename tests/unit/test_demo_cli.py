"""llava-lite-demo's thread count: the cores the process may run on, not how idle they look."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llava_lite.cli import demo as demo_cli
from llava_lite.demo import run as demo_run


def test_default_threads_are_the_affinity_cores_whatever_the_load(monkeypatch) -> None:
    monkeypatch.setattr(demo_cli.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setattr(demo_cli.os, "getloadavg", lambda: (40.0, 40.0, 40.0))  # just after a busy job
    monkeypatch.setattr(demo_cli.os, "cpu_count", lambda: 64)  # more cores exist than this process may use
    assert demo_cli.thread_count() == 3


def test_threads_flag_wins_and_must_be_positive(monkeypatch) -> None:
    monkeypatch.setattr(demo_cli.os, "sched_getaffinity", lambda pid: {0, 1})
    assert demo_cli.thread_count(1) == 1
    with pytest.raises(ValueError, match=r"--threads=0; valid: 1 or more"):
        demo_cli.thread_count(0)


def test_main_sets_the_chosen_threads_before_the_demo_runs(monkeypatch, tmp_path) -> None:
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(demo_cli.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(demo_cli.os, "getloadavg", lambda: (3.9, 3.9, 3.9))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(demo_run, "run_demo", lambda out, settings: calls.append(("run", out)))
    demo_cli.main(["--quick", "--out", str(tmp_path)])
    assert calls == [("threads", 4), ("run", tmp_path)]
    calls.clear()
    demo_cli.main(["--quick", "--out", str(tmp_path), "--threads", "2"])
    assert calls[0] == ("threads", 2)


def test_a_mistyped_flag_is_answered_before_the_heavy_imports() -> None:
    """argparse answers first: importing torch, transformers and Lightning takes ~15 s here."""
    code = (
        "import sys\n"
        "from llava_lite.cli.demo import main\n"
        "try:\n"
        "    main(['--quick', '--seeds', '1'])\n"
        "except SystemExit as exit:\n"
        "    heavy = sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules)\n"
        "    print(exit.code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert "unrecognized arguments: --seeds" in done.stderr


def test_seed_and_overrides_reach_the_settings(monkeypatch, tmp_path) -> None:
    """``--seed``, ``--quick`` and ``key=value`` overrides compose the shipped demo config."""
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(demo_run, "run_demo", lambda out, settings: seen.append(settings))
    demo_cli.main(
        ["--quick", "--seed", "7", "--out", str(tmp_path), "stage2.steps=3", "llm.drill_pool=varied"]
    )
    (settings,) = seen
    assert (settings.seed, settings.stage2.steps, settings.llm.drill_pool) == (7, 3, "varied")
    assert settings.world.n_train == 500  # the quick recipe under the overrides
    assert not settings.dpo.enabled  # stage 3 only when asked


def test_with_dpo_turns_stage_3_on(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(demo_run, "run_demo", lambda out, settings: seen.append(settings))
    demo_cli.main(["--quick", "--with-dpo", "--out", str(tmp_path), "dpo.steps=3"])
    (settings,) = seen
    assert settings.dpo.enabled and settings.dpo.steps == 3


def test_cfg_job_prints_the_settings_and_runs_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo_run, "run_demo", lambda out, settings: pytest.fail("the demo ran"))
    demo_cli.main(["--cfg", "job", "stage1.steps=9"])
    printed = capsys.readouterr().out
    assert "stage1:\n  steps: 9\n" in printed and "seed: 0\n" in printed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("llm.drill_pool=nope", r"llm\.drill_pool='nope'; valid: \['train'"),
        ("+llm.drill_mix.colr=1", r"llm\.drill_mix has \['colr'\]; valid question types"),
        ("llm.long_answer_sample=1.5", r"llm\.long_answer_sample=1\.5; valid: a share in \[0, 1\]"),
        ("stage2.described_first=-0.1", r"stage2\.described_first=-0\.1; valid: a share in \[0, 1\]"),
    ],
)
def test_a_bad_setting_is_named_before_anything_runs(override: str, message: str) -> None:
    from llava_lite.demo.settings import demo_settings

    with pytest.raises(ValueError, match=message):
        demo_settings([override])
