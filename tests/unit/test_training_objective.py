"""ObjectiveModule / fit_objective: the library's optimiser recipe on a caller's objective."""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Iterator

import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch import nn

from llava_lite.training import ObjectiveModule, fit_objective
from llava_lite.training.optim import build_cosine_schedule

STEPS, WARMUP, LR, DECAY = 12, 3, 0.05, 0.1


class Tiny(nn.Module):
    """Embedding (2-D, decayed), linear with bias, layer norm: every kind of param_groups group."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 6)
        self.proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.embed(ids)))


def _parts() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"body": Tiny(), "head": nn.Linear(6, 3)}


def _batches(n: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 7, (5,), generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)
    ]


def _loss(parts, batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids, targets = batch
    logits = parts["head"](parts["body"](ids))
    ce = nn.functional.cross_entropy(logits, targets)
    # large enough that the gradient norm passes 1 and clipping acts
    return 30.0 * ce, logits.pow(2).mean()


def _objective(parts):
    def objective(batch):
        ce, reg = _loss(parts, batch)
        return ce + 0.1 * reg, (ce.detach(), float(reg.detach()))

    return objective


def _hand_loop(
    parts: dict[str, nn.Module], batches, decay_everything: bool = False, clip: bool = True
) -> dict[str, nn.Module]:
    """The recipe written out: decay on >= 2-D params only, AdamW, warm-up + cosine, norm clip."""
    params = [p for part in parts.values() for p in part.parameters()]
    decay = [p for p in params if p.ndim >= 2 or decay_everything]
    no_decay = [p for p in params if p.ndim < 2 and not decay_everything]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )

    def factor(step: int) -> float:
        if step < WARMUP:
            return step / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    objective = _objective(parts)
    for batch in batches[:STEPS]:
        optimizer.zero_grad(set_to_none=True)
        objective(batch)[0].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
    return parts


def _fit(parts, batches, progress=None, **fit_kwargs) -> ObjectiveModule:
    module = ObjectiveModule(
        parts, _objective(parts), lr=LR, weight_decay=DECAY, warmup_steps=WARMUP, progress=progress
    )
    return fit_objective(module, iter(batches), STEPS, **fit_kwargs)


def _assert_same_weights(a: dict[str, nn.Module], b: dict[str, nn.Module]) -> None:
    for name in a:
        for (key, x), (_, y) in zip(a[name].state_dict().items(), b[name].state_dict().items(), strict=True):
            torch.testing.assert_close(x, y, msg=f"{name}.{key}")


def _differs(a: dict[str, nn.Module], b: dict[str, nn.Module]) -> bool:
    try:
        _assert_same_weights(a, b)
    except AssertionError:
        return True
    return False


def test_weights_match_the_hand_written_recipe() -> None:
    batches = _batches()
    start = _parts()
    module = _fit(copy.deepcopy(start), batches)
    reference = _hand_loop(copy.deepcopy(start), batches)
    fitted = dict(module.parts.items())
    assert _differs(fitted, start), "training moved no weight"
    _assert_same_weights(fitted, reference)
    # the comparison is sharp: decay on biases / norms, or no clipping, lands elsewhere
    assert _differs(fitted, _hand_loop(copy.deepcopy(start), batches, decay_everything=True))
    assert _differs(fitted, _hand_loop(copy.deepcopy(start), batches, clip=False))
    assert not any(m.training for m in module.parts.modules()), "parts are left in eval mode"


def test_losses_and_progress_per_step() -> None:
    batches = _batches()
    parts = _parts()
    calls: list[tuple[float, ...]] = []
    module = _fit(parts, batches, progress=lambda *record: calls.append(record))
    assert len(module.losses) == STEPS
    assert [r[0] for r in module.losses] == list(range(1, STEPS + 1))
    assert calls == module.losses
    assert all(len(r) == 3 and all(isinstance(v, float) for v in r[1:]) for r in module.losses)
    # the first record holds the objective's values before any update
    with torch.no_grad():
        ce, reg = _loss(_parts(), batches[0])
    assert module.losses[0][1:] == pytest.approx((float(ce), float(reg)), rel=1e-5)
    assert module.losses[-1][1] < module.losses[0][1]


def test_schedule_warms_up_then_decays_to_zero() -> None:
    lrs: list[float] = []
    module: ObjectiveModule | None = None

    def progress(step, *values) -> None:  # after the step: the lr the next step will use
        lrs.append(module.trainer.optimizers[0].param_groups[0]["lr"])

    parts = _parts()
    module = ObjectiveModule(
        parts, _objective(parts), lr=LR, weight_decay=DECAY, warmup_steps=WARMUP, progress=progress
    )
    fit_objective(module, iter(_batches()), STEPS)
    used = [0.0, *lrs[:-1]]  # the lr of steps 1..STEPS (warm-up starts at 0)
    assert used[:WARMUP] == pytest.approx([LR * s / WARMUP for s in range(WARMUP)])
    assert max(used) == pytest.approx(LR) and used.index(max(used)) == WARMUP
    assert all(a > b for a, b in zip(used[WARMUP:], used[WARMUP + 1 :], strict=False))
    assert used[-1] < 0.05 * LR
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    groups = module.trainer.optimizers[0].param_groups
    assert {g["name"]: g["weight_decay"] for g in groups} == {
        "body": DECAY,
        "body/no_decay": 0.0,
        "head": DECAY,
        "head/no_decay": 0.0,
    }
    assert all((p.ndim < 2) == g["name"].endswith("/no_decay") for g in groups for p in g["params"])


def test_the_schedule_warms_up_exactly_warmup_steps() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    for steps in range(1, 400):
        for warmup in range(steps):
            factor = build_cosine_schedule(optimizer, steps, warmup_steps=warmup).lr_lambdas[0]
            assert factor(warmup) == 1.0 and (warmup == 0 or factor(warmup - 1) < 1.0), (warmup, steps)
    with pytest.raises(ValueError, match=r"warmup_steps=5; valid: an integer in \[0, total_steps=5\)"):
        build_cosine_schedule(optimizer, 5, warmup_steps=5)


def test_micro_batches_add_up_to_one_step() -> None:
    """A step given as micro-batches of unequal size, each summed loss / the step's count."""
    torch.manual_seed(0)
    start = {"head": nn.Linear(4, 2)}
    g = torch.Generator().manual_seed(2)
    steps = [(torch.randn(7, 4, generator=g), torch.randint(0, 2, (7,), generator=g)) for _ in range(4)]

    def split(x, y):
        return [(x[:2], y[:2]), (x[2:], y[2:])]

    def micro(parts):
        def objective(micro_batches):
            total = sum(len(y) for _, y in micro_batches)
            loss = sum(
                nn.functional.cross_entropy(parts["head"](x), y, reduction="sum") / total
                for x, y in micro_batches
            )
            return loss, (loss.detach(),)

        return objective

    def whole(parts):
        def objective(batch):
            loss = nn.functional.cross_entropy(parts["head"](batch[0]), batch[1])
            return loss, (loss.detach(),)

        return objective

    a, b = copy.deepcopy(start), copy.deepcopy(start)
    ma = fit_objective(ObjectiveModule(a, micro(a), lr=0.1), (split(*s) for s in steps), 4)
    mb = fit_objective(ObjectiveModule(b, whole(b), lr=0.1), iter(steps), 4)
    _assert_same_weights(a, b)
    assert [r[1] for r in ma.losses] == pytest.approx([r[1] for r in mb.losses], rel=1e-5)


