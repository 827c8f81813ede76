from __future__ import annotations

import pytest
import torch

from backbones import create_backbone, data_config, freeze, param_groups, unfreeze


def _trainable(m: torch.nn.Module) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_freeze_specs_resnet18() -> None:
    m = create_backbone("resnet18", 3)
    n_all = len(list(m.parameters()))
    freeze(m, "backbone")
    assert _trainable(m) == {"fc.weight", "fc.bias"}
    freeze(m, "until:layer2")
    tr = _trainable(m)
    assert not any(n.startswith(("conv1", "bn1", "layer1.", "layer2.")) for n in tr)
    assert {n for n, _ in m.named_parameters() if n.startswith(("layer3.", "layer4.", "fc."))} == tr
    freeze(m, "none")
    assert len(_trainable(m)) == n_all
    freeze(m, "backbone")
    unfreeze(m)
    assert len(_trainable(m)) == n_all
    with pytest.raises(ValueError, match="layer2"):  # lists the module names
        freeze(m, "until:layer9")
    with pytest.raises(ValueError):
        freeze(m, "everything")


def test_freeze_ours_and_multihead() -> None:
    lh = create_backbone("levi_hassner", {"gender": 2, "age_group": 8}, img_size=64)
    freeze(lh, "until:conv2")
    assert _trainable(lh) == {n for n, _ in lh.named_parameters() if not n.startswith(("conv1.", "conv2."))}
    freeze(lh, "backbone")
    assert _trainable(lh) == {f"head.{t}.{w}" for t in ("gender", "age_group") for w in ("weight", "bias")}
    mh = create_backbone("mobilenetv2_100", {"gender": 2})
    freeze(mh, "backbone")
    assert _trainable(mh) == {"heads.gender.weight", "heads.gender.bias"}
    mb = create_backbone(
        "multi_branch_cnn", {"age": 1, "gender": 2}, img_size=64, trunk_channels=(8,), branch_channels=(8,)
    )
    freeze(mb, "backbone")
    assert _trainable(mb) == {f"branches.{t}.head.{w}" for t in ("age", "gender") for w in ("weight", "bias")}
    freeze(mb, "until:trunk")
    assert not any(n.startswith("trunk.") for n in _trainable(mb)) and any(
        n.startswith("branches.age.convs") for n in _trainable(mb)
    )


def test_param_groups() -> None:
    m = create_backbone("resnet18", 3)
    groups = param_groups(m, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert by["backbone"]["lr"] == pytest.approx(1e-4) and by["head"]["lr"] == pytest.approx(1e-3)
    assert by["backbone"]["weight_decay"] == 0.05 and by["backbone_no_decay"]["weight_decay"] == 0.0
    assert [p.shape for p in by["head"]["params"]] == [torch.Size([3, 512])]
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(m.parameters()))
    opt = torch.optim.SGD(groups, lr=1.0)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-4, 1e-3])
    freeze(m, "backbone")
    assert {g["name"] for g in param_groups(m, lr=1e-3)} == {"head", "head_no_decay"}
    all_decay = param_groups(unfreeze(m), lr=1e-3, weight_decay=0.1, no_decay_1d=False)
    assert {g["name"] for g in all_decay} == {"backbone", "head"}


def test_data_config_timm_from_model() -> None:
    m = create_backbone("resnet18", 2)
    cfg = data_config(m)
    assert cfg["input_size"] == tuple(m.pretrained_cfg["input_size"])
    assert cfg["mean"] == pytest.approx(m.pretrained_cfg["mean"]) and cfg["std"] == pytest.approx(
        m.pretrained_cfg["std"]
    )
    assert cfg["interpolation"] == m.pretrained_cfg["interpolation"]
    assert data_config(create_backbone("resnet18", {"g": 2})) == cfg
    assert data_config(create_backbone("resnet18", 2, in_chans=1))["input_size"][0] == 1
    mb = data_config(create_backbone("multi_branch_cnn", {"age": 1}))
    assert (
        mb["input_size"] == (3, 128, 128) and mb["mean"] == (0.0, 0.0, 0.0) and mb["std"] == (1.0, 1.0, 1.0)
    )


def _norm_stats(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("name, spec", [("resnet18", "backbone"), ("basic_cnn", "backbone")])
def test_frozen_norms_stay_in_eval_and_keep_their_running_stats(name: str, spec: str) -> None:
    """model.train() (every epoch) must not put frozen BatchNorm back in train mode: stats would drift."""
    kw = {"base_features": 8, "num_layers": 2, "hidden": 16, "img_size": 32} if name == "basic_cnn" else {}
    m = create_backbone(name, 3, **kw)
    norms = {n for n, mod in m.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms
    freeze(m, spec)
    before = _norm_stats(m)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):  # what an epoch does: train(), forward on fresh batches, step
        m.train()
        assert m.training
        assert not [n for n, mod in m.named_modules() if n in norms and mod.training]
        loss = m(torch.randn(8, 3, 32, 32) * 3 + 1).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _norm_stats(m)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # unfreezing gives them back their normal train/eval behaviour
    unfreeze(m)
    m.train()
    assert all(mod.training for n, mod in m.named_modules() if n in norms)
    m(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(_norm_stats(m)[next(iter(before))], before[next(iter(before))])


def test_until_freezes_only_the_norms_it_covers() -> None:
    m = create_backbone("resnet18", 3)
    freeze(m, "until:layer2")
    m.train()
    training = {n: mod.training for n, mod in m.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)}
    assert not any(t for n, t in training.items() if n.startswith(("bn1", "layer1.", "layer2.")))
    assert all(t for n, t in training.items() if n.startswith(("layer3.", "layer4.")))
    freeze(m, "none")  # re-freezing from scratch releases them
    m.train()
    assert all(mod.training for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))


def test_caffe_lr_multipliers_per_parameter() -> None:
    """Levi–Hassner's solver: biases at 2× their layer's lr, the last layer (the heads) at 10×."""
    m = create_backbone("levi_hassner", {"gender": 2, "age_group": 8}, img_size=64)
    groups = param_groups(
        m, lr=1e-3, weight_decay=5e-4, head_lr_mult=10, bias_lr_mult=2, backbone_lr_mult=0.5
    )
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(list(m.parameters()))
    for n, p in m.named_parameters():
        want = 1e-3 * (10 if n.startswith("head.") else 0.5) * (2 if n.endswith(".bias") else 1)
        assert lr_of[id(p)] == pytest.approx(want, rel=1e-12), n
        assert wd_of[id(p)] == (0.0 if p.ndim == 1 else 5e-4), n
    assert {g["name"] for g in groups} == {"backbone", "backbone_bias_no_decay", "head", "head_bias_no_decay"}
