"""Faults with real processes: a host's sshd killed mid-sweep, the controller SIGKILLed and relaunched; and two
controllers sharing one PostgreSQL study."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna

from tests.orchestrator.conftest import CURVE, cli_env, load_trials, run_cli
from tests.orchestrator.remote.test_ssh import hosts_block, sweep_file

GRID = """\
sweeps:
  - name: faults
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}
      epochs: {value: 6}
      sleep: {value: 0.3}
"""

GRID4 = (
    GRID.replace("0.4, 0.5, 0.6, 0.7, 0.8", "0.4").replace("value: 6", "value: 10").replace("0.3}", "0.2}")
)


def _wait_for(path: Path, pattern: str, timeout: float = 60, start: int = 0) -> tuple[re.Match[str], float]:
    deadline = time.time() + timeout
    rx = re.compile(pattern)
    while time.time() < deadline:
        text = path.read_text() if path.exists() else ""
        m = rx.search(text, start)
        if m:
            return m, time.time()
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within {timeout}s in:\n{path.read_text()}")


def _remote_trials(*workdirs: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "curve.py" in cmd and any(str(w) in cmd for w in workdirs):
                pids.append(int(pid))
    return pids


def test_host_killed_mid_sweep_and_controller_sigkilled(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(tmp_path, hosts_block(a.host_yaml(), b.host_yaml()), GRID, defaults="  slots: cpu:1\n")
    out = tmp_path / "launch1.log"
    with open(out, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        m, _ = _wait_for(out, r"trial (\d+) started on boxa:cpu0")
        lost_trial = m.group(1)
        _wait_for(out, rf"trial {lost_trial} step 1:", start=m.end())
        killed_at = time.time()
        a.kill()  # the box dies: sshd, its sessions and the trial, at once
        m2, noticed_at = _wait_for(out, rf"boxa.*trial {lost_trial} of faults goes back to the queue")
        m3, restarted_at = _wait_for(out, rf"trial {lost_trial} started on (?!boxa)", start=m2.end())
        print(
            f"\nhost death → noticed {noticed_at - killed_at:.2f}s, → running elsewhere "
            f"({text_after(out, m3)}) {restarted_at - killed_at:.2f}s"
        )
        a.start()  # the box comes back: its slots rejoin (back-off probe)
        m4, _ = _wait_for(out, r"host boxa answers again", start=m3.end())
        m5, _ = _wait_for(out, r"trial \d+ started on boxa:cpu0", start=m4.end())
        _wait_for(out, r"trial \d+ step 1:", start=m5.end())
    finally:
        ctl.send_signal(signal.SIGKILL)  # the controller dies with trials running (local and remote)
        ctl.wait()
    # the trials it left on the hosts stop once their session ends (or are killed by the next launch)
    deadline = time.time() + 15
    while _remote_trials(a.workdir, b.workdir) and time.time() < deadline:
        time.sleep(0.2)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "recovered from a dead controller" in proc.stdout, proc.stdout
    assert not _remote_trials(a.workdir, b.workdir)

    trials = load_trials(tmp_path, "faults")
    by_point: dict[str, list] = {}
    for t in trials:
        by_point.setdefault(t.user_attrs["orchestrate.point"], []).append(t)
    assert len(by_point) == 8
    for point, ts in by_point.items():
        states = [t.state.name for t in ts]
        assert states.count("COMPLETE") == 1, (point, states)  # every point exactly once
        for t in ts:
            if t.state.name != "COMPLETE":  # only trials the dead controller left: not counted as attempts
                assert t.state.name == "FAIL" and t.user_attrs.get("orchestrate.interrupted"), t.user_attrs
    lost = next(t for t in trials if t.number == int(lost_trial))
    assert lost.state.name in ("COMPLETE", "FAIL")  # the lost host did not fail it
    assert "goes back to the queue" not in str(lost.user_attrs.get("orchestrate.reason", ""))
    hosts_used = {t.user_attrs.get("orchestrate.host") for t in trials if t.state.name == "COMPLETE"}
    assert {"local", "boxb"} <= hosts_used


def test_two_controllers_share_a_postgres_study(tmp_path: Path, postgres_url) -> None:
    url = postgres_url("shared")
    spec = tmp_path / "sweeps.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            defaults: {{slots: "cpu:2", wandb: disabled, retries: 0, storage: "{url}"}}
            sweeps:
              - name: team
                program: {CURVE}
                method: grid
                metric: {{name: score, goal: maximize}}
                parameters:
                  quality: {{values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}}
                  epochs: {{value: 2}}
                  sleep: {{value: 0.05}}
            """
        )
    )
    # the team's database is set up once (Optuna's schema creation itself is not safe to race)
    optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg2://"))
    procs = []
    for i in range(2):
        (tmp_path / f"c{i}").mkdir()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    "launch",
                    str(spec),
                    "--plain",
                    "--runs-dir",
                    f"c{i}/runs",
                ],
                cwd=tmp_path,
                env=cli_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n=====\n".join(outs)
    trials = optuna.load_study(
        study_name="team", storage=url.replace("postgresql://", "postgresql+psycopg2://")
    )
    got = trials.get_trials(deepcopy=False)
    points = [t.user_attrs["orchestrate.point"] for t in got]
    assert len(points) == 10 and len(set(points)) == 10  # every grid point exactly once, none twice
    assert all(t.state.name == "COMPLETE" for t in got)
    owners = {t.user_attrs["orchestrate.controller"] for t in got}
    assert len(owners) == 2, outs  # both controllers did part of the work
    # a third launch finds nothing left
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "0 complete" in again.stdout and len(load_trials_pg(url)) == 10


