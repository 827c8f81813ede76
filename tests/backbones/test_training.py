"""Every custom backbone and a few small timm ones train for a few steps on the CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from backbones import create_backbone, data_config

SIZE = 64
HEADS = {"gender": 2, "age_group": 8}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("levi_hassner", {"img_size": SIZE}),
    ("basic_cnn", {"img_size": SIZE, "num_layers": 3, "base_features": 8, "hidden": 32}),
    (
        "multi_branch_cnn",
        {"img_size": SIZE, "trunk_channels": (8, 16), "branch_channels": (16, 16), "hidden": (32, 16)},
    ),
    ("resnet18", {}),
    ("mobilenetv2_100", {}),
    ("efficientnet_b0", {}),
]
IDS = [c[0] for c in CASES]


def _batch(model: torch.nn.Module, n: int = 8) -> torch.Tensor:
    cfg = data_config(model)
    x = torch.rand(n, 3, SIZE, SIZE)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_int_head_shapes(name: str, kw: dict[str, Any]) -> None:
    m = create_backbone(name, 5, **kw).eval()
    with torch.no_grad():
        out = m(_batch(m, 2))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_dict_heads_train(name: str, kw: dict[str, Any]) -> None:
    torch.manual_seed(0)
    m = create_backbone(name, HEADS, drop_rate=0.0, **kw).train()
    x = _batch(m, 4)
    y = {"gender": torch.randint(0, 2, (4,)), "age_group": torch.randint(0, 8, (4,))}
    lr = 1e-4 if name == "levi_hassner" else 1e-3  # LH: Caffe input scale (std 1/255), as published
    opt = torch.optim.Adam(m.parameters(), lr=lr)

    def loss_fn() -> torch.Tensor:
        out = m(x)
        assert isinstance(out, dict) and set(out) == set(HEADS)
        assert out["gender"].shape == (4, 2) and out["age_group"].shape == (4, 8)
        assert all(torch.isfinite(v).all() for v in out.values())
        return sum(F.cross_entropy(out[k], y[k]) for k in HEADS)  # type: ignore[return-value]

    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_channels_last_ok() -> None:
    m = create_backbone("basic_cnn", 3, img_size=32, num_layers=2, base_features=4, hidden=8)
    m = m.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    assert m(x).shape == (2, 3)


def test_basic_cnn_structure() -> None:
    m = create_backbone(
        "basic_cnn", 7, img_size=64, num_layers=5, base_features=8, max_features=32, hidden=16
    )
    chans = [getattr(m, f"block{i}")[0].out_channels for i in range(1, 6)]
    assert chans == [8, 16, 32, 32, 32]
    # the report's order: conv -> relu -> batchnorm -> maxpool
    assert [type(x).__name__ for x in m.block1] == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert m.fc1.in_features == 32 * 2 * 2
    bnf = create_backbone(
        "basic_cnn", 7, img_size=64, num_layers=2, base_features=8, hidden=16, bn_first=True
    )
    assert [type(x).__name__ for x in bnf.block1][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    avg = create_backbone(
        "basic_cnn", 3, img_size=64, num_layers=2, base_features=4, hidden=8, global_pool="avg"
    )
    assert avg(torch.randn(1, 3, 48, 80)).shape == (1, 3)
    assert data_config(m)["input_size"] == (3, 64, 64)


def test_multi_branch_per_task_options() -> None:
    m = create_backbone(
        "multi_branch_cnn",
        {"age": 1, "gender": 2},
        img_size=64,
        trunk_channels=(8,),
        branch_channels=(8, 8),
        final_features={"age": 32, "gender": 64},
        drop_rate={"age": 0.1, "gender": 0.0},
        hidden=(16, 8),
    )
    assert m.branches["age"].convs[-1][0].out_channels == 32
    assert m.branches["gender"].convs[-1][0].out_channels == 64
    out = m(torch.randn(2, 3, 64, 64))
    assert out["age"].shape == (2, 1) and out["gender"].shape == (2, 2)
    single = create_backbone("multi_branch_cnn", 4, img_size=64, trunk_channels=(8,), branch_channels=(8,))
    assert single(torch.randn(2, 3, 64, 64)).shape == (2, 4)
