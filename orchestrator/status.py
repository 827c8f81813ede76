"""``orchestrate status``: what a sweep is doing now, read from the storage and the run directories.

Works from another terminal while ``launch`` runs, and after the controller died (its RUNNING trials are then
shown as orphaned: the next ``launch`` re-runs them). Per sweep:

- counts of finished (COMPLETE), pruned, failed, running trials, and *queued*: the planned trials
  (``orchestrate.spec``'s ``trials``: the grid size or run cap) minus the parameter points seen so far;
- each running trial: slot/host, epoch, latest value of the sweep metric and elapsed time, from the tail of
  ``<run_dir>/metrics.jsonl`` (Optuna's intermediate values when the file is missing), and whether the controller
  that owns it is alive (:func:`orchestrator.storage.owner_alive`);
- ETA = mean duration of the finished trials × (queued + running) / slots in use (only while a controller runs);
- GPU-hours so far (finished trials plus the elapsed time of running ones, as in the leaderboard).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from orchestrator import leaderboard as lb
from orchestrator import storage as st
from orchestrator.faults import mask_url
from orchestrator.trial.rundir import RunDir


def _tail_metrics(path: Path) -> dict[str, Any] | None:
    """The last complete line of a metrics.jsonl (``{"step", "time", **metrics}``; a nested ``metrics`` works too)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if isinstance(obj.get("metrics"), dict):
                obj = {**obj["metrics"], "step": obj.get("step"), "time": obj.get("time")}
            return obj
    return None


def _run_dir(rec: lb.TrialRec, sweep: str, runs_dir: Path | None) -> Path | None:
    attr = rec.attrs.get(st.ATTR_RUN_DIR)
    if attr and Path(attr).is_dir():
        return Path(attr)
    if runs_dir is not None:
        return RunDir.for_trial(runs_dir, sweep, rec.number).path
    return Path(attr) if attr else None


def _point(rec: lb.TrialRec) -> str:
    params = rec.attrs.get(st.ATTR_PARAMS)
    flat = lb._flatten(params) if isinstance(params, dict) else rec.params
    return json.dumps(flat, sort_keys=True, default=str)


def _running_row(
    rec: lb.TrialRec, row: dict[str, Any], sd: lb.StudyData, runs_dir: Path | None, now: float, leases: Any
) -> dict[str, Any]:
    """One running trial: where, its epoch and latest value (metrics.jsonl's tail, else Optuna's intermediate
    values), how long it runs, and whether its controller is alive."""
    metric = sd.metric
    owner = rec.attrs.get(st.ATTR_CONTROLLER)
    alive = st.owner_alive(owner, leases)  # another host's controller: by its heartbeat
    rd = _run_dir(rec, sd.name, runs_dir)
    tail = _tail_metrics(rd / "metrics.jsonl") if rd else None
    epoch: Any = None
    value: Any = None
    last_time = None
    if tail is not None:
        epoch = tail.get("step")
        value = tail.get(metric) if metric else None
        last_time = tail.get("time")
    elif rec.inter:
        epoch = max(rec.inter)
        value = rec.inter[epoch]
    start = rec.start.timestamp() if rec.start else None
    return {
        "trial": rec.number,
        "slot": rec.attrs.get(st.ATTR_SLOT),
        "host": rec.attrs.get(st.ATTR_HOST),
        "attempt": rec.attrs.get(st.ATTR_ATTEMPT, 1),
        "epoch": epoch,
        "metric": metric,
        "value": value,
        "elapsed_s": round(now - start, 1) if start else None,
        "since_last_epoch_s": round(now - float(last_time), 1)
        if isinstance(last_time, (int, float))
        else None,
        "controller": owner,
        "controller_alive": alive,
        "params": row["_params"],
        "run_dir": str(rd) if rd else None,
    }


def sweep_status(
    sd: lb.StudyData, runs_dir: Path | None = None, now: float | None = None, leases: Any = None
) -> dict[str, Any]:
    now = now if now is not None else time.time()
    rows = {r["trial"]: r for r in lb.trial_rows(sd, now=now)}
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
    points: set[str] = set()
    running = []
    durations = []
    gpu_hours = 0.0
    for rec in sd.trials:
        counts[names.get(rec.state, "waiting")] += 1
        row = rows[rec.number]
        gpu_hours += row["gpu_hours"] or 0.0
        if rec.state != "WAITING":
            points.add(_point(rec))
        interrupted = rec.state == "FAIL" and rec.attrs.get(st.ATTR_INTERRUPTED)
        if rec.state in ("COMPLETE", "PRUNED", "FAIL") and row["duration_s"] is not None and not interrupted:
            durations.append(float(row["duration_s"]))
        if rec.state == "RUNNING":
            running.append(_running_row(rec, row, sd, runs_dir, now, leases))
    planned = sd.spec.get("trials")
    queued = max(0, int(planned) - len(points)) if isinstance(planned, int) else None
    alive_running = [r for r in running if r["controller_alive"]]
    eta = None
    if alive_running and queued is not None and durations:
        mean = sum(durations) / len(durations)
        remaining = queued + len(alive_running)
        eta = round(mean * remaining / len(alive_running), 1)
    best_within = _best_within(list(rows.values()), sd.direction)
    return {
        "sweep": sd.name,
        "metric": sd.metric,
        "direction": sd.direction,
        "method": sd.spec.get("method"),
        "planned": planned,
        **counts,
        "queued": queued,
        "controller_alive": any(r["controller_alive"] for r in running) if running else None,
        "orphaned": len(running) - len(alive_running),
        "slots": sorted(
            {
                f"{r['host']}:{r['slot']}" if r["host"] not in (None, "local") else str(r["slot"])
                for r in running
            }
        ),
        "running_trials": running,
        "mean_duration_s": round(sum(durations) / len(durations), 1) if durations else None,
        "eta_s": eta,
        "gpu_hours": round(gpu_hours, 4),
        # one best per task/dataset/metric when the sweep spans several (values of two are not comparable):
        # "best" only when there is a single one
        "best": best_within[0] if len(best_within) == 1 else None,
        "best_within": best_within,
    }


