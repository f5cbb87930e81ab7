"""``llava-lite-demo``: the whole LLaVA pipeline on the offline synthetic world, one command.

llava-lite-demo                 # full demo (minutes on 2 CPU cores: README "The demo")
llava-lite-demo --quick         # CI-sized: under 2 minutes, above chance
llava-lite-demo --with-dpo      # + stage 3: DPO on pairs of its own answers (docs/preference.md)
llava-lite-demo --out runs/demo --seed 1 --threads 2
llava-lite-demo stage2.steps=400 llm.drill_pool=train   # any setting of conf/demo/*.yaml
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
    # Offline by construction: the demo needs nothing from the hub, and some installed
    # packages look there at import (bitsandbytes fetches a CPU kernel on AVX512-BF16 CPUs).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="llava-lite-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI-sized run (< 2 min)")
    parser.add_argument(
        "--with-dpo",
        action="store_true",
        help="add stage 3: DPO on pairs of the stage-2 model's own answers, judged offline",
    )
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/demo/<time>)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of every step (default: the config's, 0)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: every core this process may run on)",
    )
    parser.add_argument(
        "--cfg",
        choices=["job"],
        default=None,
        help="print the composed settings and exit, as Hydra's --cfg job",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides of the demo's settings (conf/demo/full.yaml), e.g. stage2.steps=400",
    )
    args = parser.parse_args(argv)
    run_cli("llava-lite-demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> None:
    if args.cfg:
        from omegaconf import OmegaConf

        from llava_lite.demo.settings import demo_settings

        print(OmegaConf.to_yaml(OmegaConf.structured(demo_settings(_overrides(args), args.quick))), end="")
        return
    threads = thread_count(args.threads)
    # Imported here, not at the top: torch, transformers and Lightning take ~15 s to import on
    # two cores, and ``--help`` or a mistyped flag should answer at once.
    import torch
    import transformers

    from llava_lite.demo.run import run_demo
    from llava_lite.demo.settings import demo_settings

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
    settings = demo_settings(_overrides(args), quick=args.quick)
    out = args.out or Path("runs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_demo(out, settings)


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--seed`` and ``--with-dpo`` as the overrides they stand for, then the command line's own."""
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    return [*seed, *(["dpo.enabled=true"] if args.with_dpo else []), *args.overrides]


if __name__ == "__main__":
    main()
