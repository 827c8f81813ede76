"""``metric:`` and the early stopping (``early_terminate:``, W&B hyperband, or ``pruner:``, Optuna's)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from orchestrator.spec.context import Ctx, closest, coerce, join_key, kind_of
from orchestrator.spec.model import PRUNER_TYPES, MetricSpec, PrunerSpec
from orchestrator.spec.yamlio import LineDict

METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")


def optuna_pruner_class(kind: str) -> Callable[..., Any]:
    """The ``optuna.pruners`` class of a ``pruner: {type: …}``."""
    from optuna import pruners

    return {
        "none": pruners.NopPruner,
        "median": pruners.MedianPruner,
        "percentile": pruners.PercentilePruner,
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "hyperband": pruners.HyperbandPruner,
        "threshold": pruners.ThresholdPruner,
    }[kind]


def parse_objective(
    ctx: Ctx, d: LineDict, prefix: str, method: str
) -> tuple[MetricSpec | None, PrunerSpec | None]:
    """The sweep's metric and its early stopping (both need the metric, as does ``method: bayes``)."""
    metric = parse_metric(ctx, d, prefix)
    if method == "bayes" and metric is None:
        ctx.fail(
            "method: bayes needs a metric to optimise",
            d.line_of("method"),
            join_key(prefix, "metric"),
            hint="add 'metric: {name: val/loss, goal: minimize}', or use method: random",
        )

    pruner = parse_pruner(ctx, d, prefix)
    if pruner is not None and metric is None:
        which = pruner.source
        ctx.fail(
            f"'{which}' needs a metric to watch",
            d.line_of(which),
            join_key(prefix, "metric"),
            hint="add 'metric: {name: …, goal: …}'",
        )
    return metric, pruner


def parse_metric(ctx: Ctx, d: LineDict, prefix: str) -> MetricSpec | None:
    if "metric" not in d or d["metric"] is None:
        return None
    key = join_key(prefix, "metric")
    if isinstance(d["metric"], str):
        ctx.fail(
            "'metric' must be a mapping",
            d.line_of("metric"),
            key,
            hint=f"write 'metric: {{name: {d['metric']}, goal: minimize}}'",
        )
    m = ctx.mapping(d["metric"], d.line_of("metric"), key, "'metric'")
    ctx.unknown_keys(m, METRIC_KEYS, key, "'metric'")
    if "name" not in m or m["name"] is None:
        ctx.fail("the metric needs a 'name'", m.line, join_key(key, "name"))
    mname = m["name"]
    if not isinstance(mname, str):
        if isinstance(mname, bool | dict | list):
            ctx.fail(f"must be text, not {kind_of(mname)}", m.line_of("name"), join_key(key, "name"))
        mname = str(mname)
    goal = m.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        ctx.notice(
            f"{ctx.file}:{m.line_of('goal')}: {join_key(key, 'goal')}: {goal!r} is not minimize or maximize; "
            "using minimize, as W&B does"
        )
        goal = "minimize"
    for k in ("impute", "impute_while_running"):
        if k in m:
            ctx.notice(
                f"{ctx.file}:{m.line_of(k)}: {join_key(key, k)}: W&B-only setting, ignored by orchestrate"
            )
    target = ctx.number(m, "target", key)
    return MetricSpec(name=str(mname), goal=goal, target=None if target is None else float(target))


def parse_pruner(ctx: Ctx, d: LineDict, prefix: str) -> PrunerSpec | None:
    has_et = "early_terminate" in d and d["early_terminate"] is not None
    has_pr = "pruner" in d and d["pruner"] is not None
    if has_et and has_pr:
        ctx.fail(
            "give either 'early_terminate' (W&B hyperband) or 'pruner' (Optuna), not both",
            d.line_of("pruner"),
            join_key(prefix, "pruner"),
        )
    if has_et:
        return _parse_hyperband(ctx, d, prefix)
    if has_pr:
        return _parse_optuna_pruner(ctx, d, prefix)
    return None


def _parse_hyperband(ctx: Ctx, d: LineDict, prefix: str) -> PrunerSpec:
    """``early_terminate: {type: hyperband, …}`` (W&B's), with W&B's defaults filled in."""
    key = join_key(prefix, "early_terminate")
    e = ctx.mapping(d["early_terminate"], d.line_of("early_terminate"), key, "'early_terminate'")
    ctx.unknown_keys(e, HYPERBAND_KEYS, key, "'early_terminate'")
    if e.get("type") != "hyperband":
        ctx.fail(
            f"unknown early_terminate type {e.get('type')!r}",
            e.line_of("type"),
            join_key(key, "type"),
            hint="W&B knows only 'type: hyperband'; for Optuna's pruners use 'pruner: {type: median, …}'",
        )
    options: dict[str, Any] = {}
    for k in ("min_iter", "max_iter"):
        v = ctx.integer(e, k, key, minimum=1)
        if v is not None:
            options[k] = v
    s = ctx.number(e, "s", key)
    if s is not None:
        if s < 0:
            ctx.fail(f"must be at least 0, not {s}", e.line_of("s"), join_key(key, "s"))
        options["s"] = s
    eta = ctx.number(e, "eta", key)
    if eta is not None and eta <= 1:
        ctx.fail(f"must be greater than 1, not {eta}", e.line_of("eta"), join_key(key, "eta"))
    options["eta"] = 3 if eta is None else eta
    strict = e.get("strict", True)
    if not isinstance(strict, bool):
        ctx.fail(f"must be true or false, not {strict!r}", e.line_of("strict"), join_key(key, "strict"))
    options["strict"] = strict
    if "min_iter" not in options and not ("max_iter" in options and "s" in options):
        ctx.fail(
            "hyperband needs 'min_iter', or both 'max_iter' and 's'",
            e.line,
            key,
            hint="e.g. 'early_terminate: {type: hyperband, min_iter: 3}'",
        )
    return PrunerSpec("hyperband", options, "early_terminate")


def _parse_optuna_pruner(ctx: Ctx, d: LineDict, prefix: str) -> PrunerSpec | None:
    """``pruner: TYPE`` or ``pruner: {type: TYPE, …}`` with Optuna's argument names (None for ``none``)."""
    key = join_key(prefix, "pruner")
    raw = d["pruner"]
    raw_type: Any
    if isinstance(raw, str):
        raw_type, p = raw, LineDict({"type": raw})
        p.line = d.line_of("pruner")
    else:
        p = ctx.mapping(raw, d.line_of("pruner"), key, "'pruner'")
        raw_type = p.get("type")
    if raw_type not in PRUNER_TYPES:
        best = closest(str(raw_type), PRUNER_TYPES)
        ctx.fail(
            f"unknown pruner type {raw_type!r}",
            p.line_of("type"),
            join_key(key, "type"),
            hint=f"did you mean '{best}'?" if best else "use one of: " + ", ".join(PRUNER_TYPES),
        )
    cls = optuna_pruner_class(raw_type)
    accepted = tuple(n for n in inspect.signature(cls).parameters if n != "self")
    ctx.unknown_keys(p, ("type", *accepted), key, f"the {raw_type} pruner (Optuna's argument names)")
    opts = {k: coerce(v) for k, v in p.items() if k != "type"}
    try:
        cls(**opts)
    except (TypeError, ValueError) as exc:
        bad = next(iter(opts), "type")
        ctx.fail(f"invalid pruner settings: {exc}", p.line_of(bad), join_key(key, bad))
    if raw_type == "none":
        return None
    return PrunerSpec(raw_type, opts, "pruner")
