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


def test_timm_models_with_the_reports_multi_layer_heads() -> None:
    """MobileNetV2 report: FC 1024 → 512 → 512 with a dropout per layer on the pooled features; Keras report's
    Model B: per output its own FC branch (2 hidden layers), nothing shared after the trunk."""
    import torch

    from backbones import create_backbone, freeze, head_names, replace_heads

    m = create_backbone("mobilenetv2_100", 2, head_hidden=[1024, 512, 512], head_dropout=[0.5, 0.3, 0.2])
    seq = m.heads.branches["out"]
    lin = [mod for mod in seq if isinstance(mod, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(1280, 1024), (1024, 512), (512, 512), (512, 2)]
    assert [mod.p for mod in seq if isinstance(mod, torch.nn.Dropout)] == [0.5, 0.3, 0.2]
    assert head_names(m) == ["heads"]
    freeze(m, "backbone")
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert trainable == 1280 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 512 + 512 + 512 * 2 + 2
    m.eval()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 2)

    b = create_backbone("resnet18", {"age": 1, "gender": 2}, head_hidden=[256, 128], head_dropout=0.25)
    assert set(b.heads.branches) == {"age", "gender"}
    assert b.heads.branches["age"][0].weight.data_ptr() != b.heads.branches["gender"][0].weight.data_ptr()
    b.eval()
    assert {k: tuple(v.shape) for k, v in b(torch.randn(2, 3, 64, 64)).items()} == {
        "age": (2, 1),
        "gender": (2, 2),
    }
    b2 = replace_heads(b, {"gender": 2})
    assert list(b2.heads.branches) == ["gender"] and b2.heads.branches["gender"][0].out_features == 256
    with pytest.raises(ValueError, match="head_dropout"):
        create_backbone("resnet18", 2, head_hidden=[64, 32], head_dropout=[0.1])
