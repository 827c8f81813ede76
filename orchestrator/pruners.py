"""Pruners from a sweep's ``early_terminate`` (W&B) or ``pruner`` (ours): one factory, like Optuna's storages.

``pruner: {type: median|percentile|successive_halving|hyperband|none, ...}`` takes Optuna's own argument names.
W&B's ``early_terminate: {type: hyperband, min_iter, max_iter, s, eta, strict}`` gets W&B's own rule
(``orchestrator.wandb_hyperband.WandbHyperbandPruner``: W&B's brackets and thresholds over the trials'
intermediate values), not Optuna's HyperbandPruner, whose brackets and promotion rule differ.

Safe defaults with parallel trials: Optuna's SuccessiveHalving with ``min_resource='auto'`` prunes nothing
until the first trial finishes and then judges later trials at epoch 1 against values from the end of
training (it lost the best configuration in half of the orders measured in ENVIRONMENT.md), so we default
``min_resource`` to 1 and let the user raise it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec.model import PRUNER_TYPES
from orchestrator.trial.errors import SpecError


def get_pruner(spec: Any | None, *, where: str | None = None) -> Any:
    """An Optuna pruner for a PrunerSpec (``type``, ``options``, ``source``), or NopPruner for None."""
    import optuna

    if spec is None:
        return optuna.pruners.NopPruner()
    kind = str(spec.type).lower()
    opts: dict[str, Any] = dict(spec.options or {})
    source = getattr(spec, "source", "pruner")
    try:
        if source == "early_terminate":
            if kind != "hyperband":
                raise SpecError(
                    f"early_terminate type {kind!r} is not supported",
                    file=where,
                    key="early_terminate.type",
                    hint="W&B supports only 'hyperband'",
                )
            return _wandb_hyperband(opts)
        if kind in PRUNER_TYPES:
            from orchestrator.spec.loader import optuna_pruner_class  # the one type → class table

            if kind == "percentile":
                opts.setdefault("percentile", 25.0)
            if kind in ("successive_halving", "hyperband"):
                opts.setdefault("min_resource", 1)  # Optuna's 'auto' is unsafe with parallel trials
            return optuna_pruner_class(kind)(**opts)
    except TypeError as exc:
        raise SpecError(
            f"bad option for the {kind} pruner: {exc}",
            file=where,
            key="pruner",
            hint="options take Optuna's own argument names (e.g. n_startup_trials, n_warmup_steps)",
        ) from exc
    raise SpecError(
        f"unknown pruner type {kind!r}",
        file=where,
        key="pruner.type",
        hint="use one of: " + ", ".join(PRUNER_TYPES),
    )


def _wandb_hyperband(opts: dict[str, Any]) -> Any:
    """W&B's own hyperband rule (``orchestrator/wandb_hyperband.py``), not Optuna's HyperbandPruner."""
    from orchestrator.wandb_hyperband import WandbHyperbandPruner

    s = opts.get("s")
    try:
        return WandbHyperbandPruner(
            min_iter=None if opts.get("min_iter") is None else int(opts["min_iter"]),
            max_iter=None if opts.get("max_iter") is None else int(opts["max_iter"]),
            s=None if s is None else float(s),
            eta=float(opts.get("eta", 3)),
            strict=bool(opts.get("strict", True)),
        )
    except ValueError as exc:
        raise SpecError(
            str(exc), key="early_terminate", hint="W&B: brackets at min_iter*eta^k or max_iter/eta^k"
        ) from exc
