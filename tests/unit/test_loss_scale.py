"""The step loss under each strategy's rescaling: Lightning's, DDP's and DeepSpeed's.

Lightning divides what ``training_step`` returns by ``accumulate_grad_batches``; DDP and
DeepSpeed average gradients over ranks; DeepSpeed's ``engine.backward`` divides by its
``gradient_accumulation_steps`` a second time (``loss_scale``'s docstring cites the lines).
These tests replay those divisions on the real ``training_step`` and fail if the DeepSpeed one
is left out, i.e. if Lightning and DeepSpeed both scale the loss and nothing undoes the second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy

from llava_lite.config import LlavaConfig
from llava_lite.training import LlavaLitModule
from llava_lite.training.module import loss_scale

ACCUMULATE = 3
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (optional extra llava_lite[deepspeed]); with it these run on "
    "DeepSpeed's CPU accelerator, Lightning's CUDA-only checks lifted (docs/training.md)",
)


def _deepspeed(config: dict | None = None) -> DeepSpeedStrategy:
    """A ``DeepSpeedStrategy`` without ``__init__``, which needs deepspeed installed (an optional extra)."""
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategy.config = config or {}
    return strategy


def _trainer(strategy: Strategy, world_size: int = 1, accumulate: int = ACCUMULATE) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy, world_size=world_size, accumulate_grad_batches=accumulate)


def test_ddp_and_one_device_undo_lightnings_division_and_the_rank_mean() -> None:
    assert loss_scale(_trainer(SingleDeviceStrategy("cpu"))) == ACCUMULATE
    assert loss_scale(_trainer(DDPStrategy(), world_size=4)) == ACCUMULATE * 4


def test_deepspeed_also_undoes_its_own_division_by_the_accumulation_steps() -> None:
    # Lightning's and DeepSpeed's divisions both; one of them only would give 3 * 4 = 12.
    assert loss_scale(_trainer(_deepspeed(), world_size=4)) == ACCUMULATE**2 * 4
    assert loss_scale(_trainer(_deepspeed({"gradient_allreduce_op": "mean"}), world_size=4)) == 36
    # ZeRO-1/2 can sum over ranks instead of averaging: no rank mean to undo.
    assert loss_scale(_trainer(_deepspeed({"gradient_allreduce_op": "sum"}), world_size=4)) == 9


def _micro_batches(sizes: tuple[int, ...]) -> list[dict]:
    """Text-only micro-batches with ``sizes`` trained tokens each, the step's total attached as the loader does."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for trained in sizes:
        ids = torch.randint(5, 100, (1, 12), generator=gen)
        labels = torch.full_like(ids, -100)
        labels[:, 12 - trained :] = ids[:, 12 - trained :]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    for batch in batches:
        batch["step_trained_tokens"] = sum(sizes)
    return batches


@pytest.mark.parametrize("strategy", ["single_device", "deepspeed"])
def test_the_step_gradient_is_the_token_mean_under_the_strategys_rescaling(strategy: str) -> None:
    """Replays what each strategy does to the returned loss; DeepSpeed must not halve (here third) it."""
    module = LlavaLitModule(model=LlavaConfig.from_name("tiny").to_dict(), stage="finetune")
    deepspeed = strategy == "deepspeed"
    module.trainer = _trainer(_deepspeed() if deepspeed else SingleDeviceStrategy("cpu"))
    batches = _micro_batches((2, 5, 9))  # unequal: a mean of micro-batch means would differ
    assert len(batches) == ACCUMULATE
    for batch in batches:
        loss = module.training_step(batch, 0)
        loss = loss / ACCUMULATE  # Lightning, loops/optimization/automatic.py:83
        if deepspeed:
            loss = loss / ACCUMULATE  # DeepSpeed's engine.backward, scale_wrt_gas (runtime/engine.py:3413)
        loss.backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()
    loss_sum = torch.stack([module._loss_terms(b)[0] for b in batches]).sum()
    (loss_sum / 16).backward()
    want = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and got
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-8, msg=name)