def _best_within(rows: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """The best COMPLETE trial of each task/dataset/metric the sweep varies (one entry when it varies none):
    ``{"trial", "value"}`` plus the values of those parameters."""
    split = lb.strata(lb.varying([r["_params"] for r in rows]))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in lb.rank_within(rows, split, direction):
        key = json.dumps([r["_params"].get(k) for k in split], default=str)
        if key in seen or r["state"] != "COMPLETE":
            continue
        seen.add(key)
        out.append({**{k: r["_params"].get(k) for k in split}, "trial": r["trial"], "value": r["value"]})
    return out


def collect(url: str, sweep: list[str] | None = None, runs_dir: Path | None = None) -> dict[str, Any]:
    from orchestrator.trial.errors import UsageError

    if sweep:
        names = lb.study_names(url)
        missing = [s for s in sweep if s not in names]
        if missing:
            raise UsageError(
                f"no sweep named {', '.join(map(repr, missing))} in {mask_url(url)}",
                hint="sweeps there: " + (", ".join(names) or "none yet"),
            )
    now = time.time()
    leases, controllers = _controllers(url)
    return {
        "storage": mask_url(url),
        "time": now,
        "sweeps": [sweep_status(sd, runs_dir, now, leases) for sd in lb.load(url, sweep)],
        "controllers": controllers,
    }


def _controllers(url: str) -> tuple[Any, list[dict[str, Any]]]:
    """The heartbeats of the controllers sharing this storage (orchestrator/leases.py), read only; and the
    judge that tells whether one on another host is alive. ``(None, [])`` when the storage has none."""
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        return None, []
    try:
        import sqlalchemy as sa

        from orchestrator.leases import TABLE, Leases

        engine = sa.create_engine(url)
        if not sa.inspect(engine).has_table(TABLE):
            return None, []
        judge = Leases(engine, f"{st.host_id()}:0:status")
        _, rows = judge._rows()
        out = []
        for row in sorted(rows.values(), key=lambda r: -float(r.last_seen)):
            verdict = judge.verdict(row.controller)
            if row.finished_at is not None and not verdict.alive and (verdict.age_s or 0) > 3600:
                continue  # finished more than an hour ago: history, not status
            out.append(
                {
                    "controller": row.controller,
                    "host": row.host,
                    "alive": st.owner_alive(row.controller, judge) and row.finished_at is None,
                    "why": verdict.why,
                    "lease_s": float(row.lease_s),
                }
            )
        return judge, out
    except Exception:  # an older schema or a storage we cannot read this way: status without heartbeats
        return None, []


def _dur(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def render(report: dict[str, Any]) -> str:
    if not report["sweeps"]:
        return "no sweeps in this storage yet — run `orchestrate launch` first\n"
    out = []
    for c in report.get("controllers") or []:
        state = "running" if c["alive"] else "gone"
        out.append(f"controller {c['controller']} ({c['host']}): {state}, {c['why']}")
    for s in report["sweeps"]:
        queued = "?" if s["queued"] is None else str(s["queued"])
        out.append(
            f"{s['sweep']}: {s['complete']} finished, {s['pruned']} pruned, {s['failed']} failed, "
            f"{s['running']} running, {queued} queued"
            + (f" (of {s['planned']} planned)" if s["planned"] is not None else "")
            + f"; {s['gpu_hours']:.3g} GPU-hours"
        )
        for b in s["best_within"]:
            within = ", ".join(f"{k}={v}" for k, v in b.items() if k not in ("trial", "value"))
            out.append(
                f"  best: trial {b['trial']} {s['metric'] or 'value'}={lb._fmt(b['value'])}"
                + (f" ({within})" if within else "")
            )
        if s["running"]:
            state = (
                "controller alive" if s["controller_alive"] else "controller NOT running (orphaned trials)"
            )
            eta = f", ETA {_dur(s['eta_s'])}" if s["eta_s"] is not None else ""
            out.append(f"  slots in use: {', '.join(s['slots'])}; {state}{eta}")
        for r in s["running_trials"]:
            where = f"{r['host']}:{r['slot']}" if r["host"] not in (None, "local") else str(r["slot"])
            metric = f" {r['metric']}={lb._fmt(r['value'])}" if r["metric"] else ""
            flag = "" if r["controller_alive"] else "  [orphaned: the next launch re-runs it]"
            out.append(
                f"  trial {r['trial']} on {where}: epoch {lb._fmt(r['epoch']) or '-'}{metric}, "
                f"elapsed {_dur(r['elapsed_s'])}{flag}"
            )
    return "\n".join(out) + "\n"
