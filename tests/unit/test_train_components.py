"""Freezing by stage, optimiser groups, LR schedule, projector file, empty-batch policy."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from llava_lite.config import LlavaConfig
from llava_lite.training import (
    LlavaLitModule,
    accumulation_steps,
    apply_stage,
    build_adamw,
    build_cosine_schedule,
    count_parameters,
    format_parameter_table,
    load_projector,
    param_groups,
    save_projector,
    trainable_components,
)


def _tiny(**model_overrides) -> dict:
    cfg = LlavaConfig.from_name("tiny").to_dict()
    for key, value in model_overrides.items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


@pytest.fixture(scope="module")
def pretrain_module() -> LlavaLitModule:
    return LlavaLitModule(model=_tiny(), stage="pretrain", optimizer={"lr": 1e-3})


def _trainable(module: torch.nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def test_stage_components() -> None:
    assert trainable_components("pretrain") == {"projector"}
    assert trainable_components("finetune") == {"projector", "llm"}
    assert trainable_components("finetune", train_vision=True) == {"projector", "llm", "vision_tower"}
    with pytest.raises(ValueError, match="valid"):
        trainable_components("stage1")
    with pytest.raises(ValueError, match="only the projector"):
        trainable_components("pretrain", train_vision=True)


def test_pretrain_freezes_all_but_projector(pretrain_module: LlavaLitModule) -> None:
    parts = pretrain_module.model.components()
    assert _trainable(parts["projector"]) == {True}
    assert _trainable(parts["llm"]) == {False}
    assert _trainable(parts["vision_tower"]) == {False}
    rows = {r.component: r for r in count_parameters(parts)}
    assert rows["llm"].trainable == 0 and rows["llm"].frozen > 0
    assert rows["projector"].trainable == sum(p.numel() for p in parts["projector"].parameters())
    table = format_parameter_table(list(rows.values()))
    assert "projector" in table and f"{rows['projector'].trainable:,}" in table


def test_finetune_vision_switch() -> None:
    frozen_vision = LlavaLitModule(model=_tiny(), stage="finetune").model.components()
    assert _trainable(frozen_vision["llm"]) == {True}
    assert _trainable(frozen_vision["vision_tower"]) == {False}
    open_vision = LlavaLitModule(model=_tiny(**{"vision.freeze": False}), stage="finetune").model.components()
    assert _trainable(open_vision["vision_tower"]) == {True}


def test_apply_stage_resets_previous_state(pretrain_module: LlavaLitModule) -> None:
    parts = pretrain_module.model.components()
    try:
        apply_stage(parts, "finetune")
        assert _trainable(parts["llm"]) == {True}
    finally:
        apply_stage(parts, "pretrain")
    assert _trainable(parts["llm"]) == {False}


def test_param_groups_only_trainable_and_no_decay_on_1d(pretrain_module: LlavaLitModule) -> None:
    parts = pretrain_module.model.components()
    groups = param_groups(parts, lr=1e-3, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["projector", "projector/no_decay"]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == sum(p.numel() for p in parts["projector"].parameters())


def test_param_groups_decide_decay_by_the_shape_before_flattening(pretrain_module: LlavaLitModule) -> None:
    """FSDP1 keeps the parameter objects but turns each into a flat 1-D view of its shard: the
    shapes recorded at construction still put weights under decay."""
    parts = pretrain_module.model.components()
    want = [[id(p) for p in g["params"]] for g in param_groups(parts, lr=1e-3, weight_decay=0.1)]
    saved = {p: p.data for p in parts["projector"].parameters()}
    try:
        for p in saved:
            p.data = p.data.flatten()  # as FSDP1 leaves them between steps
        assert len(param_groups(parts, lr=1e-3, weight_decay=0.1)) == 1  # everything 1-D
        groups = param_groups(parts, 1e-3, 0.1, ndims=pretrain_module._param_ndims)
        assert [[id(p) for p in g["params"]] for g in groups] == want
    finally:
        for p, data in saved.items():
            p.data = data


def test_component_lr_and_norms_without_decay() -> None:
    module = LlavaLitModule(model=_tiny(), stage="finetune")
    parts = module.model.components()
    groups = {g["name"]: g for g in param_groups(parts, 2e-5, 0.0, {"projector": 1e-4})}
    assert set(groups) == {"projector", "projector/no_decay", "llm", "llm/no_decay"}
    assert groups["projector"]["lr"] == 1e-4 and groups["llm"]["lr"] == 2e-5
    norm_ids = {id(m.weight) for n, m in parts["llm"].named_modules() if "norm" in type(m).__name__.lower()}
    assert norm_ids and norm_ids <= {id(p) for p in groups["llm/no_decay"]["params"]}
    with pytest.raises(ValueError, match="unknown components"):
        param_groups(parts, 1e-3, 0.0, {"mm_projector": 1e-3})


def test_frozen_parts_have_no_optimizer_state(pretrain_module: LlavaLitModule) -> None:
    parts = pretrain_module.model.components()
    opt = build_adamw(param_groups(parts, 1e-3), lr=1e-3)
    x = torch.randn(2, 5, pretrain_module.model.vision_tower.hidden_size)
    pretrain_module.model.projector(x).sum().backward()
    opt.step()
    llm_ids = {id(p) for p in parts["llm"].parameters()}
    assert opt.state and not llm_ids & {id(p) for p in opt.state}
    pretrain_module.model.zero_grad(set_to_none=True)


def test_cosine_schedule_warmup_then_decay() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = build_adamw([{"name": "x", "params": [p], "lr": 1.0}], lr=1.0)
    sched = build_cosine_schedule(opt, total_steps=100, warmup_ratio=0.03)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1 / 3) and lrs[3] == pytest.approx(1.0)
    assert lrs[50] < lrs[10] and lrs[-1] < 0.01
    with pytest.raises(ValueError, match="max_steps"):
        build_cosine_schedule(opt, math.inf)


def test_accumulation_from_global_batch() -> None:
    assert accumulation_steps(128, 16, 8) == 1
    assert accumulation_steps(128, 4, 2) == 16
    with pytest.raises(ValueError, match="multiple"):
        accumulation_steps(100, 16, 1)


def test_projector_file_round_trip(tmp_path, pretrain_module: LlavaLitModule) -> None:
    projector = pretrain_module.model.projector
    path = save_projector(projector, tmp_path / "projector.safetensors", "mlp2x_gelu")
    other = LlavaLitModule(model=_tiny(), stage="finetune").model.projector
    assert not all(torch.equal(a, b) for a, b in zip(projector.parameters(), other.parameters(), strict=True))
    load_projector(other, path, "mlp2x_gelu")
    for a, b in zip(projector.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="'mlp2x_gelu' projector"):
        load_projector(other, path, "linear")
    with pytest.raises(FileNotFoundError, match="init_projector_from"):
        load_projector(other, tmp_path / "nope.safetensors", "mlp2x_gelu")


def test_projector_file_shape_mismatch_is_named(tmp_path) -> None:
    wide = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
    narrow = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 6))
    path = save_projector(wide, tmp_path / "p.safetensors", "mlp2x_gelu")
    with pytest.raises(ValueError, match=r"p\.safetensors does not fit.*0\.weight"):
        load_projector(narrow, path, "mlp2x_gelu")


def _batch(module: LlavaLitModule, trained: bool) -> dict:
    ids = torch.randint(5, 100, (2, 6))
    labels = torch.full_like(ids, -100)
    if trained:
        labels[:, 3:] = ids[:, 3:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": None}


def test_empty_batch_raises_by_default(pretrain_module: LlavaLitModule) -> None:
    with pytest.raises(ValueError, match="no trained token"):
        pretrain_module._has_trained_tokens(_batch(pretrain_module, trained=False), 3, "train")
    assert pretrain_module._has_trained_tokens(_batch(pretrain_module, trained=True), 0, "train")


def test_empty_batch_skip_is_counted() -> None:
    module = LlavaLitModule(model=_tiny(), stage="pretrain", on_empty_batch="skip")
    assert not module._has_trained_tokens(_batch(module, trained=False), 0, "train")
    assert not module._has_trained_tokens(_batch(module, trained=False), 1, "val")
    assert module.empty_batches == 2


def test_bad_options_fail_loudly() -> None:
    with pytest.raises(ValueError, match="on_empty_batch"):
        LlavaLitModule(model=_tiny(), on_empty_batch="ignore")
    with pytest.raises(ValueError, match="LoRA"):
        LlavaLitModule(model=_tiny(), stage="pretrain", lora={"r": 4})


def test_lora_trains_adapters_only() -> None:
    pytest.importorskip("peft")
    module = LlavaLitModule(
        model=_tiny(),
        stage="finetune",
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    llm_trainable = [n for n, p in module.model.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    assert _trainable(module.model.projector) == {True}
    ids = torch.randint(5, 100, (1, 6))
    out = module.model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)


def test_hparams_are_plain_configs(pretrain_module: LlavaLitModule) -> None:
    hp = pretrain_module.hparams
    assert isinstance(hp["model"], dict) and hp["stage"] == "pretrain"
    assert not any(isinstance(v, torch.nn.Module) for v in hp.values())


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = LlavaLitModule(model=_tiny(), stage="finetune")
    torch.manual_seed(0)
    checkpointed = LlavaLitModule(model=_tiny(), stage="finetune", gradient_checkpointing=True)
    assert (
        checkpointed.model.llm.is_activation_checkpointing and not plain.model.llm.is_activation_checkpointing
    )
    ids = torch.randint(5, 100, (2, 7))
    grads = []
    for module in (plain, checkpointed):
        module.train()
        module.model.loss_terms(input_ids=ids, labels=ids).loss_sum.backward()
        grads.append(module.model.llm.get_input_embeddings().weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_gpu_switches_are_checked_and_wired() -> None:
    with pytest.raises(ValueError, match=r"module.fused_cross_entropy='fused'; valid: \[None, 'liger'\]"):
        LlavaLitModule(model=_tiny(), fused_cross_entropy="fused")
    compiled = LlavaLitModule(model=_tiny(), stage="finetune", compile_llm=True)
    assert compiled.model.llm.get_decoder()._compiled_call_impl is not None


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger_kernel is installed")
def test_liger_switch_without_liger_says_how_to_get_it() -> None:
    with pytest.raises(
        ImportError, match=r"module.fused_cross_entropy=liger needs Liger kernel.*llava_lite\[liger\]"
    ):
        LlavaLitModule(model=_tiny(), fused_cross_entropy="liger")


def _plain_linear_cross_entropy(
    weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    return torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


def _fused_vs_plain(module: LlavaLitModule, fused, device: str) -> None:
    model = module.model.to(device)
    ids = torch.randint(5, 100, (2, 9), device=device)
    labels = ids.masked_fill(torch.arange(9, device=device) < 4, -100)
    plain = model.loss_terms(ids, labels)
    joined = model.loss_terms(ids, labels, linear_cross_entropy=fused)
    assert joined.logits is None and joined.num_tokens == plain.num_tokens
    torch.testing.assert_close(joined.loss_sum, plain.loss_sum, rtol=1e-4, atol=1e-4)


def test_a_linear_cross_entropy_replaces_head_and_loss_exactly() -> None:
    _fused_vs_plain(LlavaLitModule(model=_tiny(), stage="finetune"), _plain_linear_cross_entropy, "cpu")


@pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available(),
    reason="Liger kernel runs on a GPU with liger_kernel installed (llava_lite[liger])",
)
def test_liger_loss_equals_the_plain_loss() -> None:
    module = LlavaLitModule(model=_tiny(), stage="finetune", fused_cross_entropy="liger")
    _fused_vs_plain(module, module.linear_cross_entropy, "cuda")


def test_trained_parameters_are_float32_in_a_bf16_model() -> None:
    cfg = _tiny(**{"llm.dtype": "bfloat16"})
    module = LlavaLitModule(model=cfg, stage="pretrain")
    assert {p.dtype for p in module.model.projector.parameters()} == {torch.float32}
    assert {p.dtype for p in module.model.llm.parameters()} == {torch.bfloat16}
    kept = LlavaLitModule(model=cfg, stage="pretrain", fp32_trainable=False)
    assert {p.dtype for p in kept.model.projector.parameters()} == {torch.bfloat16}
