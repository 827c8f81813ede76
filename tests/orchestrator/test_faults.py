"""The fault classifier and the controller's pause (orchestrator/faults.py), on real errors: a SQLite database
locked by another connection, a PostgreSQL port nobody listens on, /dev/full, a read-only directory."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from orchestrator import faults as fl
from tests.orchestrator.remote.conftest import free_port


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


class LockedStudy:
    """An Optuna study in SQLite with one running trial, under an exclusive lock held by another connection."""

    def __init__(self, path: Path) -> None:
        url = f"sqlite:///{path}"
        self.storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}})
        self.trial = optuna.create_study(storage=self.storage, study_name="s").ask()
        self.holder = sqlite3.connect(path, isolation_level=None)
        self.holder.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.holder.in_transaction:
            self.holder.execute("COMMIT")


@pytest.fixture
def locked_db(tmp_path: Path):
    locked = LockedStudy(tmp_path / "study.db")
    try:
        yield locked
    finally:
        locked.release()
        locked.holder.close()


def test_locked_sqlite_is_transient_through_optunas_wrapping(locked_db: LockedStudy) -> None:
    storage, trial = locked_db.storage, locked_db.trial
    exc = _raised(lambda: storage.set_trial_user_attr(trial._trial_id, "k", 1))
    assert isinstance(exc, optuna.exceptions.StorageInternalError)  # Optuna's wrapper hides the cause …
    assert fl.transient(exc) == "OperationalError: database is locked"  # … the classifier finds it
    assert fl.fault_of(exc) == (fl.STORAGE, "OperationalError: database is locked")


def test_postgres_refusing_connections_is_transient() -> None:
    pytest.importorskip("psycopg2")
    engine = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    exc = _raised(engine.connect)
    cause = fl.transient(exc)
    assert cause is not None and cause.startswith("OperationalError: ") and "refused" in cause


def test_full_and_read_only_disks_are_transient(tmp_path: Path) -> None:
    def write_full() -> None:
        with open("/dev/full", "w") as fh:  # the kernel's always-full device: a real ENOSPC
            fh.write("x")

    exc = _raised(write_full)
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    assert fl.transient(exc) == "OSError: [Errno 28] No space left on device"
    assert fl.fault_of(exc) == (fl.RUNS_DIR, "OSError: [Errno 28] No space left on device")
    assert fl.fault_of(exc, storage_error=True) == (fl.STORAGE, "OSError: [Errno 28] No space left on device")
    for code in (errno.EROFS, errno.EACCES, errno.EDQUOT):
        assert fl.transient(OSError(code, "no")) is not None
    assert fl.probe_dir(tmp_path) is None  # a writable directory takes the probe (and keeps no file)
    assert list(tmp_path.iterdir()) == []


def test_real_errors_are_not_transient(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "x.db")
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        dup = _raised(lambda: conn.execute(sa.text("INSERT INTO t VALUES (1)")))
        conn.rollback()
        missing = _raised(lambda: conn.execute(sa.text("SELECT * FROM no_such")))
    assert isinstance(dup, sa.exc.IntegrityError) and fl.transient(dup) is None  # a bug, not a fault
    assert isinstance(missing, sa.exc.OperationalError) and fl.transient(missing) is None  # wrong schema
    assert fl.transient(ValueError("x")) is None
    assert fl.transient(FileNotFoundError(errno.ENOENT, "gone")) is None
    chained = _raised(lambda: _reraise(KeyError("k")))
    assert fl.transient(chained) is None


def _reraise(exc: BaseException) -> None:
    try:
        raise exc
    except BaseException as inner:
        raise RuntimeError("wrapped") from inner


def test_mask_url() -> None:
    assert fl.mask_url("postgresql://me:s3cret@db:5432/faces") == "postgresql://me:***@db:5432/faces"
    assert fl.mask_url("postgresql://me@db/faces") == "postgresql://me@db/faces"
    assert fl.mask_url("sqlite:///runs/orchestrate.db?timeout=5") == "sqlite:///runs/orchestrate.db?timeout=5"
    assert fl.mask_url("journal:///tmp/j.log") == "journal:///tmp/j.log"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pause_backs_off_keeps_order_and_resumes(locked_db: LockedStudy) -> None:
    storage, trial = locked_db.storage, locked_db.trial
    clock, said, shown = _Clock(), [], []
    pause = fl.Pause(
        {fl.STORAGE: "sqlite:///study.db"}, say=said.append, status=shown.append, clock=clock, first=1, cap=30
    )
    done: list[str] = []

    def write(key: str):
        def op() -> None:
            storage.set_trial_user_attr(trial._trial_id, key, 1)  # fails while the lock is held
            done.append(key)

        return op

    assert not pause.run(fl.STORAGE, "record trial 0", write("a"), result=True)
    assert pause.blocking() and pause.blocking(fl.STORAGE) and not pause.blocking(fl.RUNS_DIR)
    assert "paused: storage sqlite:///study.db" in said[-1] and "database is locked" in said[-1]
    assert "retrying in 1s" in said[-1] and "1 finished result(s) waiting" in said[-1]
    assert shown[-1] and shown[-1].startswith("PAUSED")
    assert not pause.run(fl.STORAGE, "record trial 1", write("b"), result=True)  # queued, not even tried
    assert pause.waiting_results() == 2 and not pause.due()
    delays = []
    for _ in range(7):  # still locked: 1 s, doubling, at most 30 s
        clock.now += pause.seconds_to_retry() or 0.0
        assert pause.due()
        delays.append(pause.faults[fl.STORAGE].delay)
        pause.retry()
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert "next retry in 30s" in said[-1] and done == []
    locked_db.release()
    clock.now += 30
    pause.retry()
    assert done == ["a", "b"]  # in the order they failed
    assert not pause.blocking() and not pause.ops and shown[-1] is None
    assert "is back after" in said[-1]
    assert pause.run(fl.STORAGE, "record trial 2", write("c"))  # back: done at once
