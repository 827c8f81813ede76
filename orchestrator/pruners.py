"""Pruners from a sweep's ``early_terminate`` (W&B) or ``pruner`` (ours): one factory, like Optuna's storages.

``pruner: {type: median|percentile|successive_halving|hyperband|none, ...}`` takes Optuna's own argument names.
W&B's ``early_terminate: {type: hyperband, min_iter, max_iter, s, eta}`` maps onto Optuna's Hyperband with
the same resources (``min_iter`` → ``min_resource``, ``max_iter`` → ``max_resource``, ``eta`` →
``reduction_factor``).

Safe defaults with parallel trials: Optuna's SuccessiveHalving with ``min_resource='auto'`` prunes nothing
until the first trial finishes and then judges later trials at epoch 1 against values from the end of
training (it lost the best configuration in half of the orders measured in ENVIRONMENT.md), so we default
``min_resource`` to 1 and let the user raise it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import SpecError

PRUNER_TYPES = ("none", "median", "percentile", "successive_halving", "hyperband")


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
        if kind == "none":
            return optuna.pruners.NopPruner()
        if kind == "median":
            return optuna.pruners.MedianPruner(**opts)
        if kind == "percentile":
            opts.setdefault("percentile", 25.0)
            return optuna.pruners.PercentilePruner(**opts)
        if kind == "successive_halving":
            opts.setdefault("min_resource", 1)
            return optuna.pruners.SuccessiveHalvingPruner(**opts)
        if kind == "hyperband":
            opts.setdefault("min_resource", 1)
            return optuna.pruners.HyperbandPruner(**opts)
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
    import optuna

    eta = float(opts.get("eta", 3))
    min_iter = opts.get("min_iter")
    max_iter = opts.get("max_iter")
    s = opts.get("s")
    if min_iter is None and max_iter is not None and s is not None:
        # W&B: brackets at max_iter / eta^k for k = s, s-1, ...; the first is the min
        min_iter = max(1, round(float(max_iter) / eta ** int(s)))
    if min_iter is None:
        min_iter = 1
    return optuna.pruners.HyperbandPruner(
        min_resource=int(min_iter),
        max_resource=int(max_iter) if max_iter is not None else "auto",
        reduction_factor=int(round(eta)),
    )
