"""Optimizers, learning-rate schedules with linear warm-up, and stochastic weight averaging (SWA).

The schedule is one small class that sets every param group's lr before each optimizer step from
``base_lr × warm-up × schedule factor``: all schedules (step, multistep, exponential, cosine, one-cycle,
plateau) compose with warm-up the same way and resume from a two-number state. Epoch-based schedules
(step, multistep, exponential) change at epoch boundaries like their ``torch.optim.lr_scheduler`` namesakes;
cosine and one-cycle move every step; plateau multiplies by ``gamma`` after ``plateau_patience`` epochs
without a better val/loss (like ``ReduceLROnPlateau`` with threshold 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel


def build_optimizer(cfg: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params`` (tensors or param-group dicts, which may carry their own lr)."""
    name = cfg.optimizer
    lr, wd = cfg.lr, cfg.weight_decay
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=wd, amsgrad=cfg.amsgrad)
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=wd, amsgrad=cfg.amsgrad
        )
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=wd)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, betas=betas, eps=cfg.eps, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=cfg.rmsprop_alpha,
            eps=cfg.eps,
            weight_decay=wd,
            momentum=cfg.momentum,
            centered=cfg.centered,
        )
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, eps=max(cfg.eps, 1e-6), weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


class LRSchedule:
    """Sets each group's lr from its ``base_lr`` (the lr it was built with) before every step.

    Call ``step(global_step)`` before ``optimizer.step()`` and ``epoch_end(val_loss)`` after each epoch.
    """

    def __init__(self, cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])
        # plateau state
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad = 0
        self.active = True  # SWA takes over the lr when it starts

    # --- the factor ------------------------------------------------------------------------------------
    def factor(self, step: int) -> float:
        cfg = self.cfg
        epoch = step // self.steps_per_epoch
        kind = cfg.schedule
        if kind == "onecycle":  # has its own warm-up phase
            return self._onecycle(step)
        if kind == "step" and getattr(cfg, "step_iters", None):
            f = cfg.gamma ** (step // cfg.step_iters)  # Caffe's "step" policy: every stepsize iterations
        elif kind == "step":
            f = cfg.gamma ** (epoch // cfg.step_size)
        elif kind == "multistep":
            f = cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
        elif kind == "exponential":
            f = cfg.gamma**epoch
        elif kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
            f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        elif kind == "plateau":
            f = self.plateau_factor
        else:
            f = 1.0
        if self.warmup_steps > 0 and step < self.warmup_steps:
            f *= (step + 1) / self.warmup_steps
        return f

    def _onecycle(self, step: int) -> float:
        """``torch.optim.lr_scheduler.OneCycleLR`` (cos annealing, div_factor 25, final_div_factor 1e4)."""
        total = max(2, self.total_steps)
        up = max(1.0, self.cfg.pct_start * total - 1)
        start, peak, end = 1 / 25, 1.0, 1 / 25 / 1e4
        if step <= up:
            pct, a, b = step / up, start, peak
        else:
            pct, a, b = min(1.0, (step - up) / max(1.0, total - 1 - up)), peak, end
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    # --- driving it ------------------------------------------------------------------------------------
    def step(self, global_step: int) -> float:
        """Set the lr for ``global_step`` (0-based); returns the first group's lr."""
        if self.active:
            f = self.factor(global_step)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * f
        return float(self.optimizer.param_groups[0]["lr"])

    def epoch_end(self, val_loss: float | None) -> None:
        if self.cfg.schedule != "plateau" or val_loss is None or val_loss != val_loss:
            return
        if self.plateau_best is None or val_loss < self.plateau_best:
            self.plateau_best, self.plateau_bad = val_loss, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.cfg.plateau_patience:
                self.plateau_factor *= self.cfg.gamma
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_factor": self.plateau_factor,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
            "active": self.active,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor = state["plateau_factor"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad = state["plateau_bad"]
        self.active = state.get("active", True)


class SWA:
    """Stochastic weight averaging (``torch.optim.swa_utils``): from epoch ``swa_start`` the lr anneals to
    ``swa_lr`` (SWALR) and the weights are averaged once per epoch; ``finish`` recomputes BatchNorm stats."""

    def __init__(self, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.start = cfg.swa_start if cfg.swa_start is not None else max(0, int(0.75 * cfg.epochs))
        self.model = AveragedModel(model)
        self.scheduler = SWALR(
            optimizer, swa_lr=cfg.swa_lr or cfg.lr / 10, anneal_epochs=1, anneal_strategy="cos"
        )
        self.updates = 0

    def on(self, epoch: int) -> bool:
        return epoch >= self.start

    def epoch_end(self, model: nn.Module) -> None:
        self.model.update_parameters(model)
        self.scheduler.step()
        self.updates += 1

    def finish(self, loader: Iterable[Any], device: torch.device) -> nn.Module:
        """Update BN statistics of the averaged model with one pass over ``loader`` (batches of images); norm
        layers frozen by ``freeze`` keep theirs (``update_bn`` would reset them and, in eval mode, never refill)."""
        frozen = [m for m in self.model.modules() if getattr(m, "_frozen_norm", False)]
        kept = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen]
        torch.optim.swa_utils.update_bn(loader, self.model, device=device)
        for m, state in zip(frozen, kept, strict=True):
            m.load_state_dict(state)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates = state["updates"]
