"""Backbone registry: timm models by name and our own face-attribute CNNs, behind one timm-style API.

    model = create_backbone("resnet18", {"gender": 2, "age_group": 8}, pretrained=True)
    cfg = data_config(model)            # {"input_size": (3, H, W), "mean": ..., "std": ..., ...}
    freeze(model, "until:layer2")
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05))

``num_outputs`` as an int gives a model returning logits ``[B, n]``; as a dict, a model returning
``{task: logits}`` (shared features -> one linear head per task; ``multi_branch_cnn``: one branch per task).

Our models: ``levi_hassner`` (Levi & Hassner 2015, as published), ``basic_cnn`` (the UTKFace report's N-layer
CNN), ``multi_branch_cnn`` (the Keras report's shared-trunk age/gender CNN). Everything else is a timm model.

Importing this package imports torch and timm (the orchestrator never imports it).
"""

from __future__ import annotations

import inspect
from typing import Any

import timm
import torch
from torch import nn

from . import basic_cnn as _basic_cnn  # noqa: F401  (registers)
from . import levi_hassner as _levi_hassner  # noqa: F401  (registers)
from . import multi_branch as _multi_branch  # noqa: F401  (registers)
from ._registry import factory_options, get_factory, is_registered, register_backbone, registered_names
from .freeze import freeze, frozen_norms, param_groups, unfreeze
from .heads import DictHead, MLPHeadModel, MultiHeadModel, NumOutputs, check_num_outputs, head_names
from .timm_models import close_matches, create_timm_backbone, feature_dim, weights_cached
from .weights import (
    LoadReport,
    WeightsMismatchError,
    WeightsUnavailableError,
    load_file_into,
    load_trunk,
    read_state_dict,
)

__all__ = [
    "DictHead",
    "LoadReport",
    "MultiHeadModel",
    "NumOutputs",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "create_backbone",
    "data_config",
    "freeze",
    "frozen_norms",
    "head_names",
    "list_backbones",
    "load_trunk",
    "param_groups",
    "read_state_dict",
    "register_backbone",
    "replace_heads",
    "unfreeze",
    "weights_cached",
]


