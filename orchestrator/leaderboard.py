"""``orchestrate leaderboard``: the best trials per sweep, read from the Optuna storage.

Works on any Optuna study: orchestrate's trial attributes (epochs, duration, summary metrics, W&B run) are used
when present, and the plain Optuna fields (params, value, intermediate values, timestamps) otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from typing import Any

from orchestrator import storage as st
from orchestrator.errors import UsageError

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
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def study_rows(study: Any) -> tuple[list[dict[str, Any]], list[str], str, str | None]:
    """Rows for one study (unranked), the varying parameter names, the direction and the metric name."""
    direction = study.direction.name.lower()
    metric_info = study.user_attrs.get(st.ATTR_METRIC) or {}
    metric_name = metric_info.get("name") if isinstance(metric_info, dict) else None
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        params = ua.get(st.ATTR_PARAMS)
        flat = _flatten(params) if isinstance(params, dict) else dict(t.params)
        inter = t.intermediate_values
        last = _num(ua.get(st.ATTR_LAST_VALUE))
        if last is None and inter:
            last = inter[max(inter)]
        value = t.value if t.state.name == "COMPLETE" and not ua.get(st.ATTR_NO_METRIC) else None
        if t.state.name == "PRUNED" and inter:
            value = None
        duration = _num(ua.get(st.ATTR_DURATION))
        if duration is None and t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        epochs = ua.get(st.ATTR_EPOCHS)
        if epochs is None:
            epochs = len(inter)
        best_step = ua.get(st.ATTR_BEST_STEP)
        if best_step is None and inter:
            pick = max if direction == "maximize" else min
            best_step = pick(inter, key=lambda s: inter[s])
        row: dict[str, Any] = {
            "sweep": study.study_name,
            "trial": t.number,
            "state": t.state.name,
            "value": value,
            "last": last,
            "best_epoch": best_step,
            "epochs": epochs,
            "duration_s": round(duration, 1) if duration is not None else None,
            "attempt": ua.get(st.ATTR_ATTEMPT, 1),
            "slot": ua.get(st.ATTR_SLOT),
            "wandb_run": ua.get(st.ATTR_WANDB),
            "reason": ua.get(st.ATTR_REASON),
            "_params": flat,
        }
        summary = ua.get(st.ATTR_SUMMARY) or {}
        for key in SECONDARY:
            if key in summary and key != metric_name:
                row[key] = _num(summary[key])
        rows.append(row)
    varying = _varying([r["_params"] for r in rows])
    return rows, varying, direction, metric_name


def _varying(params: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for p in params:
        for k in p:
            if k not in names:
                names.append(k)
    out = []
    for k in names:
        seen = {json.dumps(p.get(k), sort_keys=True, default=str) for p in params}
        if len(seen) > 1:
            out.append(k)
    return out


def rank(rows: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    sign = -1.0 if direction == "maximize" else 1.0

    def key(r: dict[str, Any]) -> tuple[int, float, int]:
        order = STATE_ORDER.get(r["state"], 9)
        v = r["value"] if r["value"] is not None else r["last"]
        v = sign * v if v is not None and math.isfinite(v) else math.inf
        return (order, v, r["trial"])

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


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
    a: Any = actual
    b: Any = raw
    fa, fb = _num(actual), _num(raw)
    if fa is not None and fb is not None:
        a, b = fa, fb
    else:
        a, b = str(actual), raw
    return {
        "<": lambda: a < b,
        "<=": lambda: a <= b,
        ">": lambda: a > b,
        ">=": lambda: a >= b,
        "==": lambda: a == b,
        "!=": lambda: a != b,
    }[op]()


def build(
    storage_url: str,
    sweep: list[str] | None = None,
    top: int | None = None,
    states: list[str] | None = None,
    where: list[str] | None = None,
    group_by: str | None = None,
) -> list[dict[str, Any]]:
    """One table per sweep: ``[{"sweep", "direction", "metric", "params", "rows"}]``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = st.get_storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if sweep:
        missing = [s for s in sweep if s not in names]
        if missing:
            raise UsageError(
                f"no sweep named {', '.join(map(repr, missing))} in {storage_url}",
                hint="sweeps there: " + (", ".join(names) or "none yet — run `orchestrate launch` first"),
            )
        names = [n for n in names if n in sweep]
    conds = [_parse_where(w) for w in where or []]
    wanted = {s.upper() for s in states} if states else None
    tables = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        rows, varying, direction, metric = study_rows(study)
        rows = [
            r for r in rows if (wanted is None or r["state"] in wanted) and all(_matches(r, c) for c in conds)
        ]
        if group_by:
            if rows and not any(group_by in r["_params"] for r in rows):
                raise UsageError(
                    f"--group-by {group_by!r}: sweep {name!r} has no such parameter",
                    hint="parameters: " + ", ".join(sorted({k for r in rows for k in r["_params"]})),
                )
            rows = group(rows, group_by, direction)
            varying = [group_by]
        else:
            rows = rank(rows, direction)
        if top:
            rows = rows[:top]
        tables.append(
            {"sweep": name, "direction": direction, "metric": metric, "params": varying, "rows": rows}
        )
    return tables


