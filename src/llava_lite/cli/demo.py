"""``llava-lite-demo``: the whole LLaVA pipeline on the offline synthetic world, one command.

llava-lite-demo                 # full demo (about 15 minutes on 2 CPU cores)
llava-lite-demo --quick         # CI-sized: under 2 minutes, above chance
llava-lite-demo --out runs/demo --seed 1 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from llava_lite.demo.run import DemoSettings, run_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava-lite-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI-sized run (< 2 min)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo/<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = DemoSettings.quick(args.seed) if args.quick else DemoSettings(seed=args.seed)
    out = args.out or Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_demo(out, settings)


if __name__ == "__main__":
    main()
