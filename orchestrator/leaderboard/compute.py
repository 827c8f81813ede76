"""The leaderboard's numbers, computed from :class:`~orchestrator.leaderboard.read.StudyData` records: pure
functions on plain rows (dicts), no I/O.

A trial row (:func:`trial_rows`); configurations of repeats (:func:`aggregate`: mean ± sample std over folds,
seeds, repeats); ranking (:func:`rank`, within each task/dataset/metric with :func:`rank_within`); the
``--group-by`` table (:func:`group`); the ``--where``, ``--state`` and ``--sort`` filters. The rules are in the
package docstring (:mod:`orchestrator.leaderboard`).
"""

from __future__ import annotations

import difflib
import json
import math
import time
from typing import Any

from orchestrator import storage as st
from orchestrator.leaderboard.read import (
    ATTR_BEST_VALUE,
    ATTR_COST,
    ATTR_FOLD_STD,
    ATTR_FOLDS,
    ATTR_SLOT_S,
    ATTR_WANDB_PATH,
    StudyData,
    _flatten,
    _num,
)
from orchestrator.trial.errors import UsageError

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3, "WAITING": 4}
SECONDARY = (
    "val/acc",
    "val/one_off",
    "val/f1",
    "val/mae",
    "val/loss",
    "test/acc",
    "test/one_off",
    "test/f1",
    "test/mae",
    "test/loss",
)
REPEAT_PARAMS = ("fold", "seed", "repeat")
STRATA = ("task", "tasks", "dataset", "metric")  # values of different tasks/datasets/metrics never averaged
NUMERIC_AGG = ("value", "best", "last", "best_epoch", "epochs")
SUMMED = ("duration_s", "gpu_hours", "cost")


# -------------------------------------------------------------------------------------------- trial rows
def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _gpu_share(slots: set[str]) -> dict[str, float]:
    """GPU fraction per slot id: 1 for ``gpu0``, 1/k for shares ``gpu0.0``…``gpu0.{k-1}`` (k = the largest share
    index seen + 1), 0 for CPU slots (``cpu0``). Ids may carry a host (``box:gpu0``)."""
    shares: dict[tuple[str, str], int] = {}
    for s in slots:
        host, _, local = s.rpartition(":")
        base, dot, k = local.partition(".")
        if local.startswith("gpu") and dot and k.isdigit():
            shares[(host, base)] = max(shares.get((host, base), 1), int(k) + 1)
    out = {}
    for s in slots:
        host, _, local = s.rpartition(":")
        out[s] = 1.0 / shares.get((host, local.partition(".")[0]), 1) if local.startswith("gpu") else 0.0
    return out


def _metric_keys(summary: dict[str, Any], metric: str | None) -> list[str]:
    keys = []
    for k, v in summary.items():
        if k == metric or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k in SECONDARY or (
            k.startswith(("val/", "test/")) and "/precision/" not in k and "/recall/" not in k
        ):
            keys.append(k)
    return keys


