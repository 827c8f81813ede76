"""Atomic claims of grid points and retries, so several controllers can share one study.

Each controller works out at start-up which points are left; with a shared storage (a team's PostgreSQL URL, or
two launches on one SQLite file) two controllers would run the same points. Before a controller starts a grid
point or a retry it claims ``(study, point, attempt)`` by inserting a row into ``orchestrate_claims`` in the
study's own database: the primary key makes the INSERT atomic, and an ``IntegrityError`` means another
controller owns it — unless that controller is dead (a claim of a dead controller is taken over with a
compare-and-swap UPDATE), or it is this controller's own claim (a trial re-queued after its host was lost).

Works on any SQLAlchemy database Optuna's RDBStorage uses (SQLite, PostgreSQL, MySQL); other storages (the
journal file) get no claims.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator import storage as st

TABLE = "orchestrate_claims"


def _point_hash(point: str) -> str:
    return hashlib.sha256(point.encode("utf-8")).hexdigest()


class Claims:
    def __init__(self, engine: Any, study_name: str, controller: str) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.study_name = study_name
        self.controller = controller
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
        )
        for tries in range(3):  # two controllers creating the table at once: one of them loses the race
            try:
                self.meta.create_all(engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                if tries == 2:
                    raise

    def claim(self, point: str, attempt: int) -> bool:
        """Take ``(point, attempt)``; False when another live controller holds it."""
        import sqlalchemy as sa

        t = self.table
        key = _point_hash(point)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    t.insert().values(
                        study_name=self.study_name,
                        point_hash=key,
                        attempt=attempt,
                        point=point,
                        controller=self.controller,
                    )
                )
            return True
        except sa.exc.IntegrityError:
            pass
        where = sa.and_(t.c.study_name == self.study_name, t.c.point_hash == key, t.c.attempt == attempt)
        with self.engine.begin() as conn:
            owner = conn.execute(sa.select(t.c.controller).where(where)).scalar()
            if owner == self.controller:
                return True
            if owner is None or st.owner_alive(owner):
                return False
            taken = conn.execute(
                t.update().where(sa.and_(where, t.c.controller == owner)).values(controller=self.controller)
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
            return any(o != self.controller and st.owner_alive(o) for o in owners)

    def set_trial(self, point: str, attempt: int, number: int) -> None:
        """Record which trial runs a claim (for people reading the table)."""
        import sqlalchemy as sa

        t = self.table
        where = sa.and_(
            t.c.study_name == self.study_name, t.c.point_hash == _point_hash(point), t.c.attempt == attempt
        )
        with self.engine.begin() as conn:
            conn.execute(t.update().where(where).values(trial_number=number))


def open_claims(storage: Any, study_name: str, controller: str) -> Claims | None:
    """Claims in the database of an Optuna RDBStorage; None for storages without one."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return None
    return Claims(engine, study_name, controller)
