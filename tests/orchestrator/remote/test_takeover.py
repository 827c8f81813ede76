"""Controllers on two machines sharing one PostgreSQL study: one dies, the other takes its work over.

"Another machine" is a real controller subprocess whose host identity is ``ORCHESTRATE_HOST_ID=machine-b``, so
the other controller cannot judge it by pid and must go by its heartbeat (orchestrator/leases.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import sqlalchemy as sa

from tests.orchestrator.conftest import CURVE, cli_env
from tests.orchestrator.remote.conftest import descendants

SPEC = """\
defaults: {{wandb: disabled, retries: 0, storage: "{url}", lease: 3}}
sweeps:
  - name: takeover
    program: {curve}
    method: grid
    metric: {{name: score, goal: maximize}}
    parameters:
      quality: {{values: [{values}]}}
      epochs: {{value: {epochs}}}
      sleep: {{value: {sleep}}}
"""


def _spec(tmp_path: Path, url: str, values: str, epochs: int, sleep: float) -> Path:
    path = tmp_path / "sweeps.yaml"
    path.write_text(
        textwrap.dedent(SPEC.format(url=url, curve=CURVE, values=values, epochs=epochs, sleep=sleep))
    )
    # the team's database is set up once (Optuna's schema creation itself is not safe to race)
    optuna.storages.RDBStorage(_sa_url(url))
    return path


def _sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://")


def _launch(
    tmp_path: Path, spec: Path, name: str, slots: str, host_id: str | None
) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{name}.log"
    env = cli_env(tmp_path)
    env.pop("ORCHESTRATE_HOST_ID", None)
    if host_id is not None:
        env["ORCHESTRATE_HOST_ID"] = host_id
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", "--slots", slots,
             "--runs-dir", f"{name}/runs"],
            cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log


def _wait_for(
    path: Path, pattern: str, count: int = 1, start: int = 0, timeout: float = 120
) -> list[re.Match[str]]:
    """The first ``count`` matches of ``pattern`` in the log (from ``start``), waiting for them to appear."""
    rx = re.compile(pattern)
    deadline = time.time() + timeout
    while True:
        found = list(rx.finditer(path.read_text(), start))
        if len(found) >= count:
            return found[:count]
        if time.time() > deadline:
            raise AssertionError(f"no {count}× {pattern!r} within {timeout}s in:\n{path.read_text()}")
        time.sleep(0.05)


def _running(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (a zombie no parent reaped counts as ended)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def _claims(url: str) -> dict[str, str]:
    engine = sa.create_engine(_sa_url(url))
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT point, controller FROM orchestrate_claims")).all())
    finally:
        engine.dispose()


def _heartbeats(url: str) -> dict[str, object]:
    engine = sa.create_engine(_sa_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT controller, finished_at FROM orchestrate_controllers")).all()
            return dict(rows)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_a_controller_killed_on_another_machine_is_taken_over(tmp_path: Path, postgres_url) -> None:
    url = postgres_url("takeover")
    spec = _spec(tmp_path, url, "0.1, 0.2, 0.3, 0.4, 0.5", epochs=20, sleep=0.5)
    b, b_log = _launch(tmp_path, spec, "b", "cpu:2", host_id="machine-b")
    a: subprocess.Popen | None = None
    kids: list[int] = []
    try:
        _wait_for(b_log, r"trial \d+ step 1:", count=2)  # machine B runs two points
        # controller A (this machine) joins while B is alive: it runs the three points left …
        a, a_log = _launch(tmp_path, spec, "a", "cpu:4", host_id=None)
        _wait_for(a_log, r"trial \d+ step 1:", count=3)
        assert "taking over" not in a_log.read_text()  # B is alive: its points stay B's
        kids = descendants(b.pid)
        assert kids, "B's trials should be its child processes"
        b.send_signal(signal.SIGKILL)  # … and machine B's controller dies mid-trial (a reboot, an OOM kill)
        killed_at = time.time()
        b.wait()
        # its trials run in their own process groups but die with it (PR_SET_PDEATHSIG)
        deadline = time.time() + 30
        while _running(kids) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(kids), "B's trials outlived it"
        # A notices during its sweep once B's lease (3 s) has run out, and starts B's points
        m = _wait_for(
            a_log, r"controller machine-b:\d+ last seen \d+ s ago \(lease 3 s\): taking over 2 trial"
        )[0]
        noticed_at = time.time()
        _wait_for(a_log, r"trial \d+ started on", start=m.end())
        restarted_at = time.time()
        assert a.wait(timeout=300) == 0, a_log.read_text()
        print(
            f"\ntakeover (lease 3 s): SIGKILL of B → A says 'taking over' {noticed_at - killed_at:.2f}s, "
            f"→ A starts B's first point {restarted_at - killed_at:.2f}s"
        )
    finally:
        for proc in (b, a):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in _running(kids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    out = a_log.read_text()
    assert "[takeover] 5 complete, 0 pruned, 0 failed, 2 recovered from a dead controller" in out, out
    trials = optuna.load_study(study_name="takeover", storage=_sa_url(url)).get_trials(deepcopy=False)
    by_point: dict[str, list] = {}
    for t in trials:
        by_point.setdefault(t.user_attrs["orchestrate.point"], []).append(t)
    assert len(by_point) == 5
    for point, ts in by_point.items():
        assert [t.state.name for t in ts].count("COMPLETE") == 1, point  # every point exactly once
    lost = [t for t in trials if t.state.name != "COMPLETE"]
    assert len(lost) == 2  # B's two trials: interrupted, not failures
    for t in lost:
        assert t.state.name == "FAIL" and t.user_attrs["orchestrate.interrupted"] is True
        assert t.user_attrs["orchestrate.reason"] == "controller died while it ran"
        assert t.user_attrs["orchestrate.controller"].startswith("machine-b:")
    a_id = {t.user_attrs["orchestrate.controller"] for t in trials if t.state.name == "COMPLETE"}
    assert len(a_id) == 1 and not next(iter(a_id)).startswith("machine-b:")
    assert set(_claims(url).values()) == a_id  # B's claims were taken over, compare-and-swap
    beats = _heartbeats(url)
    assert beats[next(iter(a_id))] is not None  # A exited cleanly: its row says so
    (b_id,) = [c for c in beats if c.startswith("machine-b:")]
    assert beats[b_id] is None  # B was killed: it never said goodbye


def test_a_live_controller_on_another_machine_keeps_its_points(tmp_path: Path, postgres_url) -> None:
    url = postgres_url("live")
    # each trial runs 9 s, three times the lease: only B's heartbeats keep its claims
    spec = _spec(tmp_path, url, "0.5, 0.9", epochs=6, sleep=1.5)
    b, b_log = _launch(tmp_path, spec, "b", "cpu:2", host_id="machine-b")
    a: subprocess.Popen | None = None
    try:
        _wait_for(b_log, r"trial \d+ step 1:", count=2)
        a, a_log = _launch(tmp_path, spec, "a", "cpu:2", host_id=None)
        _wait_for(
            a_log, r"waiting for other controller\(s\) running points of these sweeps \(machine-b:\d+\)"
        )
        assert b.wait(timeout=300) == 0, b_log.read_text()
        assert a.wait(timeout=300) == 0, a_log.read_text()
    finally:
        for proc in (b, a):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    out = a_log.read_text()
    assert "taking over" not in out and "[takeover] 0 complete, 0 pruned, 0 failed" in out, out
    assert "[takeover] 2 complete, 0 pruned, 0 failed" in b_log.read_text()
    trials = optuna.load_study(study_name="takeover", storage=_sa_url(url)).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    assert all(t.user_attrs["orchestrate.controller"].startswith("machine-b:") for t in trials)
    assert all(c.startswith("machine-b:") for c in _claims(url).values())


def test_a_controller_that_slept_past_its_lease_stops_cleanly(tmp_path: Path, postgres_url) -> None:
    """Machine B's controller is frozen (a laptop lid closed) longer than its lease: A takes its trials over;
    when B wakes up it finds out, stops its copies and exits with a message, not a traceback."""
    url = postgres_url("sleeper")
    spec = _spec(tmp_path, url, "0.5, 0.9", epochs=8, sleep=1.5)
    b, b_log = _launch(tmp_path, spec, "b", "cpu:2", host_id="machine-b")
    a: subprocess.Popen | None = None
    try:
        _wait_for(b_log, r"trial \d+ step 1:", count=2)
        a, a_log = _launch(tmp_path, spec, "a", "cpu:2", host_id=None)
        _wait_for(a_log, r"waiting for other controller")
        b.send_signal(signal.SIGSTOP)  # the controller only: its trials go on running
        try:
            m = _wait_for(a_log, r"controller machine-b:\d+ last seen \d+ s ago .*: taking over 2 trial")[0]
            _wait_for(a_log, r"trial \d+ started on", count=2, start=m.end())
        finally:
            b.send_signal(signal.SIGCONT)
        assert b.wait(timeout=120) == 1
        assert a.wait(timeout=300) == 0, a_log.read_text()
    finally:
        for proc in (b, a):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    said = b_log.read_text()
    assert "Traceback" not in said, said
    assert "another controller sharing the storage took over" in said, said
    trials = optuna.load_study(study_name="takeover", storage=_sa_url(url)).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 2 and len({t.user_attrs["orchestrate.point"] for t in done}) == 2
    assert all(not t.user_attrs["orchestrate.controller"].startswith("machine-b:") for t in done)
    others = [t for t in trials if t.state.name != "COMPLETE"]
    assert len(others) == 2 and all(t.user_attrs.get("orchestrate.interrupted") for t in others)
