"""The leaderboard's tables as text: an aligned plain table (a pipe, a log), a rich table (a terminal), CSV
(full precision), JSON and Markdown. Cells of a configuration of repeats read ``mean ± std``."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from orchestrator.leaderboard.compute import SECONDARY
from orchestrator.trial.errors import UsageError


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _raw(v: Any) -> str:
    """Full precision, for CSV."""
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def cell(row: dict[str, Any], col: str, pretty: bool = True) -> str:
    """The text of one cell; ``pretty`` renders ``mean ± std`` where a std exists (tables, markdown, HTML)."""
    v = _value(row, col)
    if pretty:
        std = row.get(f"{col}_std")
        if std is not None and v is not None:
            return f"{_fmt(v)} ± {_fmt(std)}"
    return _fmt(v)


def columns(table: dict[str, Any], wanted: list[str] | None = None) -> list[str]:
    rows = table["rows"]
    cols = []
    keys = list(table.get("group_by") or [])
    cols += [f"param:{k}" for k in keys]
    cols += ["rank", "trials" if table.get("aggregated") else "trial", "state"]
    if table.get("aggregated"):
        cols.append("n")
    cols += ["value", "best", "last", "best_epoch"]
    if table.get("group_by"):
        cols += ["group_mean", "group_std", "group_n"]
    cols += [f"param:{p}" for p in table["params"] if p not in keys]
    seen = {k for r in rows for k in r if "/" in k and not k.startswith("_") and not k.endswith("_std")}
    cols += [k for k in SECONDARY if k in seen] + sorted(seen - set(SECONDARY))
    cols += ["epochs", "duration_s", "gpu_hours"]
    if any(r.get("cost") is not None for r in rows):
        cols.append("cost")
    cols += ["host", "attempt", "wandb"]
    if wanted:
        wanted = ["value" if c == table.get("metric") else c for c in wanted]  # the objective by its name
        extra = {"trial", "trials", "n", "reason", "cost", "group_mean", "group_std", "group_n", "sweep"}
        unknown = [c for c in wanted if c not in cols and f"param:{c}" not in cols and c not in extra]
        if unknown:
            raise UsageError(
                f"--columns: unknown column(s) {', '.join(unknown)}",
                hint="columns: " + ", ".join(c.removeprefix("param:") for c in cols),
            )
        cols = [c if c in cols or c in extra else f"param:{c}" for c in wanted]
        for k in reversed(keys):  # a grouped table always says what each row is
            if f"param:{k}" not in cols:
                cols.insert(0, f"param:{k}")
    return cols


# the metrics the default table shows beside the objective (at most 3; 2 when cells are mean ± std)
COMPACT_METRICS = (
    "test/acc",
    "test/mae",
    "val/loss",
    "test/f1",
    "test/one_off",
    "val/f1",
    "val/mae",
    "val/acc",
)


def compact_columns(table: dict[str, Any]) -> list[str]:
    """The default terminal table (80–120 columns): rank, trial, value (± std), the swept parameters and 2–3
    metrics; the state only when some row is not COMPLETE. ``--wide`` or ``--columns`` shows the others."""
    full = columns(table)
    rows = table["rows"]
    cols = [f"param:{k}" for k in table.get("group_by") or [] if f"param:{k}" in full]  # the group keys first
    cols += [c for c in ("rank", "trials", "trial") if c in full][:2]
    if any(r.get("state") != "COMPLETE" for r in rows):
        cols.append("state")
    cols += [c for c in ("n", "value", "group_mean", "group_n") if c in full]
    cols += [c for c in full if c.startswith("param:") and c not in cols]
    room = 2 if table.get("aggregated") else 3
    cols += [m for m in COMPACT_METRICS if m in full and m != table.get("metric")][:room]
    return cols


def _value(row: dict[str, Any], col: str) -> Any:
    if col.startswith("param:"):
        return row["_params"].get(col[6:])
    return row.get(col)


def _title(t: dict[str, Any]) -> str:
    goal = f" — {t['metric']} ({t['direction']})" if t["metric"] else f" ({t['direction']})"
    extra = ""
    if t.get("aggregated"):
        extra = f"; mean ± std over {', '.join(t['repeats'])}"
    if t.get("group_by"):
        extra += f"; best per {' × '.join(t['group_by'])}"
    if t.get("note"):
        extra += f" ({t['note']})"
    return f"{t['sweep']}{goal}{extra}"


def render(
    tables: list[dict[str, Any]], fmt: str, wanted: list[str] | None = None, wide: bool = False
) -> str:
    if fmt == "json":
        return _json(tables, wanted)
    if fmt == "csv":
        return _csv(tables, wanted)
    if fmt == "markdown":
        return _markdown(tables, wanted)
    if fmt in ("table", "plain"):
        return plain(tables, wanted, wide)
    raise UsageError(f"--format {fmt!r}: use table, csv, json or markdown")


def _json(tables: list[dict[str, Any]], wanted: list[str] | None) -> str:
    out = []
    for t in tables:
        cols = columns(t, wanted)
        rows = []
        for r in t["rows"]:
            d: dict[str, Any] = {}
            for c in cols:
                name = c.removeprefix("param:")
                d[name] = _value(r, c)
                if f"{c}_std" in r:
                    d[f"{name}_std"] = r[f"{c}_std"]
            d["params"] = r["_params"]
            rows.append(d)
        out.append(
            {
                "sweep": t["sweep"],
                "direction": t["direction"],
                "metric": t["metric"],
                "repeats": t["repeats"],
                "group_by": t["group_by"],
                "note": t.get("note"),
                "rows": rows,
            }
        )
    return json.dumps({"sweeps": out}, indent=2, default=str) + "\n"


def _csv(tables: list[dict[str, Any]], wanted: list[str] | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header: list[str] | None = None
    for t in tables:
        cols = columns(t, wanted)
        present: set[str] = set().union(*(r.keys() for r in t["rows"]))
        stds = [c for c in cols if f"{c}_std" in present]
        names = ["sweep"] + [c.removeprefix("param:") for c in cols] + [f"{c}_std" for c in stds]
        if header != names:
            writer.writerow(names)
            header = names
        keys = [(c[6:], True) if c.startswith("param:") else (c, False) for c in cols]
        keys += [(f"{c}_std", False) for c in stds]
        name = t["sweep"]
        for r in t["rows"]:
            p = r["_params"]
            writer.writerow([name] + [_raw(p.get(k) if isp else r.get(k)) for k, isp in keys])
    return buf.getvalue()


def _markdown(tables: list[dict[str, Any]], wanted: list[str] | None) -> str:
    parts = []
    for t in tables:
        cols = columns(t, wanted)
        parts.append(f"### {_title(t)}\n")
        parts.append("| " + " | ".join(c.removeprefix("param:") for c in cols) + " |")
        parts.append("|" + "---|" * len(cols))
        for r in t["rows"]:
            parts.append("| " + " | ".join(cell(r, c).replace("|", "\\|") for c in cols) + " |")
        parts.append("")
    return "\n".join(parts)


def plain(tables: list[dict[str, Any]], wanted: list[str] | None = None, wide: bool = False) -> str:
    """Aligned plain text (no box drawing, no colour): what a pipe or a log file gets."""
    if not tables:
        return "no sweeps in this storage yet — run `orchestrate launch` first\n"
    parts = []
    for t in tables:
        cols = columns(t, wanted) if wanted or wide else compact_columns(t)
        head = [c.removeprefix("param:") for c in cols]
        body = [[cell(r, c) for c in cols] for r in t["rows"]]
        widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
        parts.append(_title(t))
        parts.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
        for b in body:
            parts.append("  ".join(x.ljust(w) for x, w in zip(b, widths, strict=True)).rstrip())
        parts.append("")
    return "\n".join(parts)


def print_tables(tables: list[dict[str, Any]], wanted: list[str] | None = None, wide: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not tables:
        console.print("no sweeps in this storage yet — run `orchestrate launch` first")
    for t in tables:
        table = Table(title=_title(t), title_justify="left")
        cols = columns(t, wanted) if wanted or wide else compact_columns(t)
        for c in cols:
            left = c in ("state", "wandb", "host", "trials") or c.startswith("param:")
            table.add_column(c.removeprefix("param:"), justify="left" if left else "right", overflow="fold")
        for r in t["rows"]:
            state = str(r["state"])
            style = {"PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}.get(state)
            table.add_row(*[cell(r, c) for c in cols], style=style)
        console.print(table)