def trial_rows(sd: StudyData, now: float | None = None) -> list[dict[str, Any]]:
    """One row per trial (unranked)."""
    metric = sd.metric
    maximize = sd.direction == "maximize"
    now = now if now is not None else time.time()
    share = _gpu_share({str(t.attrs.get(st.ATTR_SLOT)) for t in sd.trials if t.attrs.get(st.ATTR_SLOT)})
    rows: list[dict[str, Any]] = []
    for t in sd.trials:
        ua = t.attrs
        params = ua.get(st.ATTR_PARAMS)
        flat = _flatten(params) if isinstance(params, dict) else dict(t.params)
        summary = ua.get(st.ATTR_SUMMARY)
        summary = summary if isinstance(summary, dict) else {}
        value = t.value if t.state == "COMPLETE" and not ua.get(st.ATTR_NO_METRIC) else None
        best, best_step, last = t.best, t.best_step, t.last
        if t.n_steps == 0:
            best, last = value, value
            be = _num(summary.get("best_epoch"))
            best_step = int(be) if be is not None else None
        lv = _num(ua.get(st.ATTR_LAST_VALUE))
        if lv is not None:
            last = lv
        best = _best_of(best, value, _num(ua.get(ATTR_BEST_VALUE)) if ATTR_BEST_VALUE else None, maximize)
        duration = _num(ua.get(st.ATTR_DURATION))
        if duration is None and t.start is not None:
            if t.complete is not None:
                duration = max(0.0, t.complete.timestamp() - t.start.timestamp())
            elif t.state == "RUNNING":
                duration = max(0.0, now - t.start.timestamp())
        epochs = ua.get(st.ATTR_EPOCHS)
        if epochs is None:
            epochs = t.n_steps
        slot = ua.get(st.ATTR_SLOT)
        host = ua.get(st.ATTR_HOST)
        frac = share.get(str(slot), 0.0) if slot else 0.0
        slot_s = _num(ua.get(ATTR_SLOT_S)) if ATTR_SLOT_S else None  # slot time of all the trial's jobs
        busy = slot_s if slot_s is not None else duration
        gpu_hours = round(busy / 3600 * frac, 4) if busy is not None and slot else None
        price = _num(ua.get(ATTR_COST))
        cost = None
        if price is not None and duration is not None:
            cost = round(price * duration / 3600 * (frac or 1.0), 4)
        row: dict[str, Any] = {
            "sweep": sd.name,
            "trial": t.number,
            "state": t.state,
            "value": value,
            "best": best,
            "last": last,
            "best_epoch": best_step,
            "epochs": epochs,
            "duration_s": round(duration, 1) if duration is not None else None,
            "gpu_hours": gpu_hours,
            "cost": cost,
            "host": (f"{host}/{slot}" if host and host != "local" else slot) if slot else host,
            "attempt": ua.get(st.ATTR_ATTEMPT, 1),
            "wandb": ua.get(ATTR_WANDB_PATH),
            "reason": ua.get(st.ATTR_REASON),
            "_params": flat,
            "_run_dir": ua.get(st.ATTR_RUN_DIR),
            "_wandb_id": ua.get(st.ATTR_WANDB),
        }
        for key in _metric_keys(summary, metric):
            row[key] = float(summary[key])
        folds = ua.get(ATTR_FOLDS) if ATTR_FOLDS else None
        if isinstance(folds, dict) and len(folds) > 1 and value is not None:  # folds run inside one trial
            row["value_std"] = _num(ua.get(ATTR_FOLD_STD)) if ATTR_FOLD_STD else None
            row["folds"] = len(folds)
        rows.append(row)
    return rows


def _best_of(
    best: float | None, value: float | None, fold_best: float | None, maximize: bool
) -> float | None:
    """A trial's ``best``, computed like its ``value``: for a trial run per fold the controller's mean of the
    folds' bests (``orchestrate.best_value``); otherwise the best of its reported values and its final value.
    So ``best >= value`` for maximize and ``best <= value`` for minimize, always."""
    if value is None or not _finite(value):
        return best
    if fold_best is not None and _finite(fold_best):
        best = fold_best
    if best is None or not _finite(best):
        return value
    return max(best, value) if maximize else min(best, value)


def varying(params: list[dict[str, Any]]) -> list[str]:
    """Parameter names whose value differs between trials, in first-seen order."""
    names: dict[str, None] = {}
    for p in params:
        for k in p:
            names.setdefault(k, None)
    out = []
    for k in names:
        first = object()
        seen: Any = first
        for p in params:
            v = json.dumps(p.get(k), sort_keys=True, default=str)
            if seen is first:
                seen = v
            elif v != seen:
                out.append(k)
                break
    return out


def is_repeat(name: str) -> bool:
    return name.rpartition(".")[2] in REPEAT_PARAMS


