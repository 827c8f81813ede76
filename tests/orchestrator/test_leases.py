"""Leases (orchestrator/leases.py) and the claims that use them, on a real SQLite database.

Time passing is simulated by moving rows back on the database's own clock (no sleeps, no wall-clock asserts);
"another machine" is a controller id with another host name (``ORCHESTRATE_HOST_ID`` sets ours).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import storage as st
from orchestrator.claims import Claims, _point_hash
from orchestrator.leases import TABLE, Leases, beat_interval, db_now

REMOTE = "machine-b:4242:123456"  # a controller on another host
OTHER = "machine-c:77:99"


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'study.db'}")


def age_row(engine: sa.Engine, controller: str, seconds: float) -> None:
    """Pretend ``seconds`` went by since the controller's last heartbeat."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {TABLE} SET last_seen = last_seen - :s WHERE controller = :c"),
            {"s": seconds, "c": controller},
        )


def age_claims(engine: sa.Engine, controller: str, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orchestrate_claims SET claimed_at = claimed_at - :s WHERE controller = :c"),
            {"s": seconds, "c": controller},
        )


def test_heartbeat_row_uses_the_database_clock(engine: sa.Engine) -> None:
    remote = Leases(engine, REMOTE, lease_s=3)
    remote.beat()
    with engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT * FROM {TABLE}")).mappings().one()
        now = conn.execute(sa.select(db_now(engine))).scalar_one()
    assert row["controller"] == REMOTE and row["host"] == "machine-b" and row["pid"] == 4242
    assert row["lease_s"] == 3 and row["finished_at"] is None
    assert row["started_at"] <= row["last_seen"] <= now  # seconds since the epoch, the database's clock
    assert beat_interval(30) == 6 and beat_interval(3) == pytest.approx(0.6) and beat_interval(600) == 10


def test_verdicts_by_heartbeat_age_and_the_owners_own_lease(engine: sa.Engine) -> None:
    judge = Leases(engine, "machine-a:1:1", lease_s=30)
    Leases(engine, REMOTE, lease_s=3).beat()
    Leases(engine, OTHER, lease_s=100).beat()
    assert judge.alive(REMOTE) and judge.alive(OTHER)
    age_row(engine, REMOTE, 10)
    age_row(engine, OTHER, 10)
    judge.forget()
    v = judge.verdict(REMOTE)
    assert not v.alive and v.age_s is not None and v.age_s >= 10  # its own lease (3 s), not the judge's 30
    assert v.why.startswith("last seen 1") and "(lease 3 s)" in v.why
    assert judge.alive(OTHER)  # 10 s silent, but it promised only every 100 s


def test_a_clean_exit_is_dead_at_once(engine: sa.Engine) -> None:
    judge = Leases(engine, "machine-a:1:1", lease_s=30)
    remote = Leases(engine, REMOTE, lease_s=30)
    remote.start()
    assert remote._thread is not None and remote._thread.is_alive()
    remote.stop()
    assert remote._thread is None
    v = judge.verdict(REMOTE)
    assert not v.alive and v.why.startswith("finished")


def test_no_heartbeat_row_is_judged_by_its_claims(engine: sa.Engine) -> None:
    judge = Leases(engine, "machine-a:1:1", lease_s=30)
    assert not judge.verdict(REMOTE).alive  # no row, no claim: nothing says it lives
    Claims(engine, "s", REMOTE).claim("p1", 1)  # an old version's controller: claims but no heartbeat
    judge.forget()
    assert judge.alive(REMOTE)  # its claim is younger than the lease
    age_claims(engine, REMOTE, 31)
    judge.forget()
    v = judge.verdict(REMOTE)
    assert not v.alive and "newest claim is 31 s old" in v.why


def test_a_lapse_of_our_own_heartbeat_is_noticed(engine: sa.Engine) -> None:
    me = Leases(engine, REMOTE, lease_s=3)
    me.beat()
    me.beat()
    assert me.lapsed is None
    age_row(engine, REMOTE, 20)  # the laptop slept for 20 s
    me.beat()
    assert me.lapsed is not None and me.lapsed >= 20


def test_owner_alive_by_pid_here_by_heartbeat_elsewhere(engine: sa.Engine, monkeypatch) -> None:
    monkeypatch.setenv(st.ENV_HOST_ID, "machine-a")
    me = st.controller_id()
    assert me.startswith(f"machine-a:{os.getpid()}:")
    assert not st.owner_alive(me)  # the current process: an earlier launch of it left the trial
    assert not st.owner_alive("machine-a:999999999:0")  # no such pid here
    leases = Leases(engine, me, lease_s=30)
    assert st.owner_alive(REMOTE)  # no leases (a journal storage): another host is not ours to judge
    assert not st.owner_alive(REMOTE, leases)  # never wrote a heartbeat
    Leases(engine, REMOTE, lease_s=3).beat()
    leases.forget()
    assert st.owner_alive(REMOTE, leases)


def test_claims_of_a_dead_remote_controller_are_taken_over(engine: sa.Engine, monkeypatch) -> None:
    monkeypatch.setenv(st.ENV_HOST_ID, "machine-a")
    me = st.controller_id()
    leases = Leases(engine, me, lease_s=30)
    remote = Leases(engine, REMOTE, lease_s=3)
    remote.beat()
    theirs = Claims(engine, "s", REMOTE)
    assert theirs.claim("p1", 1) and theirs.claim("p2", 1)
    mine = Claims(engine, "s", me, leases)
    assert not mine.claim("p1", 1)  # alive: its claim stands
    assert mine.blocked_by == {REMOTE}
    assert mine.others_alive()
    age_row(engine, REMOTE, 10)  # its heartbeat stopped 10 s ago (lease 3 s)
    leases.forget()
    assert not mine.others_alive()
    assert mine.claim("p1", 1)  # compare-and-swap: now ours
    with engine.connect() as conn:
        owners = dict(conn.execute(sa.text("SELECT point, controller FROM orchestrate_claims")).all())
    assert owners["p1"] == me and owners["p2"] == REMOTE


