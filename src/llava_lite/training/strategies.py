"""Lightning's fully sharded strategies as ``trainer=fsdp`` and ``trainer=fsdp2`` ship them.

``FSDPStrategy`` is Lightning's (torch FSDP1: flat parameters, one unit per wrapped layer),
which also runs on CPU processes over gloo. Lightning passes torch's FSDP
``device_id=root_device.index``, which is ``None`` on a CPU, and torch's FSDP then refuses to
start ("FSDP needs a non-CPU accelerator device"); given ``device_id=cpu`` it shards, gathers
and reduces on the CPU with the same code. A full checkpoint's optimiser state is gathered
without torch's CPU offload there, which on a CPU would alias the Adam moments
(``optimizer_state``). On a GPU nothing differs from Lightning's class.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` used for data parallelism only: every
rank is a data-parallel replica that holds a shard (torch ``fully_shard``, FSDP2), none splits a
layer (tensor parallelism). ``LlavaLitModule.configure_model`` applies ``fully_shard`` through
``shard_fsdp2``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from torch import nn
from torch.optim import Optimizer
from transformers import PreTrainedModel

from llava_lite.modeling.dtypes import resolve_dtype


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's ``FSDPStrategy``, which also runs on CPU processes (tests, small machines)."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from lightning.fabric.strategies.fsdp import (
            _move_torchmetrics_to_device,
            _setup_activation_checkpointing,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel

        # What Lightning's _setup_model does, with the CPU as FSDP's device.
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        # torch's FSDP1 gathers each optimiser state (exp_avg, exp_avg_sq) of a flat parameter
        # into one reused buffer and, with offload_to_cpu, returns views of it: `.cpu()` copies
        # from a GPU but not on a CPU, so every moment would come back as the last one gathered
        # (torch/distributed/fsdp/_optim_utils.py, _allgather_orig_param_states). Without the
        # offload it clones each; the state is on the CPU already.
        from torch.distributed.fsdp import (
            FullOptimStateDictConfig,
            FullStateDictConfig,
            OptimStateKeyType,
            StateDictType,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        configs = (
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, *configs):
            state = FSDP.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # Lightning's full format: keyed by parameter index
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy``, which also runs on CPU processes (DeepSpeed's CPU
    accelerator over gloo). Lightning refuses every accelerator but CUDA in
    ``setup_environment``, checks CUDA device indices in ``setup_distributed`` and passes
    ``deepspeed.initialize`` the root device's index, ``None`` on a CPU; on a CPU this class
    skips the first two and passes rank 0's device slot. On a GPU it is Lightning's class."""

    def setup_environment(self) -> None:
        if self.root_device.type != "cpu":
            return super().setup_environment()
        DDPStrategy.setup_environment(self)  # Lightning's own, without the CUDA-only check
        return None

    def setup_distributed(self) -> None:
        if self.root_device.type != "cpu":
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()
        return None

    def _setup_model_and_optimizer(
        self, model: nn.Module, optimizer: Optimizer | None, lr_scheduler: Any = None
    ) -> Any:
        if self.root_device.type != "cpu":
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        import argparse

        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=0),  # one CPU "device" a process
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as fully sharded data parallelism over all ranks (FSDP2).

    Args:
        param_dtype: the dtype FSDP2 gathers parameters in for compute (``bfloat16`` for
            bf16 compute over float32 master shards; ``None`` computes in the stored dtype).
        reduce_dtype: the dtype gradients are reduce-scattered in (``float32`` keeps the
            reduction exact when ``param_dtype`` is bf16).
        **kwargs: ``ModelParallelStrategy`` arguments (``save_distributed_checkpoint``, ...).
    """

    def __init__(
        self, param_dtype: str | None = None, reduce_dtype: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.param_dtype = resolve_dtype(param_dtype) if param_dtype else None
        self.reduce_dtype = resolve_dtype(reduce_dtype) if reduce_dtype else None

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        # Every rank a data-parallel shard holder: the device mesh is (world, 1), so the
        # sampler gives each rank its own samples (Lightning's default splits ranks for TP).
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1


def block_class_names(model: nn.Module) -> set[str]:
    """The transformer blocks of every Hugging Face model inside ``model`` (their
    ``_no_split_modules``: decoder layers of the LLM, encoder layers of the tower)."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(module._no_split_modules or ())
    return names


def shard_fsdp2(model: nn.Module, strategy: FSDP2Strategy, methods: tuple[str, ...] = ()) -> int | None:
    """``fully_shard`` each transformer block of ``model``, then ``model`` itself (the root
    holds the embeddings, projector, norm and head); ``methods`` are entry points besides
    ``forward`` that must gather the root's shards too. Returns the number of blocks
    sharded, ``None`` when ``model`` already was (``configure_model`` runs again for a
    later validate or test)."""
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if isinstance(model, FSDPModule):
        return None
    mesh = strategy.device_mesh["data_parallel"]
    policy = MixedPrecisionPolicy(param_dtype=strategy.param_dtype, reduce_dtype=strategy.reduce_dtype)
    names = block_class_names(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in reversed(blocks):  # inner before outer, should a listed block hold another
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for method in methods:
        register_fsdp_forward_method(model, method)
    return len(blocks)


def is_sharded(strategy: Any) -> bool:
    """Whether the strategy holds only a shard of the weights on each rank (FSDP1 / FSDP2)."""
    return isinstance(strategy, LightningFSDPStrategy | ModelParallelStrategy)


def is_fsdp1(module: Any) -> bool:
    """Whether ``module`` is torch's FSDP1 wrapper (``FullyShardedDataParallel``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of ``module`` on CPU; a collective under FSDP1 / FSDP2
    (every rank must call it), plain ``state_dict`` otherwise."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)
