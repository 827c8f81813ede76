from __future__ import annotations

import pytest
import torch
from torch import nn

import backbones
from backbones import (
    WeightsUnavailableError,
    create_backbone,
    list_backbones,
    register_backbone,
)


def test_list_backbones_has_ours_and_timm() -> None:
    names = list_backbones()
    for n in (
        "levi_hassner",
        "basic_cnn",
        "multi_branch_cnn",
        "resnet18",
        "mobilenetv2_100",
        "efficientnet_b0",
    ):
        assert n in names
    assert names[:3] == ["basic_cnn", "levi_hassner", "multi_branch_cnn"]
    assert list_backbones("resnet1*")[:2] == ["resnet10t", "resnet14t"] or "resnet18" in list_backbones(
        "resnet1*"
    )
    assert "levi_hassner" in list_backbones("levi*")
    assert "levi_hassner" not in list_backbones("resnet*")


@pytest.mark.parametrize(("bad", "hint"), [("levi_hasner", "levi_hassner"), ("resnet81", "resnet18")])
def test_unknown_name_suggests_close_matches(bad: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        create_backbone(bad, 2)


def test_unknown_kwargs_ours() -> None:
    with pytest.raises(TypeError, match="bogus") as ei:
        create_backbone("levi_hassner", 2, img_size=64, bogus=1)
    assert "neurons" in str(ei.value)  # lists what it accepts


def test_unknown_kwargs_timm() -> None:
    with pytest.raises(TypeError, match="bogus_opt"):
        create_backbone("resnet18", 2, bogus_opt=3)


@pytest.mark.parametrize("bad", [{}, {"a": 0}, -1, True, "2", {"a b": 2}])
def test_bad_num_outputs(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        create_backbone("basic_cnn", bad, img_size=32, num_layers=2, base_features=4, hidden=8)  # type: ignore[arg-type]


def test_register_custom_backbone() -> None:
    @register_backbone("_test_tiny")
    def tiny(num_outputs, *, in_chans: int = 3, drop_rate: float | None = None, width: int = 4) -> nn.Module:
        m = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_outputs))
        m._head_names = ("1",)  # type: ignore[assignment]
        return m

    try:
        assert "_test_tiny" in list_backbones()
        m = create_backbone("_test_tiny", 3, width=2)
        assert m(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
        with pytest.raises(TypeError, match="height"):
            create_backbone("_test_tiny", 3, height=2)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("_test_tiny")(lambda n: nn.Identity())
    finally:
        backbones._registry._REGISTRY.pop("_test_tiny", None)


def test_pretrained_true_for_ours_is_unavailable() -> None:
    with pytest.raises(WeightsUnavailableError, match="pretrained: /path"):
        create_backbone("levi_hassner", 2, pretrained=True, img_size=64)
