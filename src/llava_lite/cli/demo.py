"""``llava-lite-demo``: the whole LLaVA pipeline on the offline synthetic world, one command.

llava-lite-demo                 # full demo (minutes on 2 CPU cores: README "The demo")
llava-lite-demo --quick         # CI-sized: under 2 minutes, above chance
llava-lite-demo --out runs/demo --seed 1 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

from llava_lite.cli.errors import run_cli


def thread_count(requested: int | None = None) -> int:
    """``--threads`` if given, else every core this process may run on (its CPU affinity).

    Not the cores that look idle: right after another job (the test suite, a build) the load
    average is still high although the cores are free, and a demo that took one thread of two
    ran 21.5 minutes instead of about 13. The affinity mask, not ``os.cpu_count()``, is what
    a container or ``taskset`` leaves this process.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads={requested}; valid: 1 or more")
        return requested
    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava-lite-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI-sized run (< 2 min)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo/<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: every core this process may run on)",
    )
    args = parser.parse_args(argv)
    run_cli("llava-lite-demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> None:
    threads = thread_count(args.threads)
    # Imported here, not at the top: torch, transformers and Lightning take ~15 s to import on
    # two cores, and ``--help`` or a mistyped flag should answer at once.
    import torch
    import transformers

    from llava_lite.demo.run import DemoSettings, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The demo prints its own progress; keep the libraries' per-load reports out of it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"
    # torch 2.14 deprecates a check that Lightning 2.6 still makes once per process; not ours to fix.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    settings = DemoSettings.quick(args.seed) if args.quick else DemoSettings.full(args.seed)
    out = args.out or Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_demo(out, settings)


if __name__ == "__main__":
    main()
