"""The leaderboard's tables: read the studies (:mod:`.read`), compute and rank their rows (:mod:`.compute`);
:mod:`.render` turns the tables into text."""

from __future__ import annotations

from typing import Any

from orchestrator.faults import mask_url
from orchestrator.leaderboard.compute import (
    STATE_ORDER,
    _matches,
    _parse_where,
    _sorted,
    _suggest,
    aggregate,
    group,
    is_repeat,
    rank,
    rank_within,
    strata,
    trial_rows,
    varying,
)
from orchestrator.leaderboard.read import StudyData, _wandb_cell, load, load_wandb, study_names
from orchestrator.trial.errors import UsageError


def build(
    storage_url: str,
    sweep: list[str] | None = None,
    top: int | None = None,
    states: list[str] | None = None,
    where: list[str] | None = None,
    group_by: str | list[str] | None = None,
    sort: str | None = None,
    per_trial: bool = False,
    studies: list[StudyData] | None = None,
) -> list[dict[str, Any]]:
    """One table per sweep: ``{"sweep", "direction", "metric", "params", "repeats", "group_by", "note",
    "rows"}``; ``group_by`` is the list of grouping parameters (``"backbone,task"`` or a list), to which the
    sweep's varying :func:`strata` parameters are added (``note`` says so)."""
    if isinstance(group_by, str):
        group_by = [k.strip() for k in group_by.split(",") if k.strip()]
    if studies is None:
        studies = _studies(storage_url, sweep)
    conds = [_parse_where(w) for w in where or []]
    wanted = _states(states)
    tables = []
    seen_names: set[str] = set()  # every parameter and column name, for --where
    for sd in studies:
        all_rows = trial_rows(sd)
        seen_names.update(k for r in all_rows for k in (*r["_params"], *r) if not k.startswith("_"))
        seen_names.update([sd.metric] if sd.metric and all_rows else [])
        tables.append(_table(sd, all_rows, conds, wanted, group_by, sort, top, per_trial))
    for name, _, _ in conds:
        if seen_names and name not in seen_names:
            raise UsageError(
                f"--where: no parameter or column {name!r}", hint=_suggest(name, sorted(seen_names))
            )
    return tables


def _studies(storage_url: str, sweep: list[str] | None) -> list[StudyData]:
    """The storage's studies, or those named (each must exist)."""
    if sweep:
        names = study_names(storage_url)
        missing = [s for s in sweep if s not in names]
        if missing:
            raise UsageError(
                f"no sweep named {', '.join(map(repr, missing))} in {mask_url(storage_url)}",
                hint="sweeps there: " + (", ".join(names) or "none yet — run `orchestrate launch` first"),
            )
    return load(storage_url, sweep or None)


def _states(states: list[str] | None) -> set[str] | None:
    """The ``--state`` filter, upper-cased; None: every state."""
    wanted = {s.upper() for s in states} if states else None
    for s in sorted(wanted or ()):
        if s not in STATE_ORDER:
            raise UsageError(
                f"--state {s.lower()!r}: no such trial state", hint=_suggest(s, list(STATE_ORDER))
            )
    return wanted


def _table(
    sd: StudyData,
    all_rows: list[dict[str, Any]],
    conds: list[tuple[str, str, str]],
    wanted: set[str] | None,
    group_by: list[str] | None,
    sort: str | None,
    top: int | None,
    per_trial: bool,
) -> dict[str, Any]:
    """The table of one sweep: filtered, aggregated over repeats, grouped or ranked, sorted, cut to ``top``."""
    # the objective by its name (--where 'val/acc>0.8') is the value column
    sconds = [("value" if n == sd.metric else n, op, v) for n, op, v in conds]
    params = varying([r["_params"] for r in all_rows])
    rows = [
        r
        for r in all_rows
        if (wanted is None or r["state"] in wanted) and all(_matches(r, c) for c in sconds)
    ]
    repeats = [p for p in params if is_repeat(p)]
    trial_level = rows
    aggregated = bool(repeats) and not per_trial
    if aggregated:
        rows = aggregate(rows, repeats, sd.direction)
        params = [p for p in params if p not in repeats]
    rows, params, keys, note = _arrange(sd, rows, trial_level, all_rows, params, group_by)
    if sort:
        rows = _sorted(rows, sort)
    if top:
        rows = [r for r in rows if r["rank"] <= top] if note and not keys else rows[:top]
    for r in rows:
        r["wandb"] = _wandb_cell(r)
    return {
        "sweep": sd.name,
        "direction": sd.direction,
        "metric": sd.metric,
        "params": params,
        "repeats": repeats,
        "aggregated": aggregated,
        "group_by": keys,
        "note": note,
        "rows": rows,
    }


def _arrange(
    sd: StudyData,
    rows: list[dict[str, Any]],
    trial_level: list[dict[str, Any]],
    all_rows: list[dict[str, Any]],
    params: list[str],
    group_by: list[str] | None,
) -> tuple[list[dict[str, Any]], list[str], list[str] | None, str | None]:
    """Rows grouped (``--group-by``), ranked within each task/dataset/metric, or ranked: (rows, params, the
    grouping keys, the note that says what was done beyond what was asked)."""
    if group_by:
        for key in group_by:
            if rows and not any(key in r["_params"] for r in rows):
                known = sorted({k for r in all_rows for k in r["_params"]})
                raise UsageError(
                    f"--group-by {key!r}: sweep {sd.name!r} has no such parameter",
                    hint="parameters: " + ", ".join(known),
                )
        added = [p for p in strata(params) if p not in group_by]
        keys = [*group_by, *added]
        note = None
        if added:
            note = (
                f"also grouped by {', '.join(added)}: the sweep spans several of them, and values of "
                "different tasks/datasets/metrics are never averaged"
            )
        rows = group(rows, trial_level, keys, sd.direction)
        return rows, keys + [p for p in params if p not in keys], keys, note
    if strata(params):  # a sweep over tasks/datasets/metrics: one ranking per task, never one across
        split = strata(params)
        note = f"ranked within each {' × '.join(split)}: values of different ones are not comparable"
        return rank_within(rows, split, sd.direction), params, None, note
    return rank(rows, sd.direction), params, None, None


# ------------------------------------------------------------------------------------------ --source wandb
def build_wandb(
    project: str | None,
    sweep: list[str] | None = None,
    metric: str | None = None,
    goal: str = "maximize",
    **kw: Any,
) -> list[dict[str, Any]]:
    """The same tables from a W&B project's runs (group = sweep), through ``wandb.Api()`` (online only).

    Fails fast, before importing wandb, when no W&B credentials are set up (offline machines).
    """
    return build("", studies=load_wandb(project, sweep, metric, goal), **kw)
