"""Output heads: one linear layer per task on shared features, and a wrapper that gives any trunk such heads.

Conventions used throughout ``backbones``:

* ``num_outputs`` is an ``int`` (the model returns logits ``[B, n]``) or a ``dict`` task -> size (the model returns
  ``{task: [B, n_task]}``, in the dict's order).
* Every model knows which of its modules are heads: :func:`head_names` returns their qualified names. Our own
  models list them in ``_head_names``; timm models name theirs in ``pretrained_cfg["classifier"]``;
  :class:`MultiHeadModel` has ``heads``. ``freeze(model, "backbone")``, ``param_groups`` and ``load_trunk`` rely
  on this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

NumOutputs = int | Mapping[str, int]


def check_num_outputs(num_outputs: Any) -> int | dict[str, int]:
    """Validate ``num_outputs``; returns an ``int`` or a plain ``dict``. Raises ``TypeError``/``ValueError``."""
    if isinstance(num_outputs, bool):
        raise TypeError(f"num_outputs must be an int or a dict of task -> int, got {num_outputs!r}")
    if isinstance(num_outputs, int):
        if num_outputs < 0:
            raise ValueError(f"num_outputs must be >= 0 (0 = no head, features only), got {num_outputs}")
        return num_outputs
    if isinstance(num_outputs, Mapping):
        if not num_outputs:
            raise ValueError("num_outputs dict is empty: give at least one task, e.g. {'gender': 2}")
        out: dict[str, int] = {}
        for task, n in num_outputs.items():
            if not isinstance(task, str) or not task.isidentifier():
                raise ValueError(f"num_outputs: task name {task!r} must be a identifier-like string")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"num_outputs[{task!r}] must be an int >= 1, got {n!r}")
            out[task] = n
        return out
    raise TypeError(f"num_outputs must be an int or a dict of task -> int, got {type(num_outputs).__name__}")


class DictHead(nn.ModuleDict):
    """One ``nn.Linear`` per task on the same features; ``forward`` returns ``{task: logits}``."""

    def __init__(self, in_features: int, num_outputs: Mapping[str, int]) -> None:
        super().__init__({task: nn.Linear(in_features, n) for task, n in num_outputs.items()})
        self.in_features = in_features

    @property
    def num_outputs(self) -> dict[str, int]:
        return {task: lin.out_features for task, lin in self.items()}  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {task: head(x) for task, head in self.items()}


def make_head(in_features: int, num_outputs: NumOutputs) -> nn.Module:
    """``nn.Linear`` for an int (``nn.Identity`` for 0), :class:`DictHead` for a dict."""
    num_outputs = check_num_outputs(num_outputs)
    if isinstance(num_outputs, dict):
        return DictHead(in_features, num_outputs)
    if num_outputs == 0:
        return nn.Identity()
    return nn.Linear(in_features, num_outputs)


class MultiHeadModel(nn.Module):
    """A feature trunk (``trunk(x) -> [B, in_features]``) with :class:`DictHead` heads.

    Used for timm models with a dict ``num_outputs``: the timm model is built with ``num_classes=0`` (pooled
    features, its ``drop_rate`` still applied) and kept under ``trunk``, so ``state_dict`` keys are
    ``trunk.<timm key>`` and ``heads.<task>.weight``. ``pretrained_cfg`` is the trunk's (for ``data_config``).
    """

    _head_names = ("heads",)

    def __init__(self, trunk: nn.Module, in_features: int, num_outputs: Mapping[str, int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.num_features = in_features
        self.heads = DictHead(in_features, check_num_outputs(dict(num_outputs)))  # type: ignore[arg-type]
        cfg = getattr(trunk, "pretrained_cfg", None)
        if cfg is not None:
            self.pretrained_cfg = cfg
            self.default_cfg = cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.trunk(x))

    def reset_heads(self, num_outputs: Mapping[str, int]) -> None:
        self.heads = DictHead(self.num_features, check_num_outputs(dict(num_outputs)))  # type: ignore[arg-type]


def mlp(in_features: int, hidden: Sequence[int], dropout: Sequence[float], out: int) -> nn.Sequential:
    """``Linear → ReLU → Dropout(p_i)`` per hidden width, then the output ``Linear``."""
    layers: list[nn.Module] = []
    d = in_features
    for h, p in zip(hidden, dropout, strict=True):
        layers += [nn.Linear(d, int(h)), nn.ReLU(inplace=True)]
        if p > 0:
            layers.append(nn.Dropout(float(p)))
        d = int(h)
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers)


def mlp_spec(hidden: Sequence[int], dropout: float | Sequence[float] | None) -> tuple[list[int], list[float]]:
    """Check ``head_hidden``/``head_dropout``; one dropout per hidden layer. ``ValueError`` if bad."""
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ValueError(
            f"head_hidden must be a non-empty list of widths >= 1, e.g. [1024, 512, 512], got {hidden}"
        )
    drops = (
        [float(dropout or 0.0)] * len(hidden)
        if not isinstance(dropout, Sequence)
        else [float(p) for p in dropout]
    )
    if len(drops) != len(hidden) or not all(0.0 <= p < 1.0 for p in drops):
        raise ValueError(
            f"head_dropout must be one number in [0, 1) or one per hidden layer ({len(hidden)}), got {dropout!r}"
        )
    return hidden, drops


class MLPHeads(nn.Module):
    """Multi-layer heads: per task its own MLP branch (the Keras report's Model B: one FC stack per output), or
    for an int ``num_outputs`` one MLP returning a tensor (the MobileNetV2 report's FC 1024/512/512)."""

    def __init__(
        self, in_features: int, num_outputs: NumOutputs, hidden: Sequence[int], dropout: Sequence[float]
    ) -> None:
        super().__init__()
        num_outputs = check_num_outputs(num_outputs)
        self.single = not isinstance(num_outputs, dict)
        outs = {"out": num_outputs} if isinstance(num_outputs, int) else num_outputs
        self.branches = nn.ModuleDict({t: mlp(in_features, hidden, dropout, n) for t, n in outs.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        out = {t: branch(x) for t, branch in self.branches.items()}
        return out["out"] if self.single else out


class MLPHeadModel(MultiHeadModel):
    """A feature trunk with :class:`MLPHeads` (``heads.branches.<task>.<i>``)."""

    def __init__(
        self,
        trunk: nn.Module,
        in_features: int,
        num_outputs: NumOutputs,
        hidden: Sequence[int],
        dropout: Sequence[float],
    ) -> None:
        nn.Module.__init__(self)
        self.trunk = trunk
        self.num_features = in_features
        self.hidden, self.dropout = list(hidden), list(dropout)
        self.heads = MLPHeads(in_features, num_outputs, self.hidden, self.dropout)  # type: ignore[assignment]
        cfg = getattr(trunk, "pretrained_cfg", None)
        if cfg is not None:
            self.pretrained_cfg = cfg
            self.default_cfg = cfg

    def reset_heads(self, num_outputs: NumOutputs) -> None:  # type: ignore[override]
        self.heads = MLPHeads(self.num_features, num_outputs, self.hidden, self.dropout)  # type: ignore[assignment]


def _module_name_of(model: nn.Module, target: nn.Module) -> str | None:
    for name, mod in model.named_modules():
        if mod is target and name:
            return name
    return None


def head_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's head modules (those ``replace_heads`` replaces and ``freeze`` keeps)."""
    names = getattr(model, "_head_names", None)
    if names is not None:
        return list(names)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    if classifier:
        cands = [classifier] if isinstance(classifier, str) else list(classifier)
        found = []
        for c in cands:
            try:
                model.get_submodule(c)
            except AttributeError:
                continue
            found.append(c)
        if found:
            return found
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        if isinstance(clf, nn.Module):
            name = _module_name_of(model, clf)
            if name:
                return [name]
    raise ValueError(f"cannot tell the heads of {type(model).__name__}: set `_head_names` on it")


def is_head_param(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)