@pytest.mark.parametrize(
    ("steps", "warmup", "match"),
    [
        (0, 0, r"steps=0; valid: an integer >= 1"),
        (5, 5, r"warmup_steps=5; valid: an integer in \[0, steps=5\)"),
        (5, 7, r"warmup_steps=7; valid"),
    ],
)
def test_bad_steps(steps: int, warmup: int, match: str) -> None:
    parts = _parts()
    module = ObjectiveModule(parts, _objective(parts), lr=LR, warmup_steps=warmup)
    with pytest.raises(ValueError, match=match):
        fit_objective(module, iter(_batches()), steps)
    with pytest.raises(ValueError, match=r"warmup_steps=-1; valid: an integer >= 0"):
        ObjectiveModule(parts, _objective(parts), lr=LR, warmup_steps=-1)


def test_short_source_fails() -> None:
    parts = _parts()
    module = ObjectiveModule(parts, _objective(parts), lr=LR)
    with pytest.raises(ValueError, match=r"batches ran out after 3 batches; valid: at least steps=5"):
        fit_objective(module, iter(_batches(3)), 5)


def test_source_not_read_past_the_last_step() -> None:
    taken = 0

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal taken
        while True:
            taken += 1
            yield _batches(1)[0]

    parts = _parts()
    fit_objective(ObjectiveModule(parts, _objective(parts), lr=LR), endless(), 4)
    assert taken == 4


def test_quiet(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    level = logging.getLogger("lightning.pytorch").level
    parts = _parts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_objective(ObjectiveModule(parts, _objective(parts), lr=LR), iter(_batches()), 3, seed=0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith("lightning")], caplog.text
    # Lightning's notices are gone; a dependency's deprecation (torch's LeafSpec, raised from
    # Lightning's pytree helper) is not Lightning's to hide and may pass.
    notices = [str(w.message) for w in caught if issubclass(w.category, PossibleUserWarning)]
    assert notices == []
    assert list(tmp_path.iterdir()) == [], "no lightning_logs or checkpoints written"
    assert logging.getLogger("lightning.pytorch").level == level, "logger level restored"


def test_parts_train_in_train_mode() -> None:
    """Parts handed over in eval mode (e.g. just scored) still train with dropout on."""
    parts = {"body": Tiny().eval(), "head": nn.Linear(6, 3).eval()}
    modes: list[bool] = []

    def objective(batch):
        modes.append(all(m.training for p in parts.values() for m in p.modules()))
        return _loss(parts, batch)[0], ()

    module = fit_objective(ObjectiveModule(parts, objective, lr=LR), iter(_batches()), 2)
    assert modes == [True, True]
    assert module.losses == [(1,), (2,)]
    assert not any(m.training for p in parts.values() for m in p.modules())
