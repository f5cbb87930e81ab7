"""Projector registry: exact keys, the mlp{N}x_gelu family, the +patch_positions variant, loud errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llava_lite.modeling.projector import (
    PROJECTORS,
    build_projector,
    parse_projector_type,
    projector_to_llava_hf,
    valid_projector_types,
)


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
    ("kind", "parsed"),
    [
        ("linear", ("linear", None)),
        ("identity", ("identity", None)),
        ("mlp12x_gelu", ("mlp12x_gelu", None)),
        ("mlp2x_gelu+patch_positions", ("mlp2x_gelu", "patch_positions")),
        ("linear+patch_positions", ("linear", "patch_positions")),
        ("identity+patch_positions", ("identity", "patch_positions")),
    ],
)
def test_type_grammar_is_a_base_and_at_most_one_variant(kind: str, parsed: tuple) -> None:
    assert tuple(parse_projector_type(kind)) == parsed


@pytest.mark.parametrize(
    "kind",
    [
        "mlp",
        "mlp0x_gelu",
        "mlp2x_gelu_v2",
        "xmlp2x_gelu",
        "mlp2x_relu",
        "MLP2X_GELU",
        "Linear",
        "mlpx_gelu",
        "",
        "mlp2x_gelu+patch_position",
        "mlp2x_gelu+patch_positions_v2",
        "mlp2x_gelu+Patch_Positions",
        "mlp2x_gelu+",
        "+patch_positions",
        "patch_positions",
        "mlp2x_gelu+patch_positions+patch_positions",
        "mlp2x_gelu +patch_positions",
        "mlp2x_gelu_patch_positions",
        "mlp2x+gelu",
        "mlp2x_relu+patch_positions",
    ],
)
def test_unknown_keys_fail_listing_valid_ones(kind: str) -> None:
    with pytest.raises(KeyError) as err:
        build_projector(kind, 8, 8, 4)
    message = str(err.value)
    assert repr(kind) in message
    for valid in valid_projector_types():
        assert valid in message


def test_identity_needs_equal_dims() -> None:
    with pytest.raises(ValueError, match="8 != 4"):
        build_projector("identity", 8, 4)


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "mlp3x_gelu", "linear", "identity"])
def test_patch_positions_add_one_learned_vector_per_slot(kind: str) -> None:
    dims = (20, 20) if kind == "identity" else (12, 20)
    torch.manual_seed(0)
    plain = build_projector(kind, *dims)
    torch.manual_seed(0)
    with_positions = build_projector(f"{kind}+patch_positions", *dims, 5)
    layers = list(plain) if isinstance(plain, nn.Sequential) else [plain]
    # Same seed, same parameter creation order: the base's weights come out bit-identical.
    for key, value in nn.Sequential(*layers).state_dict().items():
        assert torch.equal(with_positions.state_dict()[key], value)
    x = torch.randn(3, 5, dims[0])  # [N, P, D_vision]
    # Zero at the start: adding the positions changes nothing until they train.
    assert torch.equal(with_positions(x), plain(x))
    positions = with_positions[-1].weight
    with torch.no_grad():
        positions.copy_(torch.randn(5, 20))
    torch.testing.assert_close(with_positions(x) - plain(x), positions.expand(3, 5, 20))
    # An MLP keeps LLaVA's keys; the positions are the next index (linear: 0.weight/0.bias, 1.weight).
    assert list(with_positions.state_dict())[-1] == f"{len(layers)}.weight"


def test_linear_variant_state_dict_layout() -> None:
    proj = build_projector("linear+patch_positions", 8, 4, 3)
    assert list(proj.state_dict()) == ["0.weight", "0.bias", "1.weight"]


def test_patch_positions_refuse_another_number_of_tokens() -> None:
    proj = build_projector("mlp2x_gelu+patch_positions", 12, 20, 5)
    with pytest.raises(ValueError, match="4 image tokens, but 5 were built"):
        proj(torch.randn(1, 4, 12))


def test_patch_positions_need_the_number_of_image_tokens() -> None:
    with pytest.raises(ValueError, match="needs the number of image tokens"):
        build_projector("mlp2x_gelu+patch_positions", 12, 20)


def test_plain_types_ignore_the_number_of_image_tokens() -> None:
    torch.manual_seed(0)
    without = build_projector("mlp2x_gelu", 12, 20)
    torch.manual_seed(0)
    given = build_projector("mlp2x_gelu", 12, 20, 5)
    assert (
        list(given.state_dict()) == list(without.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    )


def test_each_type_has_its_own_llava_hf_rule() -> None:
    mlp = build_projector("mlp2x_gelu", 12, 20)
    act, tensors = projector_to_llava_hf("mlp2x_gelu", mlp)
    assert act == "gelu" and tensors["linear_2.weight"] is mlp[2].weight
    linear = build_projector("linear", 12, 20)
    act, tensors = projector_to_llava_hf("linear", linear)
    assert act == "linear" and torch.equal(tensors["linear_2.weight"], torch.eye(20))
    for kind in ("mlp3x_gelu", "identity"):
        with pytest.raises(ValueError, match="export supports 'mlp2x_gelu' and 'linear'"):
            projector_to_llava_hf(kind, build_projector(kind, 20, 20))
    for kind in ("mlp2x_gelu+patch_positions", "linear+patch_positions"):
        with pytest.raises(ValueError, match="adds nothing to the projected features") as err:
            projector_to_llava_hf(kind, build_projector(kind, 12, 20, 5))
        assert "\n" not in str(err.value) and repr(kind) in str(err.value)
