"""experiments.optim: every optimizer steps; schedules against hand values and torch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from experiments.config import OPTIMIZERS, resolve
from experiments.optim import SWA, LRSchedule, build_optimizer
from orchestrator.trial.errors import SpecError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps(name: str) -> None:
    extra = {"nesterov": True} if name == "sgd" else {}
    cfg = resolve({"optimizer": name, "lr": 0.05, "weight_decay": 1e-4, **extra})
    m = _model()
    opt = build_optimizer(cfg, m.parameters())
    before = [p.detach().clone() for p in m.parameters()]
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


def test_param_groups_keep_their_lr_ratio() -> None:
    cfg = resolve({"lr": 0.1, "schedule": "step", "step_size": 1, "gamma": 0.5})
    m = _model()
    opt = build_optimizer(cfg, [{"params": m[0].parameters(), "lr": 0.01}, {"params": m[3].parameters()}])
    s = LRSchedule(cfg, opt, steps_per_epoch=2)
    s.step(2)  # epoch 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.05])


def _lrs(params: dict, steps_per_epoch: int = 2, val_losses: list[float] | None = None) -> list[float]:
    cfg = resolve({"lr": 1.0, "epochs": 4, **params})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    s = LRSchedule(cfg, opt, steps_per_epoch)
    out = []
    for e in range(cfg.epochs):
        for i in range(steps_per_epoch):
            out.append(s.step(e * steps_per_epoch + i))
        s.epoch_end(val_losses[e] if val_losses else None)
    return out


def test_schedules_by_hand() -> None:
    assert _lrs({}) == [1.0] * 8
    assert _lrs({"schedule": "step", "step_size": 2, "gamma": 0.1}) == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1]
    )
    assert _lrs({"schedule": "multistep", "milestones": [1, 3], "gamma": 0.5}) == pytest.approx(
        [1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    )
    assert _lrs({"schedule": "exponential", "gamma": 0.5}) == pytest.approx(
        [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    )
    cos = _lrs({"schedule": "cosine", "min_lr": 0.1})
    assert cos[0] == pytest.approx(1.0) and cos[4] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert all(a >= b for a, b in zip(cos, cos[1:], strict=False))
    warm = _lrs({"warmup_epochs": 1, "schedule": "none"})
    assert warm[:3] == pytest.approx([0.5, 1.0, 1.0])


def test_plateau() -> None:
    lrs = _lrs({"schedule": "plateau", "plateau_patience": 1, "gamma": 0.1}, 1, [1.0, 1.0, 1.0, 0.5])
    assert lrs == pytest.approx([1, 1, 1, 0.1])  # 2 epochs without improvement (> patience 1)


def test_onecycle_matches_torch() -> None:
    cfg = resolve({"lr": 1.0, "epochs": 5, "schedule": "onecycle", "pct_start": 0.3})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = LRSchedule(cfg, opt, 4)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=1.0, total_steps=20, pct_start=0.3, cycle_momentum=False
    )
    for step in range(20):
        assert ours.step(step) == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-6, abs=1e-9), step
        ref_opt.step()
        ref.step()


def test_schedule_state_round_trip() -> None:
    cfg = resolve({"schedule": "plateau", "plateau_patience": 0})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(cfg, opt, 1)
    s.epoch_end(1.0)
    s.epoch_end(2.0)
    s2 = LRSchedule(cfg, opt, 1)
    s2.load_state_dict(s.state_dict())
    assert s2.plateau_factor == pytest.approx(0.1) and s2.factor(5) == pytest.approx(0.1)


def test_swa_averages_and_updates_bn() -> None:
    cfg = resolve({"swa": True, "epochs": 4, "swa_lr": 0.01, "lr": 0.1})
    m = _model()
    opt = build_optimizer(cfg, m.parameters())
    swa = SWA(cfg, m, opt)
    assert swa.start == 3 and not swa.on(2) and swa.on(3)
    x = torch.randn(32, 4)
    w = []
    for _ in range(2):
        opt.zero_grad()
        m(x).sum().backward()
        opt.step()
        swa.epoch_end(m)
        w.append(m[0].weight.detach().clone())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert torch.allclose(swa.model.module[0].weight, (w[0] + w[1]) / 2, atol=1e-6)
    final = swa.finish([(x[:16], None), (x[16:], None)], torch.device("cpu"))
    assert torch.allclose(final.module[1].running_mean, final.module[0](x).mean(0).detach(), atol=1e-4)
    state = swa.state_dict()
    swa2 = SWA(cfg, _model(), build_optimizer(cfg, _model().parameters()))
    swa2.load_state_dict(state)
    assert swa2.updates == 2


def test_caffe_step_schedule_in_iterations_and_lr_multipliers() -> None:
    """schedule: step with step_iters: lr × gamma every N training iterations (not epochs), applied to every
    param group's own lr (bias ×2, last layer ×10)."""
    from backbones import create_backbone, param_groups

    cfg = resolve(
        {"optimizer": "sgd", "lr": 0.01, "schedule": "step", "step_iters": 5, "gamma": 0.1,
         "head_lr_mult": 10, "bias_lr_mult": 2}
    )  # fmt: skip
    m = create_backbone("levi_hassner", 2, img_size=64)
    groups = param_groups(m, lr=cfg.lr, head_lr_mult=cfg.head_lr_mult, bias_lr_mult=cfg.bias_lr_mult)
    opt = build_optimizer(cfg, groups)
    sched = LRSchedule(cfg, opt, steps_per_epoch=3)  # 3 iterations an epoch: epochs would decay elsewhere
    base = {g["name"]: g["lr"] for g in opt.param_groups}
    assert base == pytest.approx({"backbone": 0.01, "backbone_bias_no_decay": 0.02, "head": 0.1,
                                  "head_bias_no_decay": 0.2})  # fmt: skip
    for step, f in [(0, 1.0), (4, 1.0), (5, 0.1), (9, 0.1), (10, 0.01), (14, 0.01), (15, 0.001)]:
        sched.step(step)
        assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
            {k: v * f for k, v in base.items()}
        )
    with pytest.raises(SpecError, match="step_iters"):
        resolve({"schedule": "cosine", "step_iters": 5})


def test_swa_keeps_the_running_stats_of_frozen_norms() -> None:
    """SWA's final BatchNorm pass recomputes the trainable norms' statistics, never the frozen ones'."""
    from backbones import create_backbone, freeze

    torch.manual_seed(0)
    m = create_backbone("basic_cnn", 2, img_size=16, num_layers=2, base_features=4, hidden=8)
    with torch.no_grad():  # pretrained-like statistics, far from the reset values (0, 1)
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(5.0)
    freeze(m, "until:block1")
    cfg = resolve({"swa": True, "epochs": 2, "swa_start": 0})
    opt = build_optimizer(cfg, [p for p in m.parameters() if p.requires_grad])
    swa = SWA(cfg, m, opt)
    opt.step()  # (no gradients: nothing moves) an epoch steps the optimizer before SWA's scheduler
    swa.epoch_end(m)
    batches = [(torch.randn(8, 3, 16, 16), None) for _ in range(3)]
    out = swa.finish(batches, torch.device("cpu"))
    bns = {n: mod for n, mod in out.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    frozen = [n for n in bns if n.startswith("module.block1.")]
    assert frozen and len(frozen) < len(bns)
    for n, bn in bns.items():
        if n in frozen:
            assert torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 3.0)), n
        else:
            assert not torch.allclose(bn.running_mean, torch.full_like(bn.running_mean, 3.0)), n
