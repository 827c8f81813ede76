"""Optuna storage from a URL (Optuna's own ``get_storage`` pattern) and the attribute names we keep on trials."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from orchestrator import optuna_compat
from orchestrator.faults import mask_url
from orchestrator.trial.errors import RunError, UsageError

DEFAULT_STORAGE = "sqlite:///runs/orchestrate.db"

# User attributes orchestrate writes on every trial (the leaderboard reads them; plain Optuna studies lack them).
A = "orchestrate."
ATTR_POINT = A + "point"  # canonical JSON of the flat parameters: the identity of a grid point / retry
ATTR_PARAMS = A + "params"  # the resolved (nested) parameters the child got
ATTR_ATTEMPT = A + "attempt"
ATTR_CONTROLLER = A + "controller"  # host:pid of the controller that runs it
ATTR_INTERRUPTED = A + "interrupted"  # FAIL because the controller stopped it (not counted as an attempt)
ATTR_REASON = A + "reason"
ATTR_STDERR = A + "stderr_tail"
ATTR_EPOCHS = A + "epochs"
ATTR_BEST_STEP = A + "best_step"
ATTR_LAST_VALUE = A + "last_value"
ATTR_BEST_VALUE = A + "best_value"  # folds: mean over folds of each fold's best (the leaderboard's best)
ATTR_DURATION = A + "duration_s"  # wall time of the trial
ATTR_GPU_S = A + "slot_s"  # slot time of all its jobs (GPU-seconds when slots are GPUs)
ATTR_COST = A + "cost_per_hour"  # price per GPU-hour of the host the trial ran on (from the host inventory)
ATTR_OVERRIDE = A + "override"  # parameters changed for a retry (e.g. half the batch size after a CUDA OOM)
ATTR_STARTUP = A + "startup_s"  # slot given → first line from the child (imports, data, model set-up)
ATTR_FOLDS = A + "fold_values"  # {fold: value} when the sweep runs folds
ATTR_FOLD_STD = A + "fold_std"
ATTR_RUN_DIR = A + "run_dir"
ATTR_SLOT = A + "slot"
ATTR_HOST = A + "host"
ATTR_SUMMARY = A + "summary"
ATTR_WANDB = A + "wandb_run"
ATTR_NO_METRIC = A + "no_metric"
ATTR_IMPORTED = A + "imported_from"  # the result.json a relaunch recorded the trial from (storage was down)
ATTR_METRIC = A + "metric"  # study-level: {"name", "goal"}
ATTR_SPEC = A + "spec"  # study-level: the sweep as described by --dry-run


def _ensure_sqlite_parent(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _query(url: str) -> dict[str, Any]:
    """The query parameters of a SQLAlchemy URL (``?timeout=5``)."""
    try:
        from sqlalchemy.engine import make_url

        return dict(make_url(url).query)
    except Exception:
        return {}


def key_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The trial's test metrics (``test/acc``, ``test/mae`` …) as their own user attributes: optuna-dashboard
    sorts and filters trials by user attributes, not by keys inside ``orchestrate.summary``."""
    out: dict[str, float] = {}
    for k, v in summary.items():
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if str(k).startswith("test/") and number and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def set_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction (see ``optuna_compat``)."""
    optuna_compat.set_user_attrs(trial, attrs)


def _tune_sqlite(storage: Any) -> None:
    """Write-ahead log + ``synchronous=NORMAL``: a commit no longer waits for an fsync (the controller commits
    several times per trial event), readers (``leaderboard``, ``status``) never block the writer, and a
    crash still leaves a consistent database (at worst the last commits are lost; results are also on disk).
    """
    from sqlalchemy import event, text

    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", _pragmas)
    storage.engine.dispose()  # connections opened while Optuna created the schema lack the pragma
    try:
        with storage.engine.connect() as conn:
            conn.execute(text("PRAGMA journal_mode=WAL"))  # persistent: stored in the database file
    except Exception:  # a read-only or network file system: keep SQLite's defaults
        pass


def get_storage(url: str | None = None) -> Any:
    """Turn a URL into an Optuna storage.

    - ``sqlite:///runs/orchestrate.db`` (default; relative to the current directory), ``sqlite:////abs/path.db``
    - ``postgresql://user@host:port/db`` (or ``postgresql+psycopg2://``) for teams sharing one study
    - ``journal:///path/to/file.log`` for Optuna's append-only journal file
    """
    import optuna

    optuna_compat.cache_alembic_scripts()  # (an RDB storage reads Optuna's migration scripts once per process)
    url = url or DEFAULT_STORAGE
    try:
        if url.startswith("journal://"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            path = url[len("journal://") :]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        if url.startswith("sqlite"):
            _ensure_sqlite_parent(url)
            # SQLite's busy timeout (10 s): how long a write waits for another writer's lock before "database is
            # locked" (then the controller pauses and retries, see faults.py); `?timeout=S` in the URL sets it
            connect_args = {} if "timeout" in _query(url) else {"timeout": 10}
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args})
            _tune_sqlite(storage)
            return storage
        if url.startswith(("postgresql", "mysql")):
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg2://" + url[len("postgresql://") :]
            # two first launches on an empty database race to create Optuna's tables: the loser sees an
            # IntegrityError (pg_type) — the tables exist by then, so try again
            for attempt in range(5):
                # a server that does not answer fails a connection in 10 s (not the OS's minutes), so the
                # controller pauses instead of hanging; `?connect_timeout=S` in the URL sets it
                connect = {} if "connect_timeout" in _query(url) else {"connect_timeout": 10}
                kwargs = {
                    "pool_pre_ping": True,
                    **({"connect_args": connect} if url.startswith("postgres") else {}),
                }
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
                except Exception as exc:
                    if "IntegrityError" not in type(exc).__name__ + str(exc) or attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
    except PermissionError as exc:
        raise RunError(
            f"storage {mask_url(url)}: {exc}", hint="check that the runs directory is writable"
        ) from exc
    except Exception as exc:  # sqlalchemy OperationalError etc.: report, don't dump a traceback
        raise RunError(
            f"storage {mask_url(url)} cannot be opened: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            hint="check the URL (e.g. sqlite:///runs/orchestrate.db or postgresql://user@host:5432/db) and that the server is up",
        ) from exc
    raise UsageError(
        f"storage URL {url!r} is not supported",
        hint="use sqlite:///path.db, postgresql://user@host:port/db or journal:///path.log",
    )


NOT_A_STUDY = "not an orchestrate/Optuna study"
_OPTUNA_TABLES = {"studies", "trials", "version_info"}


def check_study_storage(url: str) -> None:
    """For read-only commands (leaderboard, status, report): raise UsageError (exit 2) unless ``url`` already
    holds Optuna's tables. Never creates, migrates or writes anything: a missing SQLite file is not created, an
    empty or foreign SQLite file is opened read-only and left byte for byte as it was (Optuna itself would
    create its 14 tables in it and switch it to WAL mode)."""
    hint = "pass the --storage of a launch (default sqlite:///runs/orchestrate.db)"
    if url.startswith("journal://"):
        path = Path(url[len("journal://") :]).expanduser()
        if not path.is_file():
            raise UsageError(f"no storage at {path}", hint=hint)
        return
    if url.startswith("sqlite"):
        import sqlite3

        try:
            from sqlalchemy.engine import make_url

            database = make_url(url).database
        except Exception as exc:
            raise UsageError(f"storage URL {mask_url(url)!r} cannot be read: {exc}", hint=hint) from None
        if not database or database == ":memory:":
            raise UsageError(f"storage {mask_url(url)} names no database file", hint=hint)
        path = Path(database).expanduser()
        if not path.exists():
            raise UsageError(
                f"no storage at {path}",
                hint="run `orchestrate launch sweeps.yaml` first, or pass --storage URL",
            )
        if not path.is_file():
            raise UsageError(f"storage {path} is not a file: {NOT_A_STUDY}", hint=hint)
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                tables = {
                    row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise UsageError(f"{path}: {NOT_A_STUDY} ({exc})", hint=hint) from None
        if not tables >= _OPTUNA_TABLES:
            what = "an empty file" if path.stat().st_size == 0 else "no Optuna tables in it"
            raise UsageError(f"{path}: {NOT_A_STUDY} ({what})", hint=hint)
        return
    if url.startswith(("postgresql", "mysql")):
        try:
            from sqlalchemy import create_engine, inspect

            engine_url = (
                "postgresql+psycopg2://" + url[len("postgresql://") :]
                if url.startswith("postgresql://")
                else url
            )
            engine = create_engine(
                engine_url, connect_args={"connect_timeout": 10} if "postgres" in url else {}
            )
            try:
                tables = set(inspect(engine).get_table_names())
            finally:
                engine.dispose()
        except Exception:
            return  # unreachable or not configured: opening it reports that, with the URL masked
        if not tables >= _OPTUNA_TABLES:
            raise UsageError(f"storage {mask_url(url)}: {NOT_A_STUDY} (no Optuna tables in it)", hint=hint)


def _start_ticks(pid: int) -> str:
    """The process start time (clock ticks since boot) from /proc, so a recycled PID is not mistaken."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "?"


