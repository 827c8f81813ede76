"""Storage and disk faults during a sweep: which errors are worth waiting out, and the controller's pause.

A sweep runs for hours. In that time the study's database may stay locked by another writer beyond SQLite's busy
timeout, a PostgreSQL server may restart, the disk holding the runs directory may fill up or be remounted
read-only. None of these is a trial's fault, and none may cost a finished result.

- ``transient(exc)`` says whether an exception is such a fault — walking its causes, since Optuna wraps
  SQLAlchemy's errors, which wrap the driver's — and gives its cause in one line (``None``: a real error).
- ``Pause`` is the controller's state while a fault lasts: per resource (``storage``, ``runs dir``) the fault
  and its back-off (1 s, doubling, at most 30 s), and the operations that failed (recording a finished trial,
  writing its ``result.json`` …), kept in order and retried until they succeed. While a resource is paused no
  new trial starts; running trials go on. When the back-off is over the queued operations are retried; with
  none queued, the next real operation is the probe. The first one that succeeds ends the pause.

No heavy imports at module level (``orchestrate --help`` stays instant).
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

STORAGE = "storage"
RUNS_DIR = "runs dir"

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0

# a full, read-only or unwritable disk, an I/O error, a network file system gone away: wait, don't fail
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE}
)
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPIPE,
    }
)

# what a database says when it is busy, full or away (SQLite, PostgreSQL, MySQL)
_TRANSIENT_TEXT = re.compile(
    r"database is locked|database table is locked|disk I/O error|database or disk is full|unable to open "
    r"database|readonly database|could not connect|connection refused|connection (?:reset|timed out)|"
    r"server closed the connection|terminating connection|the database system is|no connection to the server|"
    r"connection already closed|SSL SYSCALL|lost connection|server has gone away|too many connections|"
    r"could not translate host name|timeout expired|Temporary failure",
    re.IGNORECASE,
)
# errors a retry cannot fix: a wrong schema or URL, bad credentials, a corrupt file
_PERMANENT_TEXT = re.compile(
    r"no such (?:table|column)|syntax error|does not exist|malformed|not a database|authentication failed|"
    r"permission denied for|password",
    re.IGNORECASE,
)
_DRIVERS = ("sqlite3", "psycopg2", "psycopg", "pymysql", "MySQLdb", "mysql")
# what a process that could not write says (its stderr tail, when the disk took that much)
DISK_TEXT = re.compile(
    r"No space left on device|Read-only file system|Disk quota exceeded|ENOSPC|EROFS|EDQUOT"
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and a SQLAlchemy error's driver exception (``.orig``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [
            x for x in (getattr(e, "orig", None), e.__cause__, e.__context__) if isinstance(x, BaseException)
        ]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].strip() if text else ""


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (the driver's message for a SQLAlchemy error)."""
    orig = getattr(e, "orig", None)
    if isinstance(orig, BaseException):
        e = orig
    text = _first_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def transient(exc: BaseException) -> str | None:
    """The one-line cause when ``exc`` is a storage or disk fault worth waiting out; None for a real error."""
    try:
        import sqlalchemy.exc as sa
    except ImportError:  # pragma: no cover - SQLAlchemy comes with Optuna
        sa = None  # type: ignore[assignment]
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS | NETWORK_ERRNOS:
            return one_line(e)
        driver = type(e).__module__.split(".")[0] in _DRIVERS
        is_sa = sa is not None and isinstance(e, sa.SQLAlchemyError)
        if not (driver or is_sa):
            continue
        message = str(getattr(e, "orig", None) or e)
        if _PERMANENT_TEXT.search((message.strip().splitlines() or [""])[0]):
            return None
        if sa is not None and isinstance(
            e, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)
        ):
            return one_line(e)
        if driver and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return one_line(e)
        if _TRANSIENT_TEXT.search(message):
            return one_line(e)
    return None


