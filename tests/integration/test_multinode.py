"""Two "nodes" on this machine: ``trainer=multinode`` launched as on a cluster, against one node.

Each node is its own ``llava-lite-train`` process with one CPU device (gloo over 127.0.0.1) and
its own ``paths.root_dir``, as nodes without a shared disk. Lightning finds its rank from
``MASTER_ADDR`` / ``MASTER_PORT`` / ``NODE_RANK`` (``LightningEnvironment``), from ``torchrun``
(``TorchElasticEnvironment``), or from ``srun``'s variables (``SLURMEnvironment``: the shipped
``scripts/slurm/train_multinode.sbatch`` under a stand-in ``srun``). Each way the run must equal
``trainer=ddp trainer.devices=2`` on one node: the same losses, samples and gradient accumulation
per step, the same trained weights, every output written once, by global rank 0. What this does
not prove (a real network, NCCL, GPUs, SLURM itself) is in ``docs/training.md`` ("Several nodes").
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import free_port, read_losses, write_dataset

TESTS = Path(__file__).resolve().parents[1]
SBATCH = TESTS.parent / "scripts/slurm/train_multinode.sbatch"
RUN = "runs/train/mn"  # every run's output folder under its paths.root_dir (run_name=mn)
# 16 records, 2 a device, 2 ranks, global batch 8: 2 accumulated micro-batches a step, 2 steps.
RECORDS = 16
GLOBAL_BATCH_LINE = "global batch 8 = 2 per device x 2 device(s) x 2 accumulation"
TIMEOUT_S = 240  # a run takes ~20 s here; a lost rank would wait for its peer for 30 minutes
# Launcher state a developer's shell (or a CI job inside SLURM / torchrun) may hold: Lightning would
# read it instead of what each test sets.
LAUNCHER_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE")
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "LSB_", "JSM_NAMESPACE_", "OMPI_", "PMI_")


class ClusterProbe(L.Callback):
    """Writes what each rank's Trainer got from its cluster environment to ``out/rank<N>.json``
    (added to a run as ``+callbacks.probe._target_=test_multinode.ClusterProbe``)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        record = {
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes,
            "world_size": trainer.world_size,
            "backend": torch.distributed.get_backend(),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


# Stands in for srun on one machine: $SLURM_NNODES x $SLURM_NTASKS_PER_NODE tasks, each with the
# variables srun gives a task, each node's in its own folder (node<i>/: that node's disk).
FAKE_SRUN = """#!/bin/bash
while [[ $1 == -* ]]; do shift; done  # srun's own options
per_node=$SLURM_NTASKS_PER_NODE
tasks=$((SLURM_NNODES * per_node))
pids=()
for ((t = 0; t < tasks; t++)); do
    node=$((t / per_node))
    mkdir -p "node$node"
    (cd "node$node" && SLURM_NTASKS=$tasks SLURM_PROCID=$t SLURM_LOCALID=$((t % per_node)) \\
        SLURM_NODEID=$node exec "$@") &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


@dataclass
class Run:
    """One launch: each node's ``paths.root_dir`` and stderr, each rank's probe record, and the
    name of global rank 0's log."""

    roots: list[Path]
    stderr: list[str]
    probes: list[dict]
    log: str = "train.log"

    @property
    def output(self) -> Path:
        return self.roots[0] / RUN


def train_args(data: Path, root: Path | None, probe: Path, *overrides: str) -> list[str]:
    """``llava_lite.cli.train``'s overrides: the tiny stage 1 on CPU float32, batch 2 a device;
    ``root`` None keeps ``paths.root_dir`` at ".", the folder the command runs in."""
    return [
        "experiment=tiny_pretrain",
        f"data.train_files={data / 'train.jsonl'}",
        f"data.image_root={data / 'images'}",
        *([f"paths.root_dir={root}"] if root is not None else []),
        "run_name=mn",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "data.batch_size=2",
        "global_batch_size=8",
        "callbacks.progress_bar=null",
        "+callbacks.probe._target_=test_multinode.ClusterProbe",
        f"+callbacks.probe.out={probe}",
        *overrides,
    ]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher state or a pinned run name, plus ``extra``.

    One OpenMP thread a process: every run then adds its floats in the same order, whatever
    Lightning would pick for its process count, and two processes fit two cores.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARS and k != "LLAVA_LITE_RUN_NAME" and not k.startswith(LAUNCHER_PREFIXES)
    }
    path = [str(TESTS), str(TESTS / "integration"), env.get("PYTHONPATH", "")]
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in path if p), **extra)
    return env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILLs ``proc`` and every process it started, by their ids."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def launch(
    nodes: list[tuple[list[str], dict[str, str]]],
    roots: list[Path],
    workdir: Path,
    probe: Path,
    log: str = "train.log",
) -> Run:
    """Starts every node's command at once and waits for all of them; when one fails or the
    time runs out, kills every node (and what it started) so a hung rendezvous cannot hang the suite."""
    errs = [workdir / f"node{i}.stderr" for i in range(len(nodes))]
    procs = []
    for (cmd, env), path in zip(nodes, errs, strict=True):
        with path.open("w") as err:
            procs.append(subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        running = [p for p in procs if p.poll() is None]
        for p in running:
            kill_tree(p)
    stderr = [path.read_text() for path in errs]
    if running or any(p.returncode for p in procs):
        report = [
            f"--- node {i}: "
            + ("killed (a node failed or time ran out)" if p in running else f"exit {p.returncode}")
            + f"\n{err[-2500:]}"
            for i, (p, err) in enumerate(zip(procs, stderr, strict=True))
        ]
        pytest.fail("\n".join(report))
    probes = [json.loads(f.read_text()) for f in sorted(probe.glob("rank*.json"))]
    return Run(roots=roots, stderr=stderr, probes=probes, log=log)


def samples_per_step(output: Path) -> dict[int, float]:
    with (output / "csv" / "metrics.csv").open() as f:
        return {
            int(r["step"]): float(r["train/samples"]) for r in csv.DictReader(f) if r.get("train/samples")
        }


def trained_weights(output: Path) -> dict[str, torch.Tensor]:
    state = torch.load(output / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.projector.")}


def written(root: Path) -> list[str]:
    """What a run wrote under its root, without Hydra's own per-process record and log."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".hydra") for part in p.parts) and p.suffix != ".log"
    )


def test_sbatch_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), RECORDS)


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Run:
    """The reference: one node, 2 processes (Lightning launches rank 1), ``trainer=ddp``."""
    work = tmp_path_factory.mktemp("one_node")
    root, probe = work / "root", work / "probe"
    cmd = [sys.executable, "-m", "llava_lite.cli.train"]
    cmd += train_args(data, root, probe, "trainer=ddp", "trainer.devices=2")
    run = launch([(cmd, clean_env())], [root], work, probe)
    assert [(p["environment"], p["node_rank"], p["local_rank"]) for p in run.probes] == [
        ("LightningEnvironment", 0, 0),
        ("LightningEnvironment", 0, 1),
    ]
    return run


def assert_same_as_one_node(run: Run, one_node: Run, environment: str) -> None:
    """Both ranks joined the same 2-rank world from their own node; the training and what it wrote
    match the one-node run."""
    assert [(p["environment"], p["global_rank"], p["node_rank"], p["local_rank"]) for p in run.probes] == [
        (environment, 0, 0, 0),
        (environment, 1, 1, 0),
    ]
    assert all((p["world_size"], p["num_nodes"], p["backend"]) == (2, 2, "gloo") for p in run.probes)
    stderr = "\n".join(run.stderr)  # Lightning's own line, from each rank
    for rank in (0, 1):
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in stderr
    # trainer.world_size counts nodes, so global_batch_size gives the same accumulation
    assert GLOBAL_BATCH_LINE in (run.output / run.log).read_text()
    assert GLOBAL_BATCH_LINE in (one_node.output / one_node.log).read_text()

    losses, reference = read_losses(run.output), read_losses(one_node.output)
    assert sorted(losses) == sorted(reference) == [0, 1]
    for step, loss in losses.items():
        # The same float32 sums in the same order (2 gloo ranks, 1 thread each); a few ulps allowed.
        assert loss == pytest.approx(reference[step], rel=1e-6), step
    assert samples_per_step(run.output) == samples_per_step(one_node.output) == {0: 8.0, 1: 8.0}
    ours, theirs = trained_weights(run.output), trained_weights(one_node.output)
    assert ours.keys() == theirs.keys()
    for name, weight in ours.items():
        torch.testing.assert_close(weight, theirs[name], rtol=1e-6, atol=1e-7, msg=name)

    # Written once: node 0 holds what the one-node run wrote; node 1 wrote nothing but Hydra's own.
    assert written(run.roots[0]) == written(one_node.roots[0])
    assert f"{RUN}/checkpoints/last.ckpt" in written(run.roots[0])
    assert written(run.roots[1]) == []


@pytest.mark.slow
def test_two_nodes_from_env_vars_train_like_one_node(tmp_path: Path, data: Path, one_node: Run) -> None:
    """``MASTER_ADDR`` / ``MASTER_PORT`` / ``NODE_RANK`` on each node, one command each:
    ``LightningEnvironment`` (no ``WORLD_SIZE`` or ``LOCAL_RANK`` set: the world size is
    ``trainer.num_nodes`` x ``trainer.devices``, and Lightning launches a node's other devices)."""
    probe, port = tmp_path / "probe", str(free_port())
    roots = [tmp_path / f"node{i}" for i in range(2)]
    nodes = []
    for i, root in enumerate(roots):
        cmd = [sys.executable, "-m", "llava_lite.cli.train"]
        cmd += train_args(data, root, probe, "trainer=multinode", "trainer.devices=1", "trainer.num_nodes=2")
        nodes.append((cmd, clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(i))))
    run = launch(nodes, roots, tmp_path, probe)
    assert_same_as_one_node(run, one_node, "LightningEnvironment")


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_one_node(tmp_path: Path, data: Path, one_node: Run) -> None:
    """``torchrun --nnodes 2 --nproc-per-node 1 --node-rank i --master-addr ... -m llava_lite.cli.train``
    on each node: ``TorchElasticEnvironment``, torchrun starts the processes, Lightning none."""
    probe, port = tmp_path / "probe", str(free_port())
    roots = [tmp_path / f"node{i}" for i in range(2)]
    nodes = []
    for i, root in enumerate(roots):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
        cmd += ["--node-rank", str(i), "--master-addr", "127.0.0.1", "--master-port", port]
        cmd += ["-m", "llava_lite.cli.train"]
        cmd += train_args(data, root, probe, "trainer=multinode", "trainer.devices=1", "trainer.num_nodes=2")
        nodes.append((cmd, clean_env()))
    run = launch(nodes, roots, tmp_path, probe)
    assert_same_as_one_node(run, one_node, "TorchElasticEnvironment")


@pytest.mark.slow
def test_sbatch_script_under_a_stand_in_srun_trains_like_one_node(
    tmp_path: Path, data: Path, one_node: Run
) -> None:
    """The shipped script as the batch step of a 2-node job, 1 task a node: ``SLURMEnvironment``
    takes the ranks from the task variables, the address from ``SLURM_NODELIST``, the node and
    device counts from the script, each task logs to ``train_rank<N>.log``."""
    probe, bin_dir = tmp_path / "probe", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    job = {
        "SLURM_JOB_NAME": "llava-lite",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),  # SLURMEnvironment's own pick (15000 + 4242) may be taken here
        "RUN_NAME": "mn",
    }
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    cmd = ["bash", str(SBATCH), *train_args(data, None, probe)]  # trainer=... and counts: the script's
    run = launch(
        [(cmd, clean_env(PATH=path, **job))],
        [tmp_path / "node0", tmp_path / "node1"],
        tmp_path,
        probe,
        log="train_rank0.log",
    )
    assert_same_as_one_node(run, one_node, "SLURMEnvironment")
