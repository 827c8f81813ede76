from __future__ import annotations

import pytest
import torch
from torch import nn

from backbones import create_backbone, data_config
from backbones.levi_hassner import LeviHassnerCNN


@pytest.fixture(scope="module")
def lh227() -> LeviHassnerCNN:
    torch.manual_seed(0)
    return create_backbone("levi_hassner", {"gender": 2, "age_group": 8})  # type: ignore[return-value]


def test_blob_sizes_at_227(lh227: LeviHassnerCNN) -> None:
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(lh227, n).register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[1:])))
        for n in ("conv1", "pool1", "norm1", "conv2", "pool2", "conv3", "pool3")
    ]
    lh227.eval()
    with torch.no_grad():
        out = lh227(torch.randn(1, 3, 227, 227))
    for h in hooks:
        h.remove()
    assert sizes == {
        "conv1": (96, 56, 56),
        "pool1": (96, 28, 28),
        "norm1": (96, 28, 28),
        "conv2": (256, 28, 28),
        "pool2": (256, 14, 14),
        "conv3": (384, 14, 14),
        "pool3": (384, 7, 7),
    }
    assert lh227.fc6.in_features == 18_816
    assert {k: v.shape for k, v in out.items()} == {"gender": (1, 2), "age_group": (1, 8)}


def test_architecture_as_published(lh227: LeviHassnerCNN) -> None:
    assert (lh227.conv1.out_channels, lh227.conv1.kernel_size, lh227.conv1.stride, lh227.conv1.padding) == (
        96,
        (7, 7),
        (4, 4),
        (0, 0),
    )
    assert (lh227.conv2.out_channels, lh227.conv2.kernel_size, lh227.conv2.padding) == (256, (5, 5), (2, 2))
    assert (lh227.conv3.out_channels, lh227.conv3.kernel_size, lh227.conv3.padding) == (384, (3, 3), (1, 1))
    for p in (lh227.pool1, lh227.pool2, lh227.pool3):
        assert p.ceil_mode and p.kernel_size == 3 and p.stride == 2
    for n in (lh227.norm1, lh227.norm2):
        assert (n.size, n.alpha, n.beta, n.k) == (5, 1e-4, 0.75, 1.0)
    assert lh227.fc6.out_features == 512 and lh227.fc7.out_features == 512
    assert lh227.drop6.p == 0.5 and lh227.drop7.p == 0.5
    # floor-mode pooling would have given 6x6 at pool3
    floor = nn.MaxPool2d(3, 2)(torch.zeros(1, 1, 14, 14)).shape[-1]
    assert floor == 6


def test_published_init(lh227: LeviHassnerCNN) -> None:
    for mod, std, bias in (
        (lh227.conv1, 0.01, 0.0),
        (lh227.conv2, 0.01, 1.0),
        (lh227.conv3, 0.01, 0.0),
        (lh227.fc6, 0.005, 1.0),
        (lh227.fc7, 0.005, 1.0),
        (lh227.head["gender"], 0.01, 0.0),
        (lh227.head["age_group"], 0.01, 0.0),
    ):
        w = mod.weight.detach()
        assert abs(w.mean().item()) < 0.2 * std
        assert w.std().item() == pytest.approx(std, rel=0.15 if w.numel() < 5000 else 0.03)
        assert torch.all(mod.bias == bias)


def test_configurable_neurons_dropout_and_size() -> None:
    m = create_backbone("levi_hassner", 3, img_size=64, neurons=(256, 128), drop_rate=0.3)
    assert m.fc6.out_features == 256 and m.fc7.out_features == 128 and m.drop6.p == 0.3
    assert m.fc6.in_features == 384  # 64 -> conv1 15 -> pool1 7 -> pool2 3 -> pool3 1 (ceil mode)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="img_size"):
        m(torch.randn(1, 3, 96, 96))
    assert data_config(m)["input_size"] == (3, 64, 64)


def test_data_config_levi_hassner(lh227: LeviHassnerCNN) -> None:
    cfg = data_config(lh227)
    assert cfg["input_size"] == (3, 227, 227)
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert cfg["std"] == pytest.approx((1 / 255,) * 3)
    assert cfg["crop_pct"] == pytest.approx(227 / 256)
    grey = create_backbone("levi_hassner", 2, img_size=64, in_chans=1)
    assert data_config(grey)["input_size"] == (1, 64, 64) and len(data_config(grey)["mean"]) == 1