def mask_url(url: str) -> str:
    """A storage URL fit to print: its password replaced by ``***``."""
    if "@" not in url:
        return url  # no credentials (sqlite:///…, journal://…): no need to import SQLAlchemy to say so
    try:
        from sqlalchemy.engine import make_url

        if "://" in url and not url.startswith("journal://"):
            return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not a SQLAlchemy URL: mask ``user:password@`` by hand
        pass
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


@dataclass
class Fault:
    """A resource that failed: what, where, why, since when, and when it is tried again."""

    resource: str
    where: str
    cause: str
    during: str
    since: float
    delay: float
    next_at: float
    waiting: bool = True  # False once the back-off is over: the next operation on it is the probe


@dataclass
class _Op:
    resource: str
    label: str
    fn: Callable[[], None]
    result: bool  # a finished trial's result (what the messages count)


class Pause:
    """The controller's pause while the storage or the runs directory fails (see the module docstring).

    ``say`` gets one line per change (paused, still failing, back); ``status`` (optional) gets a one-line
    summary while paused and None when not, for the live view.
    """

    def __init__(
        self,
        where: dict[str, str],
        say: Callable[[str], None],
        status: Callable[[str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        first: float = FIRST_DELAY_S,
        cap: float = MAX_DELAY_S,
        fatal: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.where = where
        self.say = say
        self.status = status
        self.clock = clock
        self.first = first
        self.cap = cap
        self.fatal = fatal  # errors an operation raises that must stop the controller, not be reported
        self.faults: dict[str, Fault] = {}
        self.ops: list[_Op] = []
        self._seen: dict[str, tuple[float, str]] = {}  # resource → (wall time it last failed, cause)
        self.recovered_s: list[float] = []  # how long each pause lasted (fault → back)

    # ----- state -----
    def blocking(self, resource: str | None = None) -> bool:
        """Whether ``resource`` (or any) is paused: nothing new starts, its operations are queued."""
        if resource is None:
            return any(f.waiting for f in self.faults.values())
        fault = self.faults.get(resource)
        return fault is not None and fault.waiting

    def waiting_results(self) -> int:
        return sum(1 for op in self.ops if op.result)

    def seconds_to_retry(self) -> float | None:
        due = [f.next_at for f in self.faults.values() if f.waiting]
        return max(0.0, min(due) - self.clock()) if due else None

    def failed_since(self, resource: str, since: float) -> str | None:
        """The cause when ``resource`` failed at any time after ``since`` (wall clock, ``time.time()``)."""
        fault = self.faults.get(resource)
        if fault is not None:
            return fault.cause
        seen = self._seen.get(resource)
        return seen[1] if seen is not None and seen[0] >= since else None

    def due(self) -> bool:
        wait = self.seconds_to_retry()
        return wait is not None and wait <= 0

    # ----- operations -----
    def run(self, resource: str, label: str, fn: Callable[[], None], result: bool = False) -> bool:
        """Do ``fn`` now, or queue it while ``resource`` is paused; a fault queues it and pauses. True: done."""
        op = _Op(resource, label, fn, result)
        if self.blocking(resource):
            self.ops.append(op)
            self._show()
            return False
        try:
            fn()
        except Exception as exc:
            cause = transient(exc)
            if cause is None:
                if isinstance(exc, self.fatal):
                    raise
                self.say(f"could not {label}: {one_line(exc)}")
                return False
            self.ops.append(op)
            self.trip(resource, cause, label)
            return False
        self.ok(resource)
        return True

    def defer(self, resource: str, label: str, fn: Callable[[], None], result: bool = False) -> None:
        """Queue ``fn`` to run when ``resource`` is back (done now when it is not paused)."""
        if resource not in self.faults:
            self.run(resource, label, fn, result)
            return
        self.ops.append(_Op(resource, label, fn, result))
        self._show()

    def trip(self, resource: str, cause: str, during: str) -> None:
        """An operation on ``resource`` failed with a transient fault: pause it (or back off further)."""
        now = self.clock()
        self._seen[resource] = (time.time(), cause)
        fault = self.faults.get(resource)
        if fault is None:
            fault = Fault(
                resource, self.where.get(resource, ""), cause, during, now, self.first, now + self.first
            )
            self.faults[resource] = fault
            self.say(
                f"paused: {resource} {fault.where} failed while trying to {during}: {cause} — running trials go "
                f"on, no new trial starts{self._waiting_text()}; retrying in {fault.delay:.0f}s"
            )
        else:  # still failing: back off further
            fault.delay = min(self.cap, fault.delay * 2)
            fault.cause, fault.waiting, fault.next_at = cause, True, now + fault.delay
            self.say(
                f"still paused: {resource} {fault.where}: {cause}{self._waiting_text()}; "
                f"next retry in {fault.delay:.0f}s"
            )
        self._show()

    def ok(self, resource: str, recorded: int = 0) -> None:
        """An operation on ``resource`` succeeded: if it was paused, it is back."""
        fault = self.faults.get(resource)
        if fault is None:
            return
        if any(op.resource == resource for op in self.ops):  # it works again: retry what waits, now
            fault.waiting, fault.next_at = True, self.clock()
            return
        del self.faults[resource]
        self._seen[resource] = (time.time(), fault.cause)
        took = self.clock() - fault.since
        self.recovered_s.append(took)
        done = f"{recorded} waiting result(s) recorded, " if recorded else ""
        self.say(f"{resource} {fault.where} is back after {took:.1f}s: {done}starting trials again")
        self._show()

    def retry(self, force: bool = False) -> None:
        """Retry the queued operations of every paused resource whose back-off is over (``force``: all now)."""
        now = self.clock()
        for resource, fault in list(self.faults.items()):
            if not fault.waiting or (not force and now < fault.next_at):
                continue
            fault.waiting = False  # from here on an operation on it is a probe
            recorded = 0
            for op in [op for op in self.ops if op.resource == resource]:
                try:
                    op.fn()
                except Exception as exc:
                    cause = transient(exc)
                    if cause is not None:
                        self.trip(resource, cause, op.label)
                        break
                    if isinstance(exc, self.fatal):
                        self.ops.remove(op)
                        raise
                    self.say(f"could not {op.label}: {one_line(exc)}")
                else:
                    recorded += op.result
                self.ops.remove(op)
            else:
                if not any(op.resource == resource for op in self.ops):
                    self.ok(resource, recorded)
        self._show()

    # ----- words -----
    def _waiting_text(self) -> str:
        n = self.waiting_results()
        return f"; {n} finished result(s) waiting to be recorded" if n else ""

    def summary(self) -> str | None:
        """One line for the live view while paused."""
        if not self.blocking():
            return None
        now, wall = self.clock(), time.time()
        parts = [
            f"{f.resource} {f.where}: {f.cause} (next retry at "
            f"{time.strftime('%H:%M:%S', time.localtime(wall + max(0.0, f.next_at - now)))})"
            for f in self.faults.values()
            if f.waiting
        ]
        return "PAUSED, no new trial starts — " + "; ".join(parts) + self._waiting_text()

    def _show(self) -> None:
        if self.status is not None:
            self.status(self.summary())


def probe_dir(path: Path, size: int = 65536) -> str | None:
    """Whether a directory takes a small durable write: None, or the fault's cause (disk full, read-only …).

    Asked when a trial's process failed: a process that could not write its checkpoint on a full disk is not
    the trial's fault, and must not spend one of its point's retries.
    """
    import os
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe-", suffix=".tmp")
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        return one_line(exc) if exc.errno in DISK_ERRNOS else None
    return None


def fault_of(exc: BaseException, storage_error: bool | None = None) -> tuple[str, str] | None:
    """``(resource, cause)`` for a transient fault: an ``OSError`` is the runs directory's, the rest the
    storage's (``storage_error`` forces the storage, e.g. for a journal file)."""
    cause = transient(exc)
    if cause is None:
        return None
    if storage_error:
        return STORAGE, cause
    disk = any(isinstance(e, OSError) and e.errno in DISK_ERRNOS for e in _chain(exc))
    db = any(type(e).__module__.split(".")[0] in (*_DRIVERS, "sqlalchemy", "optuna") for e in _chain(exc))
    return (RUNS_DIR if disk and not db else STORAGE), cause