_ENGINE_STEP = """
import sys, torch, deepspeed
from deepspeed.utils import safe_get_full_grad
deepspeed.init_distributed(dist_backend="gloo")
stage, accumulate = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model, reference = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
reference.load_state_dict(model.state_dict())
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": accumulate,
          "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
inputs = [torch.randn(5, 4) for _ in range(accumulate)]
for x in inputs:
    engine.backward(engine(x).pow(2).sum())
    if engine.is_gradient_accumulation_boundary():
        grad = safe_get_full_grad(engine.module.weight).clone()
    engine.step()
sum(reference(x).pow(2).sum() for x in inputs).backward()
print("RATIO", float(grad.norm() / reference.weight.grad.norm()))
"""


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeeds_engine_divides_by_the_accumulation_steps(stage: int) -> None:
    """The premise of ``loss_scale``, on DeepSpeed's CPU accelerator (gloo), in a process of its own
    (DeepSpeed keeps its process groups for the life of the process)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("DeepSpeed's CPU accelerator JIT-builds its shm_comm op and needs a C++ compiler")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": f"2953{stage}"}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    run = subprocess.run(
        [sys.executable, "-c", _ENGINE_STEP, str(stage), str(ACCUMULATE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ratio = float(run.stdout.split("RATIO")[-1])
    assert ratio == pytest.approx(1 / ACCUMULATE, rel=1e-5)


# Lightning's three CUDA-only spots (docs/training.md, "DeepSpeed on a CPU"), lifted for this run.
_ON_A_CPU = """
import os
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import deepspeed
import lightning.pytorch.strategies.deepspeed as lightning_deepspeed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

DeepSpeedStrategy.setup_environment = DDPStrategy.setup_environment
lightning_deepspeed._validate_device_index_selection = lambda devices: None
_initialize = deepspeed.initialize


def initialize(*positional, args=None, **named):
    args.device_rank = 0  # Lightning passes the root device's index: None on a CPU
    return _initialize(*positional, args=args, **named)


deepspeed.initialize = initialize
"""


def _gpu_check_step() -> str:
    """The DeepSpeed step script that benchmarks/gpu_check.sh writes and runs on a GPU."""
    script = (Path(__file__).parents[2] / "benchmarks" / "gpu_check.sh").read_text()
    start = script.index("<<'PY'\n", script.index('cat > "$OUT/deepspeed_step.py"')) + len("<<'PY'\n")
    return script[start : script.index("\nPY\n", start)]


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_gpu_checks_lightning_deepspeed_step_on_a_cpu(stage: int, tmp_path: Path) -> None:
    """gpu_check.sh's ZeRO run through Lightning and DeepSpeed's CPU accelerator: the token-mean gradient."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("DeepSpeed's CPU accelerator JIT-builds its shm_comm op and needs a C++ compiler")
    path = tmp_path / "deepspeed_step.py"
    path.write_text(_ON_A_CPU + _gpu_check_step())
    run = subprocess.run(
        [sys.executable, str(path), str(stage), "cpu"],
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["rel_grad_diff"] < 1e-5, result  # 2/3 if Lightning and DeepSpeed both divided


@needs_deepspeed
def test_lightning_runs_deepspeed_on_cuda_only(tmp_path) -> None:
    """Why llava_lite's ``DeepSpeedStrategy`` exists: Lightning's refuses a CPU although DeepSpeed's
    CPU accelerator runs (tests/integration/test_train_sharded.py trains through llava_lite's).

    ``DeepSpeedStrategy.setup_environment`` refuses every accelerator but CUDA; ZeRO-2 and ZeRO-3
    runs are in benchmarks/gpu_check.sh (docs/training.md, "DeepSpeed on a CPU").
    """
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=DeepSpeedStrategy(stage=2),
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(RuntimeError, match="only supported on CUDA GPUs"):
        trainer.fit(BoringModel())