ENV_HOST_ID = "ORCHESTRATE_HOST_ID"


def host_id() -> str:
    """This machine's name in controller ids: ``$ORCHESTRATE_HOST_ID`` when set (containers whose hostnames
    collide, and tests standing in for another machine), else the hostname."""
    import socket

    return os.environ.get(ENV_HOST_ID, "").strip() or socket.gethostname()


def controller_id() -> str:
    """``host:pid:start`` of this controller process."""
    return f"{host_id()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_alive(owner: str | None, leases: Any = None, claim_age: float | None = None) -> bool:
    """Whether the controller named ``host:pid:start`` still runs.

    On this host: by its pid and process start time. The current process counts as dead: a trial it left
    RUNNING belongs to an earlier, finished launch. On another host: by its heartbeat in the study's database
    (``leases``, an :class:`orchestrator.leases.Leases`; ``claim_age`` is the age of the claim being looked at,
    for an owner without a heartbeat row); without ``leases`` (a journal storage) it counts as alive.
    """
    if not owner or owner.count(":") < 2:
        return False
    host, pid_s, start = owner.rsplit(":", 2)
    if host != host_id():
        return True if leases is None else bool(leases.alive(owner, claim_age))
    try:
        pid = int(pid_s)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    if pid == os.getpid():
        return False
    return _start_ticks(pid) == start
