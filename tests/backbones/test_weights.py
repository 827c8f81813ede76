"""Local weight files, trunk loading, and quick failure when hub weights are not available."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import backbones.weights as bw
from backbones import (
    WeightsMismatchError,
    WeightsUnavailableError,
    create_backbone,
    load_trunk,
    replace_heads,
)


def _trunk_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: str) -> None:
    keys = [k for k in a if not k.startswith(skip)]
    assert keys
    for k in keys:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def resnet18_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    m = create_backbone("resnet18", 5)
    with torch.no_grad():  # make running stats non-default so they are checked too
        m.train()(torch.randn(4, 3, 32, 32))
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "checkpoint"])
def test_timm_local_file_other_head(tmp_path: Path, resnet18_sd: dict[str, torch.Tensor], fmt: str) -> None:
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(resnet18_sd, str(path))
    elif fmt == "pth":
        torch.save(resnet18_sd, path)
    else:
        torch.save({"model": resnet18_sd, "epoch": 3}, path)
    m = create_backbone("resnet18", 3, pretrained=str(path))
    sd = m.state_dict()
    _trunk_equal(resnet18_sd, sd, "fc.")
    assert sd["fc.weight"].shape == (3, 512)
    assert m.pretrained_cfg["file"] == str(path) and "state_dict" not in m.pretrained_cfg
    # same head size: the head is kept too
    same = create_backbone("resnet18", 5, pretrained=str(path)).state_dict()
    assert torch.equal(same["fc.weight"], resnet18_sd["fc.weight"])
    # dict heads on the same trunk
    multi = create_backbone("resnet18", {"gender": 2, "age": 8}, pretrained=str(path))
    _trunk_equal({f"trunk.{k}": v for k, v in resnet18_sd.items()}, multi.state_dict(), "trunk.fc.")
    assert multi(torch.randn(2, 3, 64, 64))["age"].shape == (2, 8)


def test_timm_file_from_multihead_model(tmp_path: Path) -> None:
    src = create_backbone("resnet18", {"gender": 2})
    torch.save(src.state_dict(), tmp_path / "mh.pth")
    m = create_backbone("resnet18", 4, pretrained=str(tmp_path / "mh.pth"))
    _trunk_equal(
        {k[6:]: v for k, v in src.state_dict().items() if k.startswith("trunk.")}, m.state_dict(), "fc."
    )


def test_timm_file_of_other_architecture(tmp_path: Path) -> None:
    torch.save(
        create_backbone("basic_cnn", 2, img_size=32, num_layers=2, base_features=4).state_dict(),
        tmp_path / "x.pth",
    )
    with pytest.raises(WeightsMismatchError):
        create_backbone("resnet18", 2, pretrained=str(tmp_path / "x.pth"))


def test_missing_file() -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_backbone("resnet18", 2, pretrained="/nonexistent/w.pth")


def test_ours_round_trip_and_load_trunk(tmp_path: Path) -> None:
    src = create_backbone("levi_hassner", 2, img_size=64)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "lh.pth")
    m = create_backbone(
        "levi_hassner", {"gender": 2, "age_group": 8}, img_size=64, pretrained=str(tmp_path / "lh.pth")
    )
    _trunk_equal(src.state_dict(), m.state_dict(), "head")
    # load_trunk reports the head keys it skipped
    other = create_backbone("levi_hassner", 8, img_size=64)
    rep = load_trunk(other, src.state_dict())
    assert sorted(rep.skipped_heads) == ["head.bias", "head.weight"]
    assert "fc6.weight" in rep.loaded and not rep.missing
    _trunk_equal(src.state_dict(), other.state_dict(), "head")
    # another architecture: clear error
    with pytest.raises(WeightsMismatchError, match="fc6"):
        create_backbone("levi_hassner", 2, img_size=64, neurons=256, pretrained=str(tmp_path / "lh.pth"))


def test_multi_branch_trunk_transfer() -> None:
    kw = {"img_size": 64, "trunk_channels": (8,), "branch_channels": (8,), "hidden": (8,)}
    src = create_backbone("multi_branch_cnn", {"age": 1, "gender": 2}, **kw)
    dst = create_backbone("multi_branch_cnn", {"gender": 2, "ethnicity": 5}, **kw)
    rep = load_trunk(dst, src.state_dict())
    assert any(k.startswith("branches.age.") for k in rep.skipped_heads)
    assert torch.equal(dst.trunk[0][0].weight, src.trunk[0][0].weight)
    assert torch.equal(dst.branches["gender"].convs[0][0].weight, src.branches["gender"].convs[0][0].weight)


def test_pretrained_true_offline_not_cached_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tried: list[object] = []  # fast = never waits on the network: no connection is even attempted

    def no_network(*args: object, **kwargs: object) -> None:
        tried.append(args)
        raise OSError("network attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(
        socket, "getaddrinfo", no_network
    )  # (online, the first step: huggingface.co's address)
    with pytest.raises(WeightsUnavailableError) as ei:
        create_backbone("resnet18", 2, pretrained=True)
    assert tried == []
    msg = str(ei.value)
    assert (
        "HF_HUB_OFFLINE" in msg and "pretrained: /path/to/weights.pth" in msg and "Hugging Face cache" in msg
    )


def test_pretrained_true_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(bw, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr("backbones.timm_models.hub_reachable", lambda *a, **k: False)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        create_backbone("resnet18", 2, pretrained=True)


def test_pretrained_true_from_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resnet18_sd) -> None:
    """A fake HF cache entry (the real layout) is found and loaded with the hub kept offline."""
    import huggingface_hub.constants as hc
    from timm.models import get_pretrained_cfg

    hub_id = get_pretrained_cfg("resnet18").hf_hub_id
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    sd = dict(resnet18_sd)
    sd["fc.weight"] = torch.randn(1000, 512)
    sd["fc.bias"] = torch.zeros(1000)
    save_file(sd, str(snap / "model.safetensors"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        "backbones.timm_models.hub_reachable", lambda *a, **k: pytest.fail("probed the network")
    )
    m = create_backbone("resnet18", {"gender": 2}, pretrained=True)
    _trunk_equal({f"trunk.{k}": v for k, v in resnet18_sd.items()}, m.state_dict(), "trunk.fc.")


def test_replace_heads() -> None:
    m = create_backbone("resnet18", 5)
    trunk_w = m.conv1.weight.clone()
    mh = replace_heads(m, {"gender": 2, "age": 8})
    out = mh(torch.randn(2, 3, 64, 64))
    assert out["gender"].shape == (2, 2) and torch.equal(mh.trunk.conv1.weight, trunk_w)
    back = replace_heads(mh, 3)
    assert back(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    lh = create_backbone("levi_hassner", 2, img_size=64)
    fc6 = lh.fc6.weight.clone()
    lh2 = replace_heads(lh, {"age_group": 8})
    assert lh2 is lh and torch.equal(lh.fc6.weight, fc6)
    assert lh(torch.randn(1, 3, 64, 64))["age_group"].shape == (1, 8)
    assert lh.head["age_group"].weight.std().item() == pytest.approx(0.01, rel=0.2)
