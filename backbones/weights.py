"""Weights: reading local files, loading a trunk while skipping heads, and telling when hub weights are missing."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .heads import head_names, is_head_param

_log = logging.getLogger(__name__)

HOW_TO = (
    "Provide the weights in one of two ways: (1) on a machine with internet access run "
    "`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` to download them into the "
    "Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub), then copy that cache to this machine; or "
    "(2) pass `pretrained: /path/to/weights.pth` (or .safetensors) to load a local file."
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had here (offline, not cached, missing file...)."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the model's trunk (another architecture or other layer sizes)."""


@dataclass
class LoadReport:
    """What :func:`load_trunk` did. ``skipped_heads``: head keys not loaded (missing, or another shape)."""

    loaded: list[str] = field(default_factory=list)
    skipped_heads: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def env_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """A bounded connectivity probe (DNS + TCP connect in a daemon thread, at most ``timeout`` seconds)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.pth``/``.pt``/``.bin`` (plain, or a checkpoint dict with ``state_dict``/``model``/
    EMA entries) or ``.safetensors`` file; DDP/compile prefixes removed. Raises ``WeightsUnavailableError``."""
    from timm.models import load_state_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(f"pretrained weights file not found: {p}")
    try:
        sd = load_state_dict(str(p), use_ema=False)
    except Exception as e:  # corrupt file, pickle with objects (weights_only), ...
        raise WeightsUnavailableError(f"cannot read weights file {p}: {type(e).__name__}: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsUnavailableError(f"{p} does not hold a state_dict of tensors")
    return sd


def load_trunk(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, strict_trunk: bool = True
) -> LoadReport:
    """Load ``state_dict`` into ``model``: every trunk tensor must fit (else ``WeightsMismatchError`` when
    ``strict_trunk``); head tensors are loaded only where the key and shape match, the rest are skipped,
    reported and logged (heads keep their fresh initialisation)."""
    heads = skip_prefixes(model)
    state_dict = align_keys(model, state_dict)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    bad_trunk: list[str] = []
    for k, v in state_dict.items():
        if k not in own:
            if is_head_param(k, heads):
                report.skipped_heads.append(k)
            else:
                report.unexpected.append(k)
            continue
        if own[k].shape != v.shape:
            if is_head_param(k, heads):
                report.skipped_heads.append(k)
            else:
                bad_trunk.append(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
            continue
        to_load[k] = v
    for k in own:
        if k not in state_dict and not is_head_param(k, heads) and not k.endswith("num_batches_tracked"):
            report.missing.append(k)
    if strict_trunk and (bad_trunk or report.missing or report.unexpected):
        parts = []
        if bad_trunk:
            parts.append(f"{len(bad_trunk)} trunk tensors of another shape ({'; '.join(bad_trunk[:5])})")
        if report.missing:
            parts.append(f"{len(report.missing)} trunk tensors missing ({', '.join(report.missing[:5])})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected tensors ({', '.join(report.unexpected[:5])})")
        raise WeightsMismatchError(
            f"weights do not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ". Wrong architecture or options?"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    if report.skipped_heads:
        _log.warning(
            "kept freshly initialised heads; skipped %d head tensors: %s",
            len(report.skipped_heads),
            ", ".join(report.skipped_heads),
        )
    return report


def skip_prefixes(model: nn.Module) -> list[str]:
    """Module names whose tensors are task-specific: loaded only where they fit, never an error."""
    from .heads import MultiHeadModel

    names = list(head_names(model)) + list(getattr(model, "_task_specific", ()))
    if isinstance(model, MultiHeadModel):
        with contextlib.suppress(ValueError):
            names += [f"trunk.{h}" for h in head_names(model.trunk)]
    return names


def align_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a plain timm state_dict onto a :class:`MultiHeadModel` (``trunk.`` prefix) and back."""
    from .heads import MultiHeadModel

    has_trunk = any(k.startswith("trunk.") for k in state_dict)
    if isinstance(model, MultiHeadModel) and not has_trunk:
        return {f"trunk.{k}": v for k, v in state_dict.items()}
    if not isinstance(model, MultiHeadModel) and has_trunk and not hasattr(model, "trunk"):
        return {k[len("trunk.") :]: v for k, v in state_dict.items() if not k.startswith("heads.")}
    return state_dict


def load_file_into(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load a local weights file into one of our models (trunk strict, heads where they fit)."""
    sd = read_state_dict(path)
    report = load_trunk(model, sd)
    cfg: Any = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg["file"] = str(path)
    return report
