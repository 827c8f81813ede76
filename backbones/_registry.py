"""Name -> factory registry for our own backbones (timm models are looked up in timm's registry)."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

# name -> factory(num_outputs, in_chans=3, drop_rate=None, **model_kwargs) -> nn.Module
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering ``fn(num_outputs, *, in_chans, drop_rate, **kwargs) -> nn.Module`` under ``name``.

    The factory's keyword parameters are the model's options: ``create_backbone`` rejects any other keyword with a
    ``TypeError`` naming it. A name already registered (ours) raises ``ValueError``; a name that shadows a timm
    model is allowed and wins over timm.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")

    def deco(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"backbone {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return deco


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def get_factory(name: str) -> Callable[..., nn.Module]:
    return _REGISTRY[name]


def registered_names(pattern: str | None = None) -> list[str]:
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def factory_options(name: str) -> dict[str, Any]:
    """Keyword options a registered factory accepts, with their defaults (``inspect.Parameter.empty`` if none)."""
    sig = inspect.signature(_REGISTRY[name])
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "num_outputs"
    }
