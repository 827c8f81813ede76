"""Atomic claims of grid points and retries, so several controllers can share one study.

Each controller works out at start-up which points are left; with a shared storage (a team's PostgreSQL URL, or
two launches on one SQLite file) two controllers would run the same points. Before a controller starts a grid
point or a retry it claims ``(study, point, attempt)`` by inserting a row into ``orchestrate_claims`` in the
study's own database: the primary key makes the INSERT atomic, and an ``IntegrityError`` means another
controller owns it — unless that controller is dead (a claim of a dead controller is taken over with a
compare-and-swap UPDATE), or it is this controller's own claim (a trial re-queued after its host was lost).
Whether a controller on another machine is dead is decided by its heartbeat (``orchestrator/leases.py``);
``claimed_at`` (the database's clock) judges an owner without one.

Works on any SQLAlchemy database Optuna's RDBStorage uses (SQLite, PostgreSQL, MySQL); other storages (the
journal file) get no claims.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from orchestrator import storage as st

TABLE = "orchestrate_claims"


def _point_hash(point: str) -> str:
    return hashlib.sha256(point.encode("utf-8")).hexdigest()


class Claims:
    def __init__(self, engine: Any, study_name: str, controller: str, leases: Any = None) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.study_name = study_name
        self.controller = controller
        self.leases = leases  # orchestrator.leases.Leases: judges controllers on other hosts
        self.blocked_by: set[str] = set()  # live owners of the claims this controller was refused
        self.meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            self.meta,
            sa.Column("study_name", sa.String(512), primary_key=True),
            sa.Column("point_hash", sa.String(64), primary_key=True),
            sa.Column("attempt", sa.Integer, primary_key=True),
            sa.Column("point", sa.Text, nullable=False),
            sa.Column("trial_number", sa.Integer, nullable=True),
            sa.Column("controller", sa.String(512), nullable=False),
            sa.Column(
                "claimed_at", sa.Float, nullable=True
            ),  # database clock, s since the epoch (NULL: older)
        )
        for tries in range(3):  # two controllers creating the table at once: one of them loses the race
            try:
                self.meta.create_all(engine, checkfirst=True)
                self._add_claimed_at()
                break
            except sa.exc.SQLAlchemyError:
                if tries == 2:
                    raise

    def _add_claimed_at(self) -> None:
        """A table made before claims had a time gets the column (its old claims keep NULL: 'long ago')."""
        import sqlalchemy as sa

        columns = {c["name"] for c in sa.inspect(self.engine).get_columns(TABLE)}
        if "claimed_at" not in columns:
            kind = sa.Float().compile(dialect=self.engine.dialect)
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN claimed_at {kind}"))

    def claim(self, point: str, attempt: int) -> bool:
        """Take ``(point, attempt)``; False when another live controller holds it (noted in ``blocked_by``)."""
        import sqlalchemy as sa

        from orchestrator.leases import db_now

        t = self.table
        key = _point_hash(point)
        now = db_now(self.engine)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    t.insert().values(
                        study_name=self.study_name,
                        point_hash=key,
                        attempt=attempt,
                        point=point,
                        controller=self.controller,
                        claimed_at=now,
                    )
                )
            return True
        except sa.exc.IntegrityError:
            pass
        where = sa.and_(t.c.study_name == self.study_name, t.c.point_hash == key, t.c.attempt == attempt)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.c.controller, t.c.claimed_at, now).where(where)).first()
            if row is None:
                return False
            owner, claimed_at, db_time = row
            if owner == self.controller:
                return True
            age = None if claimed_at is None else float(db_time) - float(claimed_at)
            if st.owner_alive(owner, self.leases, age if age is not None else math.inf):
                self.blocked_by.add(owner)
                return False
            taken = conn.execute(
                t.update()
                .where(sa.and_(where, t.c.controller == owner))
                .values(controller=self.controller, claimed_at=now)
            )
            return bool(taken.rowcount == 1)

    def others_alive(self) -> bool:
        """Whether another live controller holds claims in this study."""
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as conn:
            owners = conn.execute(
                sa.select(t.c.controller).where(t.c.study_name == self.study_name).distinct()
            ).scalars()
            return any(o != self.controller and st.owner_alive(o, self.leases) for o in owners)

    def set_trial(self, point: str, attempt: int, number: int) -> None:
        """Record which trial runs a claim (for people reading the table)."""
        import sqlalchemy as sa

        t = self.table
        where = sa.and_(
            t.c.study_name == self.study_name, t.c.point_hash == _point_hash(point), t.c.attempt == attempt
        )
        with self.engine.begin() as conn:
            conn.execute(t.update().where(where).values(trial_number=number))


def open_claims(storage: Any, study_name: str, controller: str, leases: Any = None) -> Claims | None:
    """Claims in the database of an Optuna RDBStorage; None for storages without one."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return None
    return Claims(engine, study_name, controller, leases)