def list_backbones(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Our registered names (sorted), then timm's (``timm.list_models(pattern)``); ``pattern`` is a shell-style
    wildcard such as ``"resnet*"``. ``pretrained=True``: only timm models with published weights."""
    ours = [] if pretrained else registered_names(pattern)
    theirs = [n for n in timm.list_models(pattern or "", pretrained=pretrained) if n not in ours]
    return ours + theirs


def _is_timm_name(name: str) -> bool:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return True
    return timm.is_model(name.split(".", 1)[0]) or timm.is_model(name)


def create_backbone(
    name: str,
    num_outputs: int | dict[str, int],
    pretrained: bool | str = False,
    in_chans: int = 3,
    drop_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a backbone with its heads.

    ``pretrained``: ``False`` (random init), ``True`` (timm's published weights from the HF cache, or downloaded
    when the hub is reachable; :class:`WeightsUnavailableError` otherwise, fast), or a path to a local
    ``.pth``/``.safetensors`` state_dict or checkpoint (heads of another size re-initialised). ``drop_rate``:
    ``None`` keeps the model's default (published values for ours). Other keywords are model options (e.g.
    ``img_size``, ``neurons`` for ``levi_hassner``; any timm model kwarg); unknown ones raise ``TypeError``.
    Raises ``ValueError`` for an unknown name (with close matches).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")
    num_outputs = check_num_outputs(num_outputs)
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "false", "none", "no", "0"):
        pretrained = False
    elif isinstance(pretrained, str) and pretrained.strip().lower() in ("true", "yes", "1"):
        pretrained = True

    if is_registered(name):
        opts = factory_options(name)
        unknown = sorted(set(kwargs) - set(opts))
        if unknown:
            accepted = sorted(k for k in opts if k not in ("in_chans", "drop_rate"))
            raise TypeError(
                f"create_backbone({name!r}): unknown keyword argument(s) {', '.join(unknown)}; "
                f"{name} accepts: {', '.join(accepted + ['in_chans', 'drop_rate', 'pretrained'])}"
            )
        model = get_factory(name)(num_outputs, in_chans=in_chans, drop_rate=drop_rate, **kwargs)
        if isinstance(pretrained, str):
            load_file_into(model, pretrained)
        elif pretrained:
            raise WeightsUnavailableError(
                f"there are no published pretrained weights for {name!r}; pass `pretrained: /path/to/file.pth` "
                "(a state_dict or checkpoint of the same model, e.g. a pretraining trial's checkpoint_best.pt)"
            )
    elif _is_timm_name(name):
        model = create_timm_backbone(
            name, num_outputs, pretrained=pretrained, in_chans=in_chans, drop_rate=drop_rate, **kwargs
        )
    else:
        matches = close_matches(name, list_backbones())
        hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
        raise ValueError(f"unknown backbone {name!r}.{hint} (list_backbones() lists every name)")
    model.backbone_name = name  # type: ignore[assignment]
    return model


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    for p in model.parameters():
        return p.device, p.dtype
    return None


def replace_heads(model: nn.Module, num_outputs: int | dict[str, int]) -> nn.Module:
    """New, freshly initialised heads of the given sizes (trunk untouched), for fine-tuning.

    Returns the model to use from now on: the same object, except for timm models switching between int and
    dict heads (wrapped into / unwrapped from :class:`MultiHeadModel`). New heads land on the model's device.
    """
    num_outputs = check_num_outputs(num_outputs)
    where = _device_dtype(model)
    out: nn.Module
    if isinstance(model, MLPHeadModel):  # keeps its multi-layer heads, of the new sizes
        model.reset_heads(num_outputs)
        out = model
    elif isinstance(model, MultiHeadModel):
        if isinstance(num_outputs, dict):
            model.reset_heads(num_outputs)
            out = model
        else:
            out = model.trunk
            out.reset_classifier(num_outputs)  # type: ignore[operator]
    elif hasattr(model, "reset_heads"):
        model.reset_heads(num_outputs)  # type: ignore[operator]
        out = model
    elif hasattr(model, "reset_classifier"):
        if isinstance(num_outputs, dict):
            model.reset_classifier(0)  # type: ignore[operator]
            out = MultiHeadModel(model, feature_dim(model), num_outputs)
            for attr in ("backbone_name", "backbone_in_chans"):
                if hasattr(model, attr):
                    setattr(out, attr, getattr(model, attr))
        else:
            model.reset_classifier(num_outputs)  # type: ignore[operator]
            out = model
    else:
        raise TypeError(f"replace_heads: {type(model).__name__} has no reset_heads/reset_classifier")
    if where is not None:
        out.to(device=where[0], dtype=where[1])
    return out


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input settings read from the model: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``,
    ``crop_pct``, ``crop_mode`` — via ``timm.data.resolve_data_config`` on the model's ``pretrained_cfg``
    (timm's for timm models, ours declared by each of our models)."""
    from timm.data import resolve_data_config

    target = model.trunk if isinstance(model, MultiHeadModel) else model
    cfg = resolve_data_config({}, model=target)
    in_chans = getattr(model, "backbone_in_chans", None)
    c, h, w = cfg["input_size"]
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if in_chans is not None and in_chans != c:
        if in_chans == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        else:
            mean, std = (mean * in_chans)[:in_chans], (std * in_chans)[:in_chans]
        c = in_chans
    return {
        "input_size": (int(c), int(h), int(w)),
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
        "crop_mode": cfg.get("crop_mode", "center"),
    }


# keep the signature visible to tooling
create_backbone.__signature__ = inspect.signature(create_backbone)  # type: ignore[attr-defined]
