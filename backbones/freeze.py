"""Freezing and learning-rate groups for fine-tuning.

``freeze(model, spec)``:

* ``"none"``: nothing frozen (everything trainable);
* ``"backbone"``: everything but the heads (see :func:`backbones.heads.head_names`);
* ``"until:<prefix>"``: every parameter from the first one up to and including the last parameter of the module
  named ``<prefix>`` (a qualified module name such as ``layer2``, ``conv3``, ``block2``, ``trunk.layer1``), in
  the order the model defines them (``named_parameters()`` order).

Frozen parameters get ``requires_grad=False``. Batch-norm running statistics in frozen parts still update in
``train()`` mode; call ``.eval()`` on those modules after ``model.train()`` if that matters (the experiment's
business).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .heads import head_names, is_head_param


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze(model: nn.Module, spec: str | None) -> nn.Module:
    """Apply a freeze spec (starting from everything trainable); returns the model. ``ValueError`` if bad."""
    spec = "none" if spec in (None, "", False) else str(spec).strip()
    params = list(model.named_parameters())
    for _, p in params:
        p.requires_grad_(True)
    if spec == "none":
        return model
    if spec == "backbone":
        heads = head_names(model)
        for n, p in params:
            if not is_head_param(n, heads):
                p.requires_grad_(False)
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
        return model
    raise ValueError(f"freeze spec must be 'none', 'backbone' or 'until:<module name>', got {spec!r}")


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable again."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_1d: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: heads at ``lr``, the trunk at ``lr * backbone_lr_mult``; ``weight_decay``
    on weights, and (``no_decay_1d``) none on biases and norm parameters (1-D tensors). Only trainable
    parameters; empty groups are left out. Each group has a ``name`` (``head``/``backbone`` + ``_no_decay``)."""
    heads = head_names(model)
    groups: dict[str, dict[str, Any]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if is_head_param(n, heads) else "backbone"
        no_decay = no_decay_1d and p.ndim <= 1
        key = part + ("_no_decay" if no_decay else "")
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": lr if part == "head" else lr * backbone_lr_mult,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(p)
    order = ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    return [groups[k] for k in order if k in groups]