def group(rows: list[dict[str, Any]], param: str, direction: str) -> list[dict[str, Any]]:
    """Best trial per value of ``param``, with mean ± std of the completed trials' values (repeats, folds)."""
    buckets: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = json.dumps(r["_params"].get(param), sort_keys=True, default=str)
        buckets.setdefault(key, []).append(r)
    out = []
    for members in buckets.values():
        ranked = rank([dict(m) for m in members], direction)
        best = dict(ranked[0])
        values = [m["value"] for m in members if m["state"] == "COMPLETE" and m["value"] is not None]
        best["n"] = len(values)
        best["mean"] = statistics.fmean(values) if values else None
        best["std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out.append(best)
    return rank(out, direction)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def columns(table: dict[str, Any], wanted: list[str] | None = None) -> list[str]:
    rows = table["rows"]
    cols = ["rank", "trial", "state", "value", "last", "best_epoch"]
    if rows and "mean" in rows[0]:
        cols += ["mean", "std", "n"]
    cols += [f"param:{p}" for p in table["params"]]
    for key in SECONDARY:
        if any(key in r for r in rows):
            cols.append(key)
    cols += ["epochs", "duration_s", "attempt", "wandb_run"]
    if wanted:
        unknown = [c for c in wanted if c not in cols and f"param:{c}" not in cols]
        if unknown:
            raise UsageError(
                f"--columns: unknown column(s) {', '.join(unknown)}", hint="columns: " + ", ".join(cols)
            )
        cols = [c if c in cols else f"param:{c}" for c in wanted]
    return cols


def _value(row: dict[str, Any], col: str) -> Any:
    if col.startswith("param:"):
        return row["_params"].get(col[6:])
    return row.get(col)


def render(tables: list[dict[str, Any]], fmt: str, wanted: list[str] | None = None) -> str:
    if fmt == "json":
        out = []
        for t in tables:
            cols = columns(t, wanted)
            out.append(
                {
                    "sweep": t["sweep"],
                    "direction": t["direction"],
                    "metric": t["metric"],
                    "rows": [
                        {c.removeprefix("param:"): _value(r, c) for c in cols} | {"params": r["_params"]}
                        for r in t["rows"]
                    ],
                }
            )
        return json.dumps({"sweeps": out}, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        header_done = False
        for t in tables:
            cols = columns(t, wanted)
            if not header_done:
                writer.writerow(["sweep"] + [c.removeprefix("param:") for c in cols])
                header_done = True
            for r in t["rows"]:
                writer.writerow([t["sweep"]] + [_cell(_value(r, c)) for c in cols])
        return buf.getvalue()
    if fmt == "markdown":
        parts = []
        for t in tables:
            cols = columns(t, wanted)
            goal = f" — {t['metric']} ({t['direction']})" if t["metric"] else ""
            parts.append(f"### {t['sweep']}{goal}\n")
            parts.append("| " + " | ".join(c.removeprefix("param:") for c in cols) + " |")
            parts.append("|" + "---|" * len(cols))
            for r in t["rows"]:
                parts.append("| " + " | ".join(_cell(_value(r, c)).replace("|", "\\|") for c in cols) + " |")
            parts.append("")
        return "\n".join(parts)
    raise UsageError(f"--format {fmt!r}: use table, csv, json or markdown")


def print_tables(tables: list[dict[str, Any]], wanted: list[str] | None = None, plain: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(no_color=plain, width=200 if plain else None)
    if not tables:
        console.print("no sweeps in this storage yet — run `orchestrate launch` first")
    for t in tables:
        goal = f" — {t['metric']} ({t['direction']})" if t["metric"] else f" ({t['direction']})"
        table = Table(title=f"{t['sweep']}{goal}", title_justify="left")
        cols = columns(t, wanted)
        for c in cols:
            table.add_column(
                c.removeprefix("param:"), justify="right" if c not in ("state", "wandb_run") else "left"
            )
        for r in t["rows"]:
            style = {"PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}.get(r["state"])
            table.add_row(*[_cell(_value(r, c)) for c in cols], style=style)
        console.print(table)
