"""Heartbeats and leases: whether a controller on another machine sharing the study is still alive.

A controller on this host is judged by its pid and process start time (:func:`orchestrator.storage.owner_alive`);
one on another host (a team's PostgreSQL study, or one user on two laptops) cannot be. So every controller
writes a heartbeat row in the study's database (table ``orchestrate_controllers``: its id ``host:pid:start``,
host, pid, lease, started / last seen / finished) from a daemon thread, every ``lease / 5`` seconds (at most
every 10 s). Times are the **database's** clock (``now()``, ``julianday('now')``), read and compared in the
database's own terms, so clock skew between the machines does not matter.

A controller on another host is dead when

- its row says it finished (a clean exit marks the row; Ctrl-C included), or
- its last heartbeat is older than the lease it wrote in its row (its own promise: controllers with different
  leases judge each other correctly), or
- it has no row at all (it predates heartbeats, or its row was cleaned up) and its newest claim in
  ``orchestrate_claims`` is older than this controller's lease (or it holds none).

A controller that was not able to beat for longer than a lease itself (a laptop lid closed, the database
unreachable) may have been judged dead meanwhile: ``lapsed`` says so (its trials may have been taken over).

An outage of the database silences every controller at once. So a controller whose own heartbeat failed judges
no one dead by heartbeat age until it has beaten again for a whole lease (the others' lease): by then every
live controller has refreshed its row, and only the really dead look stale. Without this, a PostgreSQL restart
longer than the lease would make the controllers take over each other's trials.
The lease is ``defaults.lease`` in the sweep file or ``launch --lease SECONDS`` (default 30 s).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

TABLE = "orchestrate_controllers"
DEFAULT_LEASE_S = 30.0
MIN_LEASE_S = 1.0
STALE_ROWS_S = 7 * 24 * 3600.0  # rows of controllers gone for a week are deleted (by the next one to start)


def beat_interval(lease_s: float) -> float:
    """How often a controller with this lease refreshes its heartbeat."""
    return min(lease_s / 5.0, 10.0)


def db_now(engine: Any) -> Any:
    """A SQL expression for the database's clock in seconds since the epoch (a float)."""
    import sqlalchemy as sa

    name = engine.dialect.name
    if name == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.now()), sa.Float)
    if name == "sqlite":
        return (sa.func.julianday("now") - 2440587.5) * 86400.0
    if name in ("mysql", "mariadb"):
        return sa.cast(sa.func.unix_timestamp(sa.func.now(6)), sa.Float)
    return sa.literal(time.time())  # another database: this machine's clock (skew is then not covered)


@dataclass
class Verdict:
    alive: bool
    age_s: float | None  # seconds since its last heartbeat (or newest claim), by the database's clock
    why: str  # "last seen 41 s ago", "finished", "no heartbeat, no claim" …


