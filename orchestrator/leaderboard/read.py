"""Reading a leaderboard's input: the Optuna storage (or a W&B project) → :class:`StudyData` records.

For an RDB storage (``sqlite:///…``, ``postgresql://…``, ``mysql://…``) the Optuna tables are read directly in
a few SQL queries (stdlib ``sqlite3`` for SQLite, SQLAlchemy otherwise): ``study.get_trials()`` builds one
FrozenTrial at a time and takes many seconds on 10,000 trials. Journal storages, and any RDB whose schema differs
from the one these queries expect, are read through the Optuna API instead. Also the other reads the leaderboard
does: a trial's offline W&B run folder (:func:`_wandb_cell`) and, for ``--source wandb``, a W&B project's runs
(:func:`load_wandb`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import storage as st
from orchestrator.trial.errors import UsageError

ATTR_COST = st.ATTR_COST  # price per GPU-hour of the host (the controller writes it from the host inventory)
ATTR_WANDB_PATH = st.A + "wandb_path"  # entity/project/runs/id of an online run
ATTR_SLOT_S: str | None = getattr(st, "ATTR_GPU_S", None)  # written by newer controllers
ATTR_FOLDS: str | None = getattr(st, "ATTR_FOLDS", None)
ATTR_FOLD_STD: str | None = getattr(st, "ATTR_FOLD_STD", None)
ATTR_BEST_VALUE: str | None = getattr(st, "ATTR_BEST_VALUE", None)
_SKIP_ATTRS = (st.ATTR_STDERR, st.ATTR_POINT)  # large or unused here: not read by the fast path


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
        sattrs = _study_attrs(conn, ids)
        recs, by_study = _trial_recs(conn, ids)
        _trial_values(conn, ids, recs)
        _trial_params(conn, ids, recs)
        _trial_attrs(conn, ids, recs)
        for sid, _, direction in chosen:
            _trial_steps(conn, sid, direction, recs)
        if curves:
            _trial_curves(conn, ids, recs)
    finally:
        conn.close()
    out = []
    for sid, name, direction in chosen:
        d = getattr(direction, "name", direction) or "MINIMIZE"
        out.append(StudyData(name, str(d).lower(), sattrs[sid], by_study[sid]))
    return out


def _in(ids: dict[str, Any]) -> str:
    """``(:s0, :s1, …)``: the named parameters of an ``IN`` over the chosen studies."""
    return "(" + ", ".join(f":{k}" for k in ids) + ")"


def _join(ids: dict[str, Any]) -> str:
    """Rows ``x`` of a per-trial table that belong to the chosen studies."""
    return f"JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id IN {_in(ids)}"


def _study_attrs(conn: _Conn, ids: dict[str, Any]) -> dict[int, dict[str, Any]]:
    sattrs: dict[int, dict[str, Any]] = {sid: {} for sid in ids.values()}
    for sid, key, vj in conn.rows(
        f"SELECT study_id, key, value_json FROM study_user_attributes WHERE study_id IN {_in(ids)}", ids
    ):
        sattrs[sid][key] = json.loads(vj)
    return sattrs


def _trial_recs(conn: _Conn, ids: dict[str, Any]) -> tuple[dict[int, TrialRec], dict[int, list[TrialRec]]]:
    """Every trial of the chosen studies (number, state, timestamps): by trial id, and per study in order."""
    recs: dict[int, TrialRec] = {}
    by_study: dict[int, list[TrialRec]] = {sid: [] for sid in ids.values()}
    for tid, number, sid, state, ds, dc in conn.rows(
        "SELECT trial_id, number, study_id, state, datetime_start, datetime_complete FROM trials "
        f"WHERE study_id IN {_in(ids)} ORDER BY number",
        ids,
    ):
        state = state.name if hasattr(state, "name") else str(state)
        rec = TrialRec(number, state, None, _dt(ds), _dt(dc), {}, {})
        recs[tid] = rec
        by_study[sid].append(rec)
    return recs, by_study


def _trial_values(conn: _Conn, ids: dict[str, Any], recs: dict[int, TrialRec]) -> None:
    for tid, value, vtype in conn.rows(
        f"SELECT x.trial_id, x.value, x.value_type FROM trial_values x {_join(ids)} AND x.objective = 0", ids
    ):
        vtype = getattr(vtype, "name", vtype)
        recs[tid].value = float(value) if vtype == "FINITE" else _INF.get(str(vtype))


def _trial_params(conn: _Conn, ids: dict[str, Any], recs: dict[int, TrialRec]) -> None:
    for tid, name, value, dj in conn.rows(
        f"SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x {_join(ids)} "
        "ORDER BY x.param_id",
        ids,
    ):
        recs[tid].params[name] = _external(value, dj)


def _trial_attrs(conn: _Conn, ids: dict[str, Any], recs: dict[int, TrialRec]) -> None:
    """The trials' user attributes but the large ones (:data:`_SKIP_ATTRS`), parsed in one ``json.loads``."""
    skip = {f"k{i}": k for i, k in enumerate(_SKIP_ATTRS)}
    kin = "(" + ", ".join(f":{k}" for k in skip) + ")"
    join = _join(ids)
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
            f"SELECT x.trial_id, x.key, x.value_json FROM trial_user_attributes x {join} AND x.key NOT IN {kin}",
            ids | skip,
        )
        decoded = json.loads("[" + ",".join(r[2] for r in found) + "]")  # one parse, not one per attribute
        for (tid, key, _), value in zip(found, decoded, strict=True):
            recs[tid].attrs[key] = value


def _trial_steps(conn: _Conn, sid: int, direction: Any, recs: dict[int, TrialRec]) -> None:
    """Per trial of study ``sid``: the count of intermediate values, the last one and the best one."""
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


def _trial_curves(conn: _Conn, ids: dict[str, Any], recs: dict[int, TrialRec]) -> None:
    """Every intermediate value (``TrialRec.inter``): the report's learning curves."""
    for tid, step, value, vtype in conn.rows(
        "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type "
        f"FROM trial_intermediate_values x {_join(ids)}",
        ids,
    ):
        if value is None:
            vtype = getattr(vtype, "name", vtype)
            value = _INF.get(str(vtype), math.nan)
        recs[tid].inter[step] = value


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


# ----------------------------------------------------------------------------------------- stored values
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


# ---------------------------------------------------------------------------------------------- W&B runs
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


# ------------------------------------------------------------------------------------------ --source wandb
def load_wandb(
    project: str | None, sweep: list[str] | None, metric: str | None, goal: str
) -> list[StudyData]:
    """A W&B project's runs as studies (group = sweep), through ``wandb.Api()`` (online only).

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
    return [
        StudyData(name, goal, {st.ATTR_METRIC: {"name": metric, "goal": goal}}, trials)
        for name, trials in groups.items()
        if not sweep or name in sweep
    ]
