"""Projector registry: exact keys, the mlp{N}x_gelu family, and loud errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llava_lite.modeling.projector import PROJECTORS, build_projector, valid_projector_types


@pytest.mark.parametrize(
    "kind", [*sorted(PROJECTORS), "mlp1x_gelu", "mlp2x_gelu", "mlp3x_gelu", "mlp12x_gelu"]
)
def test_every_key_builds_and_maps_shapes(kind: str) -> None:
    in_dim, out_dim = (16, 16) if kind == "identity" else (12, 20)
    proj = build_projector(kind, in_dim, out_dim)
    x = torch.randn(2, 5, in_dim)  # [N, P, D_vision]
    assert proj(x).shape == (2, 5, out_dim)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_depth_and_llava_key_layout(depth: int) -> None:
    proj = build_projector(f"mlp{depth}x_gelu", 8, 4)
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    gelus = [m for m in proj if isinstance(m, nn.GELU)]
    assert len(linears) == depth and len(gelus) == depth - 1
    # Same state-dict keys as LLaVA's mm_projector (Sequential indices 0, 2, 4, ...).
    assert [k for k in proj.state_dict() if k.endswith("weight")] == [f"{2 * i}.weight" for i in range(depth)]


def test_linear_is_a_single_linear() -> None:
    proj = build_projector("linear", 8, 4)
    assert isinstance(proj, nn.Linear) and proj.weight.shape == (4, 8)


@pytest.mark.parametrize(
    "kind",
    ["mlp", "mlp0x_gelu", "mlp2x_gelu_v2", "xmlp2x_gelu", "mlp2x_relu", "MLP2X_GELU", "Linear", "mlpx_gelu"],
)
def test_unknown_keys_fail_listing_valid_ones(kind: str) -> None:
    with pytest.raises(KeyError) as err:
        build_projector(kind, 8, 8)
    message = str(err.value)
    assert repr(kind) in message
    for valid in valid_projector_types():
        assert valid in message


def test_identity_needs_equal_dims() -> None:
    with pytest.raises(ValueError, match="8 != 4"):
        build_projector("identity", 8, 4)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear"])
def test_patch_positions_add_one_learned_vector_per_slot(kind: str) -> None:
    torch.manual_seed(0)
    plain = build_projector(kind, 12, 20)
    with_positions = build_projector(kind, 12, 20, patch_positions=5)
    layers = list(plain) if isinstance(plain, nn.Sequential) else [plain]
    with_positions[: len(layers)].load_state_dict(nn.Sequential(*layers).state_dict())
    x = torch.randn(3, 5, 12)  # [N, P, D_vision]
    # Zero at the start: adding the positions changes nothing until they train.
    torch.testing.assert_close(with_positions(x), plain(x))
    positions = with_positions[-1].weight
    with torch.no_grad():
        positions.copy_(torch.randn(5, 20))
    torch.testing.assert_close(with_positions(x) - plain(x), positions.expand(3, 5, 20))
    # An MLP keeps LLaVA's keys; the positions are the next index.
    assert list(with_positions.state_dict())[-1] == f"{len(layers)}.weight"


def test_patch_positions_refuse_another_number_of_tokens() -> None:
    proj = build_projector("mlp2x_gelu", 12, 20, patch_positions=5)
    with pytest.raises(ValueError, match="4 image tokens, but 5 were built"):
        proj(torch.randn(1, 4, 12))