class Leases:
    """This controller's heartbeat, and the judge of other hosts' controllers."""

    def __init__(self, engine: Any, controller: str, lease_s: float = DEFAULT_LEASE_S) -> None:
        import sqlalchemy as sa

        from orchestrator import storage as st

        self.engine = engine
        self.controller = controller
        self.lease_s = float(lease_s)
        host, pid, _ = (controller.rsplit(":", 2) + ["", ""])[:3]
        self.host = host or st.host_id()
        self.pid = int(pid) if pid.isdigit() else 0
        self.meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            self.meta,
            sa.Column("controller", sa.String(512), primary_key=True),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("lease_s", sa.Float, nullable=False),
            sa.Column("started_at", sa.Float, nullable=False),  # database clock, seconds since the epoch
            sa.Column("last_seen", sa.Float, nullable=False),
            sa.Column("finished_at", sa.Float, nullable=True),
        )
        for tries in range(3):  # two controllers creating the table at once: one of them loses the race
            try:
                self.meta.create_all(engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                if tries == 2:
                    raise
        self.lapsed: float | None = None  # the longest gap between two of our own heartbeats, when > lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: tuple[float, float, dict[str, Any]] | None = None  # (monotonic, db now, rows)
        self._claim_ages: dict[str, float | None] = {}
        self._down = False  # our last heartbeat failed
        self._back_at: float | None = None  # monotonic time our heartbeats worked again after failing

    # ----- our own heartbeat -----
    def beat(self) -> None:
        """Write (or refresh) this controller's row. Raises what the database raises."""
        import sqlalchemy as sa

        t = self.table
        now = db_now(self.engine)
        with self.engine.begin() as conn:
            seen = conn.execute(
                sa.select(t.c.last_seen, now).where(t.c.controller == self.controller)
            ).first()
            if seen is None:
                conn.execute(
                    t.insert().values(
                        controller=self.controller,
                        host=self.host,
                        pid=self.pid,
                        lease_s=self.lease_s,
                        started_at=now,
                        last_seen=now,
                    )
                )
            else:
                gap = float(seen[1]) - float(seen[0])
                if gap > self.lease_s:  # we were silent longer than our lease: others may have taken over
                    self.lapsed = max(gap, self.lapsed or 0.0)
                conn.execute(
                    t.update()
                    .where(t.c.controller == self.controller)
                    .values(last_seen=now, finished_at=None, lease_s=self.lease_s)
                )

    def start(self) -> None:
        """The first heartbeat (now, before any claim is made), then one every ``beat_interval`` in a thread."""
        import sqlalchemy as sa

        self.beat()
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self._delete_stale()
        self._thread = threading.Thread(target=self._run, daemon=True, name="orchestrate-heartbeat")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(beat_interval(self.lease_s)):
            self.heartbeat_once()

    def heartbeat_once(self) -> bool:
        """One beat from the thread: a failure (database unreachable) is retried at the next interval, and
        noted, so this controller does not judge others by the silence the outage caused (see the module)."""
        try:
            self.beat()
        except Exception:  # noqa: BLE001 - whatever the driver raises; the next beat retries
            self._down = True
            return False
        if self._down:
            self._down = False
            self._back_at = time.monotonic()
        return True

    def _recovering(self, lease_s: float) -> float | None:
        """Seconds since our own heartbeats came back after failing, while that is under ``lease_s`` (or 0.0
        while they still fail); None when an outage cannot explain another controller's silence."""
        if self._down:
            return 0.0
        if self._back_at is None:
            return None
        since = time.monotonic() - self._back_at
        return since if since < lease_s else None

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop the thread and mark the row finished: others may take over our claims at once.

        Waits at most ``wait_s`` for the database (one that went away must not hold up the exit; the others
        then judge by the lease)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=wait_s)
            self._thread = None
        t = self.table

        def _mark() -> None:
            with contextlib.suppress(Exception), self.engine.begin() as conn:
                conn.execute(
                    t.update()
                    .where(t.c.controller == self.controller)
                    .values(finished_at=db_now(self.engine))
                )

        marker = threading.Thread(target=_mark, daemon=True, name="orchestrate-heartbeat-end")
        marker.start()
        marker.join(timeout=wait_s)

    def _delete_stale(self) -> None:
        t = self.table
        with self.engine.begin() as conn:
            conn.execute(t.delete().where(t.c.last_seen < db_now(self.engine) - STALE_ROWS_S))

    # ----- judging others -----
    def _rows(self) -> tuple[float, dict[str, Any]]:
        """(database now, {controller: row}); read at most once a second."""
        import sqlalchemy as sa

        cached = self._snapshot
        if cached is not None and time.monotonic() - cached[0] < min(1.0, self.lease_s / 5.0):
            return cached[1], cached[2]
        t = self.table
        with self.engine.connect() as conn:
            now = float(conn.execute(sa.select(db_now(self.engine))).scalar_one())
            rows = {r.controller: r for r in conn.execute(sa.select(t))}
        self._snapshot = (time.monotonic(), now, rows)
        self._claim_ages = {}
        return now, rows

    def _newest_claim_age(self, owner: str, now: float) -> float | None:
        """Seconds since the owner's newest claim (any study); None when it holds none with a time."""
        if owner in self._claim_ages:
            return self._claim_ages[owner]
        import sqlalchemy as sa

        from orchestrator.claims import TABLE as CLAIMS

        claims = sa.table(CLAIMS, sa.column("controller"), sa.column("claimed_at"))
        try:
            with self.engine.connect() as conn:
                newest = conn.execute(
                    sa.select(sa.func.max(claims.c.claimed_at)).where(claims.c.controller == owner)
                ).scalar()
        except sa.exc.SQLAlchemyError:  # no claims table (yet), or one without claimed_at
            newest = None
        age = None if newest is None else now - float(newest)
        self._claim_ages[owner] = age
        return age

    def verdict(self, owner: str, claim_age: float | None = None) -> Verdict:
        """Whether the controller ``owner`` (on another host) is alive, and why.

        ``claim_age``: the age (database clock) of a claim of it the caller looks at; used when it has no
        heartbeat row.
        """
        now, rows = self._rows()
        row = rows.get(owner)
        if row is not None:
            age = now - float(row.last_seen)
            if row.finished_at is not None:
                return Verdict(False, age, f"finished {now - float(row.finished_at):.0f} s ago")
            lease = float(row.lease_s)
            if age > lease:
                since = self._recovering(lease)
                if since is not None:  # our own database connection was down: everyone looks silent
                    return Verdict(
                        True,
                        age,
                        f"last seen {age:.0f} s ago, but this controller's own heartbeats failed until "
                        f"{since:.0f} s ago: judged after a lease ({lease:g} s) of working heartbeats",
                    )
            return Verdict(age <= lease, age, f"last seen {age:.0f} s ago (lease {lease:g} s)")
        if claim_age is None:
            claim_age = self._newest_claim_age(owner, now)
        if claim_age is None:
            return Verdict(False, None, "no heartbeat and no claim")
        return Verdict(
            claim_age <= self.lease_s,
            claim_age,
            f"no heartbeat; its newest claim is {claim_age:.0f} s old (lease {self.lease_s:g} s)",
        )

    def alive(self, owner: str, claim_age: float | None = None) -> bool:
        return self.verdict(owner, claim_age).alive

    def now(self) -> float:
        """The database's clock (seconds since the epoch)."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return float(conn.execute(sa.select(db_now(self.engine))).scalar_one())

    def forget(self) -> None:
        """Drop the cached view (the next judgement reads the table again)."""
        self._snapshot = None
        self._claim_ages = {}


def open_leases(storage: Any, controller: str, lease_s: float = DEFAULT_LEASE_S) -> Leases | None:
    """Leases in the database of an Optuna RDBStorage; None for storages without one (the journal file)."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return None
    return Leases(engine, controller, lease_s)