def load_trials_pg(url: str) -> list:
    study = optuna.load_study(
        study_name="team", storage=url.replace("postgresql://", "postgresql+psycopg2://")
    )
    return study.get_trials(deepcopy=False)


def text_after(path: Path, m: re.Match[str]) -> str:
    return path.read_text()[m.end() :].split(":")[0]


def test_ctrl_c_stops_remote_trials(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(), b.host_yaml()),
        GRID.replace("epochs: {value: 6}", "epochs: {value: 100}"),
    )
    out = tmp_path / "launch.log"
    with open(out, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", "--slots", "hosts"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(out, r"trial 0 step 1:")
        _wait_for(out, r"trial 1 step 1:")
        assert len(_remote_trials(a.workdir, b.workdir)) == 2
        ctl.send_signal(signal.SIGINT)
        assert ctl.wait(timeout=60) == 130
    finally:
        if ctl.poll() is None:
            ctl.kill()
    assert not _remote_trials(a.workdir, b.workdir)  # stopped on the hosts too, before the controller exited
    trials = load_trials(tmp_path, "faults")
    assert sorted(t.state.name for t in trials) == ["FAIL", "FAIL"]
    assert all(t.user_attrs.get("orchestrate.interrupted") for t in trials)
    assert "run `orchestrate launch" in out.read_text()


def test_a_silent_host_is_noticed_by_keepalives(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(), b.host_yaml()),
        GRID4,
        defaults="  slots: cpu:1\n",
    )
    out = tmp_path / "launch.log"
    with open(out, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        m, _ = _wait_for(out, r"trial (\d+) started on boxb:cpu0")
        _wait_for(out, rf"trial {m.group(1)} step 1:", start=m.end())
        frozen_at = time.time()
        b.freeze()  # no FIN, no RST: the connection just goes quiet
        try:
            _, noticed_at = _wait_for(
                out, rf"boxb.*trial {m.group(1)} of faults goes back to the queue", timeout=40
            )
        finally:
            b.freeze(signal.SIGCONT)
        print(f"\nsilent host noticed after {noticed_at - frozen_at:.2f}s (keep-alives)")
        assert ctl.wait(timeout=120) == 0, out.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
    trials = load_trials(tmp_path, "faults")
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4  # no failure, no duplicate


def test_a_storage_password_is_never_printed_or_written(tmp_path: Path, postgres_url) -> None:
    """The storage URL's password (trust auth ignores it here) is masked in launch's output, the leaderboard,
    the report files and the run directory."""
    url = postgres_url("secretive").replace("postgres@", "postgres:Sup3rSecret@")
    spec = tmp_path / "sweeps.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            defaults: {{slots: "cpu:1", wandb: disabled, retries: 0, storage: "{url}"}}
            sweeps:
              - name: masked
                program: {CURVE}
                method: grid
                metric: {{name: score, goal: maximize}}
                parameters: {{quality: {{values: [0.5]}}, epochs: {{value: 1}}}}
            """
        )
    )
    outputs = [run_cli(tmp_path, "launch", str(spec), "--plain", check=True)]
    outputs.append(run_cli(tmp_path, "leaderboard", "--storage", url, "--sweep", "nope"))
    outputs.append(
        run_cli(tmp_path, "report", "--storage", url, "--out", str(tmp_path / "report"), check=True)
    )
    printed = "".join(p.stdout + p.stderr for p in outputs)
    assert "Sup3rSecret" not in printed and "postgres:***@" in printed
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != spec:  # the user's own sweep file holds it, nothing we write does
            assert b"Sup3rSecret" not in path.read_bytes(), path
