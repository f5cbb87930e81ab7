"""The DPO stage's loss: packed equals padded, and every reference gives the starting model's log-probs."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from helpers import tiny_llava, write_dataset
from llava_lite.data import LlavaDataModule, LlavaProcessor
from llava_lite.data.collate import LlavaCollator
from llava_lite.data.packing import PackingCollator
from llava_lite.data.preference import PreferenceCollator, PreferenceDataset
from llava_lite.training.logps import sequence_logps
from llava_lite.training.preference import PreferenceLitModule, dpo_loss
from llava_lite.training.reference import compute_logps


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    write_dataset(root, 6)
    tiny_llava().save_pretrained(root / "stage2")
    pairs = [
        {
            "id": f"p{i}",
            "prompt": "What colour is the shape?",
            "image": f"{i:03d}.png",
            "chosen": f"The shape is red{' and round' * (i % 3)}.",
            "rejected": "It is blue" + " maybe" * i,
        }
        for i in range(6)
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


def _module(root, **preference) -> PreferenceLitModule:
    module = PreferenceLitModule(init_from=str(root / "stage2"), preference={"sft_weight": 0.3, **preference})
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    return module


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """As if it had trained: every trainable weight moves."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _batch(root, module, packed: bool) -> dict:
    processor = LlavaProcessor.from_model(module.model)
    dataset = PreferenceDataset(str(root / "pairs.jsonl"), processor, str(root / "images"), "raise")
    inner = (
        PackingCollator(processor.pad_token_id, 200, processor.image_token_id)
        if packed
        else LlavaCollator(processor.pad_token_id, image_token_id=processor.image_token_id)
    )
    return PreferenceCollator(inner)([dataset[i] for i in range(len(dataset))])


def _loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.model.zero_grad(set_to_none=True)
    module._sums = dict.fromkeys(module._sums, 0.0)
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_packed_pairs_give_the_padded_loss_rewards_and_gradients(world) -> None:
    module = _module(world)
    _perturb(module.model)
    padded, packed = _batch(world, module, False), _batch(world, module, True)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    loss_padded, grads_padded = _loss_and_grads(module, padded)
    sums_padded = dict(module._sums)
    loss_packed, grads_packed = _loss_and_grads(module, packed)
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=0)
    for key in ("reward_chosen", "reward_rejected", "dpo", "sft"):
        assert module._sums[key] == pytest.approx(sums_padded[key], rel=1e-5, abs=1e-7), key
    assert grads_packed.keys() == grads_padded.keys() and grads_padded
    # A floor at 1e-6 of the largest gradient: chosen and rejected pull each weight in opposite
    # directions, and where they nearly cancel the rounding of a different summation order shows.
    floor = 1e-6 * max(g.abs().max().item() for g in grads_padded.values())
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=floor, msg=name)


def test_the_loss_is_dpo_plus_the_weighted_chosen_token_mean(world) -> None:
    module = _module(world, beta=0.2)
    _perturb(module.model)
    batch = _batch(world, module, False)
    loss, _ = _loss_and_grads(module, batch)
    pairs = batch["pairs"]
    with torch.no_grad():
        policy, nll = sequence_logps(module.model, batch, module._forward)
        ref, _ = sequence_logps(module.reference.frozen["model"], batch, module._forward)
    margins = 0.2 * ((policy[:pairs] - ref[:pairs]) - (policy[pairs:] - ref[pairs:]))
    expected = -torch.nn.functional.logsigmoid(margins).mean() + 0.3 * nll / batch["chosen_tokens"]
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    _, rc, rr = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], 0.2)
    assert (rc > rr).any() or (rc < rr).any()  # the perturbed policy is not the reference


def test_at_the_start_the_policy_is_its_reference(world) -> None:
    module = _module(world)
    _loss_and_grads(module, _batch(world, module, False))
    assert module._sums["reward_chosen"] == 0.0 and module._sums["reward_rejected"] == 0.0
    assert module._sums["dpo"] / module._sums["pairs"] == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_cached_reference_equals_the_live_frozen_copy(world, tmp_path) -> None:
    live = _module(world)
    cached = _module(world, reference="cached", cache_file=str(tmp_path / "ref.json"))
    dm = LlavaDataModule(str(world / "pairs.jsonl"), image_root=str(world / "images"), batch_size=6,
                         eval_batch_size=4, num_workers=0, preference=True, shuffle=False)  # fmt: skip
    dm.attach_processor(LlavaProcessor.from_model(cached.model))
    table = compute_logps(cached, dm)
    assert sorted(table) == [f"pairs.jsonl:p{i}" for i in range(6)]
    cached.reference.table = {k: tuple(v) for k, v in table.items()}
    for module in (live, cached):
        _perturb(module.model)  # the same training steps on both
    batch = _batch(world, live, False)
    loss_live, grads_live = _loss_and_grads(live, batch)
    loss_cached, grads_cached = _loss_and_grads(cached, batch)
    torch.testing.assert_close(loss_cached, loss_live, rtol=1e-5, atol=0)
    for name, grad in grads_live.items():
        torch.testing.assert_close(grads_cached[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_lora_base_reference_is_the_starting_model_after_training(world) -> None:
    pytest.importorskip("peft")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    module = PreferenceLitModule(
        init_from=str(world / "stage2"), lora=lora, preference={"reference": "lora_base"}
    )
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    start = PreferenceLitModule(init_from=str(world / "stage2"))
    batch = _batch(world, module, False)
    before = module.reference.logps(module, batch, lambda m: sequence_logps(m, batch, module._forward)[0])
    _perturb(module.model)  # LoRA adapters and the fully trained projector both move
    after = module.reference.logps(module, batch, lambda m: sequence_logps(m, batch, module._forward)[0])
    with torch.no_grad():
        expected, _ = sequence_logps(start.model, batch, start._forward)
        policy, _ = sequence_logps(module.model, batch, module._forward)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(before, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, expected, rtol=1e-3)  # the policy itself has moved


def test_lora_base_without_lora_is_refused(world) -> None:
    with pytest.raises(ValueError, match="lora_base needs LoRA"):
        PreferenceLitModule(init_from=str(world / "stage2"), preference={"reference": "lora_base"})
