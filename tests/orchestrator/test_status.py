"""``orchestrate status`` on a study with finished, pruned, failed and (orphaned) running trials."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from orchestrator import status
from tests.orchestrator.conftest import run_cli
from tests.orchestrator.test_leaderboard import make_study


def test_status_counts_running_queued_and_orphans(tmp_path: Path) -> None:
    url = make_study(tmp_path, seeds=2, running=1)
    report = status.collect(url)
    (s,) = report["sweeps"]
    assert (s["complete"], s["pruned"], s["failed"], s["running"]) == (10, 2, 1, 1)
    # planned 3 backbones × 2 lrs × 2 seeds + 2 = 14; seen: 12 grid points + the failed + the running one
    assert s["planned"] == 14 and s["queued"] == 0
    (r,) = s["running_trials"]
    assert r["slot"] == "gpu1" and r["epoch"] == 1 and r["value"] == 0.6  # from metrics.jsonl
    assert r["controller_alive"] is False and s["orphaned"] == 1  # its controller died
    assert s["eta_s"] is None  # no live controller: no ETA
    assert s["gpu_hours"] > 0 and s["best"]["value"] > 0.85
    proc = run_cli(tmp_path, "status", "--storage", url, "--format", "json", check=True)
    assert json.loads(proc.stdout)["sweeps"][0]["complete"] == 10
    text = run_cli(tmp_path, "status", "--storage", url, check=True).stdout
    assert "10 finished, 2 pruned, 1 failed, 1 running, 0 queued" in text
    assert "orphaned" in text and "on gpu1: epoch 1 val/acc=0.6" in text


def test_status_eta_with_a_live_controller(tmp_path: Path) -> None:
    import optuna

    url = make_study(tmp_path, seeds=1, running=1)
    study = optuna.load_study(study_name="arch", storage=url)
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"][0]
    # a live owner: PID 1 of this container/host as "controller" with its real start ticks
    from orchestrator import storage as st

    owner = f"{socket.gethostname()}:1:{st._start_ticks(1)}"
    study._storage.set_trial_user_attr(running._trial_id, st.ATTR_CONTROLLER, owner)
    spec = dict(study.user_attrs[st.ATTR_SPEC], trials=12)  # 6 points seen + 1 failed + 1 running → 4 queued
    study.set_user_attr(st.ATTR_SPEC, spec)
    (s,) = status.collect(url)["sweeps"]
    assert s["queued"] == 12 - 8 and s["controller_alive"] is True
    assert s["eta_s"] is not None and s["eta_s"] > 0
    assert s["eta_s"] == pytest.approx(s["mean_duration_s"] * (s["queued"] + 1) / 1, rel=1e-3)


def test_status_judges_another_hosts_controller_by_its_heartbeat(tmp_path: Path) -> None:
    """A trial owned by a controller on another machine: alive while its heartbeat is fresh, orphaned once it
    is older than its lease; the controllers sharing the storage are listed."""
    import optuna
    import sqlalchemy as sa

    from orchestrator import storage as st
    from orchestrator.leases import TABLE, Leases

    url = make_study(tmp_path, seeds=1, running=1)
    study = optuna.load_study(study_name="arch", storage=url)
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"][0]
    remote = "machine-b:4242:123456"
    study._storage.set_trial_user_attr(running._trial_id, st.ATTR_CONTROLLER, remote)
    engine = sa.create_engine(url)
    Leases(engine, remote, lease_s=30).beat()
    report = status.collect(url)
    (s,) = report["sweeps"]
    assert s["running_trials"][0]["controller_alive"] is True and s["orphaned"] == 0
    (c,) = report["controllers"]
    assert c["controller"] == remote and c["alive"] is True and c["why"].startswith("last seen")
    with engine.begin() as conn:  # 100 s later by the database's clock: past its 30 s lease
        conn.execute(sa.text(f"UPDATE {TABLE} SET last_seen = last_seen - 100"))
    report = status.collect(url)
    (s,) = report["sweeps"]
    assert s["running_trials"][0]["controller_alive"] is False and s["orphaned"] == 1
    assert report["controllers"][0]["alive"] is False
    text = run_cli(tmp_path, "status", "--storage", url, check=True).stdout
    assert re.search(rf"controller {remote} \(machine-b\): gone, last seen 1\d\d s ago \(lease 30 s\)", text)