def test_a_claims_table_from_before_claimed_at_gets_the_column(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE orchestrate_claims (study_name VARCHAR(512) NOT NULL, point_hash VARCHAR(64) "
                "NOT NULL, attempt INTEGER NOT NULL, point TEXT NOT NULL, trial_number INTEGER, "
                "controller VARCHAR(512) NOT NULL, PRIMARY KEY (study_name, point_hash, attempt))"
            )
        )
    with engine.begin() as conn:  # what the old version wrote: a claim without a time
        conn.execute(
            sa.text("INSERT INTO orchestrate_claims VALUES ('s', :h, 1, 'p1', NULL, :c)"),
            {"h": _point_hash("p1"), "c": REMOTE},
        )
    leases = Leases(engine, "machine-a:1:1", lease_s=30)
    mine = Claims(engine, "s", "machine-a:1:1", leases)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("orchestrate_claims")}
    assert "claimed_at" in columns
    assert mine.claim("p1", 1)  # no heartbeat, claim of unknown age (before the upgrade): taken over
    assert mine.claim("p2", 1)
    with engine.connect() as conn:
        times = conn.execute(sa.text("SELECT claimed_at FROM orchestrate_claims")).scalars().all()
    assert all(t is not None for t in times)


def test_launch_takes_over_a_dead_remote_controllers_trial_at_start(tmp_path: Path) -> None:
    """SQLite, in a real ``launch``: a trial left RUNNING by a controller on another host whose heartbeat is
    100 s old (lease 3 s) is marked interrupted and re-run; its claim is taken over; the grid runs once."""
    import optuna

    from orchestrator.scheduler import point_key
    from orchestrator.spec import load_sweeps
    from tests.orchestrator.conftest import load_trials, run_cli, write

    spec = write(
        tmp_path,
        "sweeps.yaml",
        """\
        defaults: {slots: "cpu:2", wandb: disabled, retries: 0, lease: 3}
        sweeps:
          - name: s
            program: @CURVE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters:
              quality: {values: [0.2, 0.5, 0.8]}
              epochs: {value: 2}
              sleep: {value: 0.01}
        """,
    )
    sweep = load_sweeps(spec).sweeps[0]
    flat = sweep.parameters.grid()[1]
    params = sweep.parameters.encode(flat, grid=True)
    url = f"sqlite:///{tmp_path / 'runs' / 'orchestrate.db'}"
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    assert sweep.parameters.sample(trial, grid=True) == flat  # the point, with the grid's own distributions
    trial.set_user_attr(st.ATTR_POINT, point_key(flat))
    trial.set_user_attr(st.ATTR_CONTROLLER, REMOTE)
    engine = sa.create_engine(url)
    Leases(engine, REMOTE, lease_s=3).beat()
    age_row(engine, REMOTE, 100)
    assert Claims(engine, "s", REMOTE).claim(point_key(params), 1)  # what a controller claims

    proc = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    said = r"\[s\] controller machine-b:4242 last seen 1\d\d s ago \(lease 3 s\): taking over 1 trial\(s\)"
    assert re.search(said, proc.stdout), proc.stdout
    assert "[s] 3 complete, 0 pruned, 0 failed, 1 recovered from a dead controller" in proc.stdout
    trials = load_trials(tmp_path, "s")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert len({t.user_attrs[st.ATTR_POINT] for t in trials if t.state.name == "COMPLETE"}) == 3
    (lost,) = [t for t in trials if t.state.name == "FAIL"]
    assert lost.number == trial.number and lost.user_attrs[st.ATTR_INTERRUPTED] is True
    with engine.connect() as conn:
        owners = set(conn.execute(sa.text("SELECT controller FROM orchestrate_claims")).scalars())
        finished = conn.execute(
            sa.text(f"SELECT finished_at FROM {TABLE} WHERE controller != :c"), {"c": REMOTE}
        ).scalar_one()
    assert REMOTE not in owners and len(owners) == 1
    assert finished is not None  # the launch marked its heartbeat row finished when it exited


def test_after_our_own_database_outage_no_one_is_judged_dead_for_a_lease(tmp_path: Path) -> None:
    """A database outage silences every controller at once: the judge whose own heartbeat failed waits a
    whole lease of working heartbeats before calling anyone dead, so controllers don't take over each other."""
    import sqlite3

    path = tmp_path / "study.db"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    judge = Leases(engine, "machine-a:1:1", lease_s=30)
    judge.beat()
    Leases(engine, REMOTE, lease_s=3).beat()
    age_row(engine, REMOTE, 10)  # silent for longer than its lease, as the outage made it
    locker = sqlite3.connect(path)
    locker.execute("BEGIN EXCLUSIVE")  # the database is unreachable for us
    assert judge.heartbeat_once() is False
    locker.rollback()
    locker.close()
    assert judge.heartbeat_once() is True  # back
    judge.forget()
    v = judge.verdict(REMOTE)
    assert v.alive and "heartbeats failed" in v.why
    judge._back_at = (judge._back_at or 0.0) - 3.5  # a lease (the remote's 3 s) of working heartbeats later
    judge.forget()
    v = judge.verdict(REMOTE)
    assert not v.alive and v.why.startswith("last seen")
    # a judge that never had an outage calls the silent controller dead at once
    fresh = Leases(engine, "machine-c:2:2", lease_s=30)
    assert not fresh.verdict(REMOTE).alive
