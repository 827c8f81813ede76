"""Freezing and learning-rate groups for fine-tuning.

``freeze(model, spec)``:

* ``"none"``: nothing frozen (everything trainable);
* ``"backbone"``: everything but the heads (see :func:`backbones.heads.head_names`);
* ``"until:<prefix>"``: every parameter from the first one up to and including the last parameter of the module
  named ``<prefix>`` (a qualified module name such as ``layer2``, ``conv3``, ``block2``, ``trunk.layer1``), in
  the order the model defines them (``named_parameters()`` order).

Frozen parameters get ``requires_grad=False``, and the frozen part's normalisation layers with running
statistics (BatchNorm, InstanceNorm with ``track_running_stats``; timm's ``BatchNormAct2d`` …) are locked in eval
mode: ``model.train()`` leaves them in eval, so a frozen trunk normalises with its pretrained statistics and they
never drift. A norm layer is frozen when all its parameters are (one without parameters: when it lies in the
frozen part — outside the heads for ``"backbone"``, before the end of ``<prefix>`` for ``"until:"``).
``unfreeze`` and ``freeze(model, "none")`` release them.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from .heads import head_names, is_head_param


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _has_running_stats(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._NormBase) and bool(m.track_running_stats)


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` of a frozen norm layer: stays in eval mode whatever ``mode`` is."""
    return nn.Module.train(self, False)


def _lock_eval(m: nn.Module) -> None:
    m.train = types.MethodType(_eval_only, m)  # type: ignore[method-assign]
    m._frozen_norm = True  # type: ignore[assignment]
    nn.Module.train(m, False)


def _release(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "_frozen_norm", False):
            del m.train
            del m._frozen_norm
            nn.Module.train(m, model.training)


def frozen_norms(model: nn.Module) -> list[str]:
    """Names of the norm layers :func:`freeze` locked in eval mode."""
    return [n for n, m in model.named_modules() if getattr(m, "_frozen_norm", False)]


def _lock_frozen_norms(model: nn.Module, in_frozen_part: Any) -> None:
    for n, m in model.named_modules():
        if not _has_running_stats(m):
            continue
        own = list(m.parameters(recurse=False))
        if (own and not any(p.requires_grad for p in own)) or (not own and in_frozen_part(n)):
            _lock_eval(m)


def freeze(model: nn.Module, spec: str | None) -> nn.Module:
    """Apply a freeze spec (starting from everything trainable); returns the model. ``ValueError`` if bad."""
    spec = "none" if spec in (None, "", False) else str(spec).strip()
    params = list(model.named_parameters())
    for _, p in params:
        p.requires_grad_(True)
    _release(model)
    if spec == "none":
        return model
    if spec == "backbone":
        heads = head_names(model)
        for n, p in params:
            if not is_head_param(n, heads):
                p.requires_grad_(False)
        _lock_frozen_norms(model, lambda n: not is_head_param(n, heads))
        return model
    if spec.startswith("until:"):
        prefix = spec[len("until:") :].strip()
        hits = [i for i, (n, _) in enumerate(params) if _under(n, prefix)]
        if not prefix or not hits:
            tops = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
            raise ValueError(
                f"freeze spec {spec!r}: no parameters under module {prefix!r}; top-level modules with "
                f"parameters: {', '.join(tops)}"
            )
        for _, p in params[: hits[-1] + 1]:
            p.requires_grad_(False)
        order = [n for n, _ in model.named_modules()]
        last = max((i for i, n in enumerate(order) if _under(n, prefix)), default=len(order))
        _lock_frozen_norms(model, lambda n: order.index(n) <= last)
        return model
    raise ValueError(f"freeze spec must be 'none', 'backbone' or 'until:<module name>', got {spec!r}")


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable again (and frozen norm layers follow ``train()``/``eval()`` again)."""
    for p in model.parameters():
        p.requires_grad_(True)
    _release(model)
    return model


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_1d: bool = True,
    head_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: heads at ``lr * head_lr_mult``, the trunk at ``lr * backbone_lr_mult``, and
    biases at their part's lr ``* bias_lr_mult`` (Caffe's per-layer ``lr_mult``: Levi–Hassner fine-tuning uses
    bias ×2 and last layer ×10); ``weight_decay`` on weights, and (``no_decay_1d``) none on biases and norm
    parameters (1-D tensors). Only trainable parameters; empty groups are left out. Each group has a ``name``
    (``head``/``backbone``, + ``_bias`` when ``bias_lr_mult != 1``, + ``_no_decay``)."""
    heads = head_names(model)
    groups: dict[str, dict[str, Any]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if is_head_param(n, heads) else "backbone"
        bias = bias_lr_mult != 1.0 and n.rsplit(".", 1)[-1] == "bias"
        no_decay = no_decay_1d and p.ndim <= 1
        key = part + ("_bias" if bias else "") + ("_no_decay" if no_decay else "")
        if key not in groups:
            part_lr = lr * (head_lr_mult if part == "head" else backbone_lr_mult)
            groups[key] = {
                "name": key,
                "params": [],
                "lr": part_lr * (bias_lr_mult if bias else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(p)
    order = [part + b + d for part in ("backbone", "head") for b in ("", "_bias") for d in ("", "_no_decay")]
    return [groups[k] for k in order if k in groups]
