"""Issue 14 end to end: hostile trials and careless inputs end in a clear message and the documented exit code,
with no trial left RUNNING and no process left behind. Real CLI subprocesses, real trials, real SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import ROOT, cli_env, load_trials, run_cli

pytestmark = pytest.mark.e2e

HOSTILE = ROOT / "tests" / "orchestrator" / "programs" / "hostile.py"


def _spec(tmp_path: Path, params: str, extra: str = "", workers_slots: str = "cpu:2") -> Path:
    path = tmp_path / "sweeps.yaml"
    path.write_text(
        f"""defaults:
  slots: {workers_slots}
  wandb: disabled
  retries: 0
sweeps:
  - name: hostile
    program: {HOSTILE}
    method: grid
    metric: {{name: score, goal: maximize}}
{extra}    parameters:
{params}"""
    )
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet by whoever adopted it) is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout  # a hang guard only
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_bad_protocol_line_fails_that_trial_naming_the_line(tmp_path: Path) -> None:
    """A line that is JSON but not the protocol (wrong types) fails its trial with a reason quoting it; the other
    trial of the grid completes; a relaunch finds nothing RUNNING and does not crash."""
    bad = '@orchestrate {"event": "metrics", "step": -7, "metrics": [1, 2]}'
    spec = _spec(
        tmp_path,
        f"      line: {{values: ['{bad}', 'just a line']}}\n      epochs: {{value: 3}}\n",
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode in (0, 1), proc.stderr  # 1 once "a FAILED trial fails the launch" is merged
    trials = {t.params["line"]: t for t in load_trials(tmp_path, "hostile")}
    failed, good = trials[bad], trials["just a line"]
    assert failed.state == TrialState.FAIL
    reason = failed.user_attrs["orchestrate.reason"]
    assert reason.startswith("bad protocol line: metrics must be an object of name: value, not list: "), (
        reason
    )
    assert bad in reason
    assert good.state == TrialState.COMPLETE and good.value == 1.0
    again = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert "Traceback" not in again.stderr and again.returncode in (0, 1)
    assert not [t for t in load_trials(tmp_path, "hostile") if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("workers", ["fresh", "warm"])
def test_orphan_holding_the_pipe_neither_hangs_the_sweep_nor_survives(tmp_path: Path, workers: str) -> None:
    """The trial starts a background process that inherits its stdout and ignores SIGTERM, then ends: the sweep
    completes (no reader waits on the orphan's pipe) and the orphan is killed (the trial's process group)."""
    spec = _spec(
        tmp_path,
        f"      orphan: {{value: {tmp_path / 'orphan.pid'}}}\n      epochs: {{value: 1}}\n",
        workers_slots="cpu:1",
    )
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", "--workers", workers]
    if workers == "warm":  # run the program as `python -m` so that a warm worker forks it
        spec.write_text(
            spec.read_text().replace(
                f"    program: {HOSTILE}\n",
                '    command: ["${interpreter}", "-m", "tests.orchestrator.programs.hostile", "${args}"]\n',
            )
        )
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (trial,) = load_trials(tmp_path, "hostile")
    assert trial.state == TrialState.COMPLETE and trial.value == 1.0
    orphan = int((tmp_path / "orphan.pid").read_text())
    _wait_for(lambda: not _alive(orphan), timeout=30)
