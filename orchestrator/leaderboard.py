"""``orchestrate leaderboard``: the tables researchers write by hand, read from the Optuna storage.

Reading. For an RDB storage (``sqlite:///…``, ``postgresql://…``, ``mysql://…``) the Optuna tables are read
directly in a few SQL queries (stdlib ``sqlite3`` for SQLite, SQLAlchemy otherwise): ``study.get_trials()`` builds
one FrozenTrial at a time and takes many seconds on 10,000 trials. Journal storages, and any RDB whose schema
differs from the one these queries expect, are read through the Optuna API instead. Works on any Optuna study:
orchestrate's trial attributes (``orchestrate.*``: epochs, duration, summary metrics, slot, W&B run) are used
when present, and plain Optuna fields (params, value, intermediate values, timestamps) otherwise.

Columns of a trial row: ``rank``, ``trial``, ``state``, ``value`` (Optuna's objective: the child's summary value,
e.g. the best epoch's), ``best`` (the best reported epoch value), ``last`` (the last reported value),
``best_epoch``, the parameters that vary in the sweep, secondary metrics from the child's summary (``val/*``,
``test/*``), ``epochs``, ``duration_s``, ``gpu_hours``, ``cost``, ``host`` (host/slot), ``attempt`` and ``wandb``
(``entity/project/runs/id`` when the trial has ``orchestrate.wandb_path``, else the offline run folder, else the
run id).

Repeats (the grouping rule). Parameters whose last dotted name is one of :data:`REPEAT_PARAMS` (``fold``,
``seed``, ``repeat``) are *repeats*. Trials whose other parameters are all equal form one *configuration*. When a
sweep varies a repeat parameter, the leaderboard shows one row per configuration (``--per-trial`` shows trials):
``value``, ``best``, ``last`` and each metric are the mean over the configuration's COMPLETE trials, with the
sample standard deviation (n−1) in ``<column>_std`` (rendered ``mean ± std`` in tables), ``n`` completed repeats,
``trials`` the member trial numbers; ``duration_s``, ``gpu_hours`` and ``cost`` are sums, ``epochs`` the mean.

``--group-by PARAM[,PARAM…]`` (the architecture-comparison table): per value of PARAM (per combination, for
several), the best row (configuration, or trial when there are no repeats), plus ``group_mean``, ``group_std``
and ``group_n`` over every COMPLETE trial with that value. Values of different tasks, datasets or metrics are
never averaged nor ranked against each other: when the sweep varies a :data:`STRATA` parameter (``task``,
``tasks``, ``dataset``, ``metric``) the groups include it even if not asked for, and the table says so.

``best`` is computed like ``value``: for a trial run per fold (``folds:``), the mean over its folds of each
fold's best (``orchestrate.best_value``), as ``value`` is the mean of the folds' objectives; otherwise the best
of its reported values and its final value. So ``best >= value`` for maximize (``<=`` for minimize).

A trial that runs its folds inside one process (``orchestrate.fold_values``/``fold_std``) shows
``value ± fold std`` and ``folds``.

GPU-hours: ``slot time (orchestrate.slot_s, else duration) × 1/k`` on a GPU slot shared by k trials (``gpu0.1`` …), 0 on CPU slots. Cost:
``orchestrate.cost_per_hour`` (price per GPU-hour, from a host inventory) × GPU-hours (× hours on CPU slots);
blank when the attribute is absent.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import storage as st
from orchestrator.faults import mask_url
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
ATTR_COST = st.ATTR_COST  # price per GPU-hour of the host (the controller writes it from the host inventory)
ATTR_WANDB_PATH = st.A + "wandb_path"  # entity/project/runs/id of an online run
ATTR_SLOT_S: str | None = getattr(st, "ATTR_GPU_S", None)  # written by newer controllers
ATTR_FOLDS: str | None = getattr(st, "ATTR_FOLDS", None)
ATTR_FOLD_STD: str | None = getattr(st, "ATTR_FOLD_STD", None)
ATTR_BEST_VALUE: str | None = getattr(st, "ATTR_BEST_VALUE", None)
_SKIP_ATTRS = (st.ATTR_STDERR, st.ATTR_POINT)  # large or unused here: not read by the fast path
NUMERIC_AGG = ("value", "best", "last", "best_epoch", "epochs")
SUMMED = ("duration_s", "gpu_hours", "cost")


# ----------------------------------------------------------------------------------------------- reading
@dataclass(slots=True)
class TrialRec:
    """One trial as read from the storage (either path)."""

    number: int
    state: str
    value: float | None
    start: datetime | None
    complete: datetime | None
    params: dict[str, Any]
    attrs: dict[str, Any]
    inter: dict[int, float] = field(
        default_factory=dict
    )  # the whole curve: only when loaded with curves=True
    n_steps: int = 0  # intermediate values reported
    best_step: int | None = None  # the first step with the best finite intermediate value
    best: float | None = None
    last_step: int | None = None
    last: float | None = None

    def summarise(self, maximize: bool) -> None:
        """Fill n_steps/best/last from ``inter`` (the Optuna-API path; SQL computes them on the RDB path)."""
        inter = self.inter
        self.n_steps = len(inter)
        if not inter:
            return
        self.last_step = max(inter)
        self.last = inter[self.last_step]
        finite = [(s, v) for s, v in inter.items() if math.isfinite(v)]
        if finite:
            if maximize:
                self.best_step, self.best = max(finite, key=lambda sv: (sv[1], -sv[0]))
            else:
                self.best_step, self.best = min(finite, key=lambda sv: (sv[1], sv[0]))


@dataclass
class StudyData:
    name: str
    direction: str  # "maximize" | "minimize"
    attrs: dict[str, Any]
    trials: list[TrialRec]

    @property
    def metric(self) -> str | None:
        info = self.attrs.get(st.ATTR_METRIC)
        return info.get("name") if isinstance(info, dict) else None

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.attrs.get(st.ATTR_SPEC)
        return spec if isinstance(spec, dict) else {}


def _rdb_kind(url: str) -> str | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return "sqlite"
    if url.startswith(("postgresql", "mysql")):
        return "sqlalchemy"
    return None


class _Conn:
    """A tiny read-only query helper over sqlite3 or SQLAlchemy (named ``:param`` style on both)."""

    def __init__(self, url: str) -> None:
        self.kind = _rdb_kind(url)
        if self.kind == "sqlite":
            import sqlite3

            path = Path(url[len("sqlite:///") :]).expanduser()
            if not path.exists():
                raise FileNotFoundError(path)
            self.db: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        else:
            import sqlalchemy

            if url.startswith("postgresql://"):
                url = "postgresql+psycopg2://" + url[len("postgresql://") :]
            self.engine = sqlalchemy.create_engine(url)
            self.db = self.engine.connect()
            self._text = sqlalchemy.text

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        if self.kind == "sqlite":
            return list(self.db.execute(sql, params or {}).fetchall())
        return list(self.db.execute(self._text(sql), params or {}).fetchall())

    def close(self) -> None:
        self.db.close()
        if self.kind != "sqlite":
            self.engine.dispose()


_DIST_CACHE: dict[str, tuple[str, list[Any] | None]] = {}


def _external(value: float, dist_json: str) -> Any:
    """An Optuna internal parameter value → the value the user sees (no optuna import)."""
    kind = _DIST_CACHE.get(dist_json)
    if kind is None:
        d = json.loads(dist_json)
        name = d.get("name", "")
        attrs = d.get("attributes", {})
        if "Categorical" in name:
            kind = ("cat", list(attrs.get("choices", [])))
        elif "Int" in name:
            kind = ("int", None)
        else:
            kind = ("float", None)
        _DIST_CACHE[dist_json] = kind
    if kind[0] == "cat":
        assert kind[1] is not None
        return kind[1][int(value)]
    if kind[0] == "int":
        return int(value)
    return float(value)


def _dt(v: Any) -> datetime | None:
    """An RDB datetime (naive UTC, as Optuna stores it) → an aware datetime."""
    if v is None:
        return None
    d = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def _load_rdb(url: str, names: list[str] | None, curves: bool = False) -> list[StudyData]:
    conn = _Conn(url)
    try:
        studies = conn.rows(
            "SELECT s.study_id, s.study_name, d.direction FROM studies s "
            "LEFT JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0 "
            "ORDER BY s.study_id"
        )
        chosen = [(sid, name, d) for sid, name, d in studies if names is None or name in names]
        if not chosen:
            return []
        ids = {f"s{i}": sid for i, (sid, _, _) in enumerate(chosen)}
        sin = "(" + ", ".join(f":{k}" for k in ids) + ")"
        sattrs: dict[int, dict[str, Any]] = {sid: {} for sid in ids.values()}
        for sid, key, vj in conn.rows(
            f"SELECT study_id, key, value_json FROM study_user_attributes WHERE study_id IN {sin}", ids
        ):
            sattrs[sid][key] = json.loads(vj)
        recs: dict[int, TrialRec] = {}
        by_study: dict[int, list[TrialRec]] = {sid: [] for sid in ids.values()}
        for tid, number, sid, state, ds, dc in conn.rows(
            "SELECT trial_id, number, study_id, state, datetime_start, datetime_complete FROM trials "
            f"WHERE study_id IN {sin} ORDER BY number",
            ids,
        ):
            state = state.name if hasattr(state, "name") else str(state)
            rec = TrialRec(number, state, None, _dt(ds), _dt(dc), {}, {})
            recs[tid] = rec
            by_study[sid].append(rec)
        join = f"JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id IN {sin}"
        for tid, value, vtype in conn.rows(
            f"SELECT x.trial_id, x.value, x.value_type FROM trial_values x {join} AND x.objective = 0", ids
        ):
            vtype = getattr(vtype, "name", vtype)
            recs[tid].value = float(value) if vtype == "FINITE" else _INF.get(str(vtype))
        for tid, name, value, dj in conn.rows(
            f"SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x {join} "
            "ORDER BY x.param_id",
            ids,
        ):
            recs[tid].params[name] = _external(value, dj)
        skip = {f"k{i}": k for i, k in enumerate(_SKIP_ATTRS)}
        kin = "(" + ", ".join(f":{k}" for k in skip) + ")"
        if conn.kind == "sqlite":  # one JSON object per trial, built by SQLite, parsed in one call
            found = conn.rows(
                "SELECT x.trial_id, '{' || group_concat(json_quote(x.key) || ':' || x.value_json, ',') || '}' "
                f"FROM trial_user_attributes x {join} AND x.key NOT IN {kin} GROUP BY x.trial_id",
                ids | skip,
            )
            objs = json.loads("[" + ",".join(r[1] for r in found) + "]")
            for (tid, _), obj in zip(found, objs, strict=True):
                recs[tid].attrs = obj
        else:
            found = conn.rows(
                "SELECT x.trial_id, x.key, x.value_json "
                f"FROM trial_user_attributes x {join} AND x.key NOT IN {kin}",
                ids | skip,
            )
            decoded = json.loads(
                "[" + ",".join(r[2] for r in found) + "]"
            )  # one parse, not one per attribute
            for (tid, key, _), value in zip(found, decoded, strict=True):
                recs[tid].attrs[key] = value
        for sid, _, direction in chosen:
            agg = "MAX" if str(getattr(direction, "name", direction)).upper() == "MAXIMIZE" else "MIN"
            # per trial: count, last step, best value (SQL aggregates), then the rows at the last/best step
            for tid, step, value, count, last_step, best in conn.rows(
                "SELECT x.trial_id, x.step, x.intermediate_value, a.n, a.ls, a.bv "
                "FROM trial_intermediate_values x JOIN ("
                f"SELECT y.trial_id AS tid, COUNT(*) AS n, MAX(y.step) AS ls, {agg}(y.intermediate_value) AS bv "
                "FROM trial_intermediate_values y JOIN trials t ON t.trial_id = y.trial_id "
                "WHERE t.study_id = :sid GROUP BY y.trial_id"
                ") a ON a.tid = x.trial_id AND (x.step = a.ls OR x.intermediate_value = a.bv)",
                {"sid": sid},
            ):
                rec = recs[tid]
                rec.n_steps = count
                if step == last_step:
                    rec.last_step, rec.last = step, (value if value is not None else math.nan)
                if best is not None and value == best and (rec.best_step is None or step < rec.best_step):
                    rec.best_step, rec.best = step, value
        if curves:
            for tid, step, value, vtype in conn.rows(
                "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type "
                f"FROM trial_intermediate_values x {join}",
                ids,
            ):
                if value is None:
                    vtype = getattr(vtype, "name", vtype)
                    value = _INF.get(str(vtype), math.nan)
                recs[tid].inter[step] = value
    finally:
        conn.close()
    out = []
    for sid, name, direction in chosen:
        d = getattr(direction, "name", direction) or "MINIMIZE"
        out.append(StudyData(name, str(d).lower(), sattrs[sid], by_study[sid]))
    return out


def _load_optuna(url: str, names: list[str] | None, curves: bool = True) -> list[StudyData]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = st.get_storage(url)
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if names is not None and summary.study_name not in names:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = []
        for t in study.get_trials(deepcopy=False):
            attrs = {k: v for k, v in t.user_attrs.items() if k not in _SKIP_ATTRS}
            value = t.values[0] if t.values else None
            trials.append(
                TrialRec(
                    t.number,
                    t.state.name,
                    value,
                    t.datetime_start,
                    t.datetime_complete,
                    dict(t.params),
                    attrs,
                    dict(t.intermediate_values),
                )
            )
        direction = study.directions[0].name.lower()
        for rec in trials:
            rec.summarise(direction == "maximize")
        out.append(StudyData(summary.study_name, direction, dict(study.user_attrs), trials))
    return out


def study_names(url: str) -> list[str]:
    if _rdb_kind(url):
        try:
            conn = _Conn(url)
            try:
                return [r[0] for r in conn.rows("SELECT study_name FROM studies ORDER BY study_id")]
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - not the schema we know: ask Optuna
            pass
    import optuna

    storage = st.get_storage(url)
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load(url: str, names: list[str] | None = None, curves: bool = False) -> list[StudyData]:
    """Every study (or those named) in the storage, read the fast way when the storage is an RDB.

    ``curves``: also every intermediate value (``TrialRec.inter``); the leaderboard needs only the per-trial
    summary of them (count, best, last), which SQL computes.
    """
    if _rdb_kind(url):
        try:
            return _load_rdb(url, names, curves)
        except FileNotFoundError:
            raise
        except Exception:  # noqa: BLE001 - unknown schema version etc.: the Optuna API always works
            pass
    return _load_optuna(url, names, curves)


# -------------------------------------------------------------------------------------------- trial rows
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


def _wandb_cell(row: dict[str, Any]) -> Any:
    """entity/project/runs/id when known, else the offline run folder, else the run id."""
    if row.get("wandb"):
        return row["wandb"]
    run_dir = row.get("_run_dir")
    if run_dir:
        root = os.path.join(run_dir, "wandb")
        try:
            found = sorted(p for p in os.listdir(root) if p.startswith(("offline-run-", "run-")))
        except OSError:
            found = []
        if found:
            return os.path.join(root, found[-1])
    return row.get("_wandb_id")


# --------------------------------------------------------------------------------------------- the build
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
        if sweep:
            names = study_names(storage_url)
            missing = [s for s in sweep if s not in names]
            if missing:
                raise UsageError(
                    f"no sweep named {', '.join(map(repr, missing))} in {mask_url(storage_url)}",
                    hint="sweeps there: " + (", ".join(names) or "none yet — run `orchestrate launch` first"),
                )
        studies = load(storage_url, sweep or None)
    conds = [_parse_where(w) for w in where or []]
    wanted = {s.upper() for s in states} if states else None
    for s in sorted(wanted or ()):
        if s not in STATE_ORDER:
            raise UsageError(
                f"--state {s.lower()!r}: no such trial state", hint=_suggest(s, list(STATE_ORDER))
            )
    tables = []
    seen_names: set[str] = set()  # every parameter and column name, for --where
    for sd in studies:
        all_rows = trial_rows(sd)
        seen_names.update(k for r in all_rows for k in (*r["_params"], *r) if not k.startswith("_"))
        seen_names.update([sd.metric] if sd.metric and all_rows else [])
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
        keys: list[str] | None = None
        note = None
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
            if added:
                note = (
                    f"also grouped by {', '.join(added)}: the sweep spans several of them, and values of "
                    "different tasks/datasets/metrics are never averaged"
                )
            rows = group(rows, trial_level, keys, sd.direction)
            params = keys + [p for p in params if p not in keys]
        elif strata(params):  # a sweep over tasks/datasets/metrics: one ranking per task, never one across
            split = strata(params)
            rows = rank_within(rows, split, sd.direction)
            note = f"ranked within each {' × '.join(split)}: values of different ones are not comparable"
        else:
            rows = rank(rows, sd.direction)
        if sort:
            rows = _sorted(rows, sort)
        if top:
            rows = [r for r in rows if r["rank"] <= top] if note and not keys else rows[:top]
        for r in rows:
            r["wandb"] = _wandb_cell(r)
        tables.append(
            {
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
        )
    for name, _, _ in conds:
        if seen_names and name not in seen_names:
            raise UsageError(
                f"--where: no parameter or column {name!r}", hint=_suggest(name, sorted(seen_names))
            )
    return tables


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


# ---------------------------------------------------------------------------------------------- rendering
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
    if fmt == "csv":
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
    if fmt == "markdown":
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
    if fmt in ("table", "plain"):
        return plain(tables, wanted, wide)
    raise UsageError(f"--format {fmt!r}: use table, csv, json or markdown")


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
    from orchestrator.wandb_env import logged_in

    if not logged_in():
        raise UsageError(
            "--source wandb needs W&B credentials, and none are set up on this machine",
            hint="run `wandb login` (or set WANDB_API_KEY); without them, read the local study "
            "with the default --source optuna",
        )
    if not project:
        raise UsageError("--source wandb needs --project ENTITY/PROJECT")
    try:
        import wandb

        runs = list(wandb.Api(timeout=30).runs(project))
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown project
        raise UsageError(f"W&B project {project!r} cannot be read: {exc}") from exc
    state_map = {"finished": "COMPLETE", "running": "RUNNING", "killed": "PRUNED"}
    groups: dict[str, list[TrialRec]] = {}
    for run in runs:
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, (int, float))}
        name = run.group or "(no group)"
        members = groups.setdefault(name, [])
        state = state_map.get(run.state, "FAIL")
        members.append(
            TrialRec(
                len(members),
                state,
                _num(summary.get(metric)) if metric and state == "COMPLETE" else None,
                None,
                None,
                _flatten({k: v for k, v in dict(run.config).items() if not k.startswith("_")}),
                {st.ATTR_SUMMARY: summary, ATTR_WANDB_PATH: "/".join(run.path[:2]) + "/runs/" + run.path[2]},
            )
        )
    studies = [
        StudyData(name, goal, {st.ATTR_METRIC: {"name": metric, "goal": goal}}, trials)
        for name, trials in groups.items()
        if not sweep or name in sweep
    ]
    return build("", studies=studies, **kw)
