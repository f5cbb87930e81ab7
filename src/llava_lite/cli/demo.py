"""``llava-lite-demo``: the whole LLaVA pipeline on the offline synthetic world, one command.

llava-lite-demo                 # full demo (about 15 minutes on 2 CPU cores)
llava-lite-demo --quick         # CI-sized: under 2 minutes, above chance
llava-lite-demo --out runs/demo --seed 1 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch
import transformers

from llava_lite.cli.errors import run_cli
from llava_lite.demo.run import DemoSettings, run_demo


def idle_cores() -> int:
    """Cores not busy with other work (by the 1-minute load average), at least one.

    Small CPU models slow down sharply when their threads compete with other processes for
    the same cores (several times slower, not a fair share), so the demo only takes what is free.
    """
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava-lite-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI-sized run (< 2 min)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo/<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores other processes leave idle)",
    )
    args = parser.parse_args(argv)
    run_cli("llava-lite-demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The demo prints its own progress; keep the libraries' per-load reports out of it.
    transformers.utils.logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads or idle_cores())
    settings = DemoSettings.quick(args.seed) if args.quick else DemoSettings.full(args.seed)
    out = args.out or Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_demo(out, settings)


if __name__ == "__main__":
    main()