# --------------------------------------------------------------------------------------- ranking, groups
def _sort_key(direction: str) -> Any:
    sign = -1.0 if direction == "maximize" else 1.0

    def key(r: dict[str, Any]) -> tuple[int, float, int]:
        order = 0 if r.get("n") else STATE_ORDER.get(r["state"], 9)
        if "n" in r and not r.get("n"):
            order = max(1, STATE_ORDER.get(r["state"], 9))
        v = r["value"] if _finite(r["value"]) else r["best"] if _finite(r["best"]) else r["last"]
        v = sign * v if _finite(v) else math.inf
        return (order, v, r["trial"])

    return key


def rank(rows: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    ranked = sorted(rows, key=_sort_key(direction))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); ``statistics.stdev`` is exact but 50× slower."""
    n = len(values)
    if not n:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(rows: list[dict[str, Any]], repeat_names: list[str], direction: str) -> list[dict[str, Any]]:
    """One row per configuration (trials equal in every non-repeat parameter); see the module docstring."""
    rep = set(repeat_names)
    buckets: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for r in rows:
        p = r["_params"]
        ident = tuple((k, repr(p[k])) for k in sorted(p) if k not in rep)
        buckets.setdefault(ident, []).append(r)
    out = []
    sort_key = _sort_key(direction)
    for members in buckets.values():
        if len(members) > 1:
            members.sort(key=sort_key)
        first = members[0]
        done = [m for m in members if m["state"] == "COMPLETE"]
        row = dict(first)
        row["_params"] = {k: v for k, v in first["_params"].items() if k not in rep}
        row["trials"] = ",".join(str(n) for n in sorted(m["trial"] for m in members))
        row["n"] = sum(1 for m in done if m["value"] is not None)
        row["repeats"] = len(members)
        counts: dict[str, int] = {}
        for m in members:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        row["state"] = (
            first["state"] if len(counts) == 1 else " ".join(f"{n} {s.lower()}" for s, n in counts.items())
        )
        if len(members) == 1:  # a configuration run once: its own numbers, no spread
            for col in (*NUMERIC_AGG[:3], *(k for k in first if "/" in k and not k.startswith("_"))):
                if not _finite(_num(row.get(col))):
                    row[col] = None
                row[f"{col}_std"] = None
            row["_members"] = members
            out.append(row)
            continue
        source = done or members
        keys = [*NUMERIC_AGG, *(k for k in first if "/" in k and not k.startswith("_"))]
        for m in members[1:]:
            keys += [k for k in m if "/" in k and not k.startswith("_") and k not in keys]
        for col in keys:
            vals = [float(m[col]) for m in source if _finite(_num(m.get(col)))]
            mean, std = _mean_std(vals)
            row[col] = mean
            if col not in ("best_epoch", "epochs"):
                row[f"{col}_std"] = std
        if not done:
            row["value"] = None
        if len(members) > 1:
            for col in SUMMED:
                vals = [m[col] for m in members if m.get(col) is not None]
                row[col] = round(sum(vals), 4) if vals else None
            row["attempt"] = max(int(m.get("attempt") or 1) for m in members)
            hosts = sorted({str(m["host"]) for m in members if m.get("host")})
            row["host"] = ",".join(hosts) if hosts else None
        row["_members"] = members
        out.append(row)
    return out


def strata(params: list[str]) -> list[str]:
    """The parameters among ``params`` whose values measure different things (:data:`STRATA`: task, dataset,
    metric …): numbers of two of their values are never averaged, nor ranked against each other in a group."""
    return [p for p in params if p.rpartition(".")[2] in STRATA]


def rank_within(rows: list[dict[str, Any]], keys: list[str], direction: str) -> list[dict[str, Any]]:
    """Rank separately per combination of ``keys`` (the :func:`strata`), blocks in first-seen order."""
    blocks: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault(json.dumps([r["_params"].get(k) for k in keys], default=str), []).append(r)
    return [r for block in blocks.values() for r in rank(block, direction)]


def group(
    rows: list[dict[str, Any]], trial_level: list[dict[str, Any]], param: str | list[str], direction: str
) -> list[dict[str, Any]]:
    """Best row per value of ``param`` (per combination of values, for several parameters) +
    ``group_mean/std/n`` over every COMPLETE trial with that value."""
    keys = [param] if isinstance(param, str) else list(param)

    def ident(r: dict[str, Any]) -> str:
        return json.dumps([r["_params"].get(k) for k in keys], sort_keys=True, default=str)

    buckets: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(ident(r), []).append(r)
    by_value: dict[str, list[float]] = {}
    for r in trial_level:
        if r["state"] == "COMPLETE" and _finite(r["value"]):
            by_value.setdefault(ident(r), []).append(float(r["value"]))
    out = []
    for key, members in buckets.items():
        best = dict(rank([dict(m) for m in members], direction)[0])
        vals = by_value.get(key, [])
        best["group_mean"], best["group_std"] = _mean_std(vals)
        best["group_n"] = len(vals)
        best["configs"] = len(members)
        out.append(best)
    return rank(out, direction)


# ------------------------------------------------------------------------------------------------ filters
def _parse_where(expr: str) -> tuple[str, str, str]:
    for op in ("<=", ">=", "!=", "==", "<", ">", "="):
        if op in expr:
            left, right = expr.split(op, 1)
            return left.strip(), ("==" if op == "=" else op), right.strip()
    raise UsageError(f"--where {expr!r}: expected NAME<op>VALUE with op one of < <= > >= == !=")


def _matches(row: dict[str, Any], cond: tuple[str, str, str]) -> bool:
    name, op, raw = cond
    actual = row["_params"].get(name, row.get(name))
    if actual is None:
        return False
    a: Any
    b: Any
    fa, fb = _num(actual), _num(raw)
    if fa is not None and fb is not None:
        a, b = fa, fb
    else:
        a, b = str(actual).lower(), raw.lower()
    return bool(
        {
            "<": lambda: a < b,
            "<=": lambda: a <= b,
            ">": lambda: a > b,
            ">=": lambda: a >= b,
            "==": lambda: a == b,
            "!=": lambda: a != b,
        }[op]()
    )


def _suggest(name: str, choices: list[str]) -> str:
    """``did you mean X?`` (difflib) and the choices: the hint of a bad --where, --state or --sort."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not close:  # 'backbone' for 'model.backbone': the last dotted name
        close = [c for c in choices if c.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]][:1]
    listed = ", ".join(choices[:40]) + (" …" if len(choices) > 40 else "")
    return (f"did you mean {close[0]!r}? " if close else "") + f"choose from: {listed}"


def _sorted(rows: list[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    desc = spec.startswith("-")
    col = spec.lstrip("-+")
    if rows and not any(col in r or col in r["_params"] for r in rows):
        names = sorted({k for r in rows for k in (*r["_params"], *r) if not k.startswith("_")})
        raise UsageError(f"--sort {spec!r}: no column {col!r}", hint=_suggest(col, names))

    def key(r: dict[str, Any]) -> tuple[int, Any]:
        v = r["_params"].get(col, r.get(col))
        if v is None:
            return (1, 0)
        n = _num(v)
        return (0, (-n if desc else n) if n is not None else str(v))

    present = [r for r in rows if r["_params"].get(col, r.get(col)) is not None]
    absent = [r for r in rows if r["_params"].get(col, r.get(col)) is None]
    try:
        ordered = sorted(present, key=key)
    except TypeError:
        ordered = sorted(present, key=lambda r: str(r["_params"].get(col, r.get(col))), reverse=desc)
    if desc and ordered and _num(ordered[0]["_params"].get(col, ordered[0].get(col))) is None:
        ordered.reverse()
    return ordered + absent
