"""End to end: real `orchestrate launch` subprocesses, real child processes, real SQLite storage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import cli_env, load_trials, run_cli, start_launch, write

pytestmark = pytest.mark.e2e

GRID = """
defaults:
  slots: cpu:2
  wandb: disabled
  retries: 0
sweeps:
  - name: curve-grid
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}
    parameters:
      quality: {values: [1.0, 0.9, 0.2, 0.1, 0.15, 0.98]}
      epochs: {value: 6}
      sleep: {value: 0.15}
"""


def test_grid_sweep_completes_prunes_and_ranks(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", GRID)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "slot utilisation" in proc.stdout
    trials = load_trials(tmp_path, "curve-grid")
    assert len(trials) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    qualities = sorted(t.params["quality"] for t in trials)
    assert qualities == sorted([1.0, 0.9, 0.2, 0.1, 0.15, 0.98])  # each grid point exactly once
    # the closing summary names the best trial, its swept parameters and value, and the next command
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    (line,) = [ln for ln in proc.stdout.splitlines() if "[curve-grid] best:" in ln]
    assert line.endswith(
        f"[curve-grid] best: trial {best.number}, score={best.value:.4g} (quality=1) "
        "→ orchestrate leaderboard --sweep curve-grid"
    ), line
    assert "next: `orchestrate report --out report/`" in proc.stdout
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner should stop at least one low-quality trial"
    assert all(t.params["quality"] <= 0.2 for t in pruned)
    for t in trials:
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        if not run_dir.is_absolute():
            run_dir = tmp_path / run_dir
        result = json.loads((run_dir / "result.json").read_text())
        assert result["state"] == t.state.name
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        # every epoch the child ran is in metrics.jsonl; a pruned child may finish one more epoch while its
        # SIGTERM is on the way, which Optuna does not take after the prune decision
        assert len(lines) == t.user_attrs["orchestrate.epochs"]
        assert len(t.intermediate_values) <= len(lines) <= len(t.intermediate_values) + 1
        assert "starting" in (run_dir / "stdout.log").read_text()
        if t.state == TrialState.PRUNED:
            assert len(lines) < 6

    board = run_cli(tmp_path, "leaderboard", "--format", "json", check=True)
    rows = json.loads(board.stdout)["sweeps"][0]["rows"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    values = [r["value"] for r in complete]
    assert values == sorted(values, reverse=True)
    assert complete[0]["quality"] == 1.0
    assert rows[0]["rank"] == 1 and rows[0]["trial"] == complete[0]["trial"]
    assert [r["state"] for r in rows[len(complete) :]] == ["PRUNED"] * (len(rows) - len(complete))

    # a second launch finds the grid done and runs nothing
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "started" not in again.stdout
    assert len(load_trials(tmp_path, "curve-grid")) == 6


def test_failing_child_is_failed_with_stderr_and_retried(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults: {slots: "cpu:2", wandb: disabled}
        sweeps:
          - name: crashy
            program: @CURVE@
            method: grid
            retries: 1
            metric: {name: score, goal: maximize}
            parameters:
              fail: {values: [false, true]}
              quality: {values: [0.5, 0.7]}
              epochs: {value: 3}
              sleep: {value: 0.01}
        """,
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 1, proc.stderr  # trials ended FAILED: not a success (issue 13)
    assert "2× exit code 3: boom: simulated crash in epoch 1" in proc.stdout
    trials = load_trials(tmp_path, "crashy")
    states = Counter((t.params["fail"], t.state) for t in trials)
    assert states[(False, TrialState.COMPLETE)] == 2
    assert states[(True, TrialState.FAIL)] == 4  # 2 points × (1 try + 1 retry)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    for t in failed:
        assert "boom: simulated crash" in t.user_attrs["orchestrate.stderr_tail"]
        assert t.user_attrs["orchestrate.reason"] == "exit code 3"
    attempts = sorted(t.user_attrs["orchestrate.attempt"] for t in failed)
    assert attempts == [1, 1, 2, 2]
    # the retry re-used exactly the same parameters
    by_point = Counter(t.user_attrs["orchestrate.point"] for t in failed)
    assert sorted(by_point.values()) == [2, 2]


def test_nan_metric_fails_trial(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults: {slots: "cpu:1", wandb: disabled, retries: 0}
        sweeps:
          - name: nan
            program: @CURVE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters:
              nan: {value: true}
              epochs: {value: 4}
        """,
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 1 and "non-finite" in proc.stdout
    (t,) = load_trials(tmp_path, "nan")
    assert t.state == TrialState.FAIL
    assert "non-finite" in t.user_attrs["orchestrate.reason"]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _completed(tmp_path: Path) -> int:
    runs = tmp_path / "runs" / "slow-grid"
    return len(list(runs.glob("*/result.json"))) if runs.exists() else 0


SLOW_GRID = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
sweeps:
  - name: slow-grid
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}
      epochs: {value: 4}
      sleep: {value: 0.25}
"""


def test_sigkill_controller_then_relaunch_runs_each_point_once(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", SLOW_GRID)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _completed(tmp_path) >= 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = load_trials(tmp_path, "slow-grid")
    assert any(t.state == TrialState.RUNNING for t in before), "some trials were running when it died"

    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    trials = load_trials(tmp_path, "slow-grid")
    assert not any(t.state == TrialState.RUNNING for t in trials)
    done = Counter(t.params["quality"] for t in trials if t.state == TrialState.COMPLETE)
    assert sorted(done) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert set(done.values()) == {1}  # every grid point completed exactly once
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs.get("orchestrate.interrupted") for t in interrupted)


def test_ctrl_c_stops_children_and_next_launch_resumes(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", SLOW_GRID)
    proc = start_launch(tmp_path, spec)
    _wait_for(lambda: _completed(tmp_path) >= 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "again to resume" in out
    trials = load_trials(tmp_path, "slow-grid")
    assert not any(t.state == TrialState.RUNNING for t in trials)
    # the stopped children are gone
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.FAIL)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    done = Counter(
        t.params["quality"] for t in load_trials(tmp_path, "slow-grid") if t.state == TrialState.COMPLETE
    )
    assert len(done) == 8 and set(done.values()) == {1}


def test_bad_specs_exit_2_with_file_and_line(tmp_path: Path) -> None:
    cases = {
        "syntax.yaml": "sweeps:\n  - name: a\n    method: [grid\n",
        "unknown.yaml": "sweeps:\n  - name: a\n    program: x.py\n    method: grid\n    paramters: {}\n",
        "type.yaml": "sweeps:\n  - name: a\n    program: x.py\n    method: grid\n    run_cap: many\n    parameters:\n      lr: {values: [1]}\n",
        "empty.yaml": "sweeps:\n  - name: a\n    program: x.py\n    method: grid\n    parameters:\n      lr: {values: []}\n",
        "experiment.yaml": "sweeps:\n  - name: a\n    experiment: no_such_experiment\n    method: grid\n    parameters:\n      lr: {values: [1]}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        proc = run_cli(tmp_path, "launch", str(path), "--dry-run")
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert f"{name}:" in proc.stderr, (name, proc.stderr)
        line = proc.stderr.split(f"{name}:", 1)[1].split(":", 1)[0]
        assert line.isdigit(), (name, proc.stderr)
    missing = run_cli(tmp_path, "launch", "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_slots_hosts_without_hosts_says_what_to_add(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "hosts.yaml",
        "defaults: {slots: hosts}\nsweeps:\n  - name: a\n    program: x.py\n    method: grid\n"
        "    parameters:\n      lr: {values: [1]}\n",
    )
    (tmp_path / "x.py").write_text("")  # the program exists (a missing one is its own exit 2)
    proc = run_cli(tmp_path, "launch", str(path), "--plain")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the file lists no hosts" in proc.stderr and "add defaults.hosts" in proc.stderr


def test_dry_run_json_plan(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", GRID)
    proc = run_cli(tmp_path, "launch", str(spec), "--dry-run", "--format", "json", check=True)
    plan = json.loads(proc.stdout)
    (sweep,) = plan["sweeps"]
    assert sweep["name"] == "curve-grid" and sweep["method"] == "grid" and sweep["trials"] == 6
    assert set(sweep["parameters"]) == {"quality", "epochs", "sleep"}
    assert not (tmp_path / "runs").exists()  # nothing started


def test_leaderboard_reads_a_plain_optuna_study(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=storage, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -3, 3) - 1) ** 2, n_trials=8)
    proc = run_cli(tmp_path, "leaderboard", "--storage", storage, "--format", "csv", check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("sweep,rank,trial,state,value")
    assert len(lines) == 9
    assert lines[1].split(",")[2] == str(study.best_trial.number)


def test_leaderboard_without_storage_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "leaderboard")
    assert proc.returncode == 2
    assert "orchestrate launch" in proc.stderr and "Traceback" not in proc.stderr


def test_cuda_oom_is_named_and_retried_with_half_the_batch_size(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults: {slots: "cpu:1", wandb: disabled}
        sweeps:
          - name: oom
            program: @CURVE@
            method: grid
            retries: 2
            on_oom: halve_batch_size
            metric: {name: score, goal: maximize}
            parameters:
              batch_size: {value: 64}
              oom_above: {value: 16}
              epochs: {value: 2}
              sleep: {value: 0.01}
        """,
    )
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    trials = sorted(load_trials(tmp_path, "oom"), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert all(t.user_attrs["orchestrate.reason"].startswith("CUDA out of memory") for t in trials[:2])
    batches = [t.user_attrs["orchestrate.params"]["batch_size"] for t in trials]
    assert batches == [64, 32, 16]  # 64 → OOM → 32 → OOM → 16 fits
    assert len({t.user_attrs["orchestrate.point"] for t in trials}) == 1  # the same grid point throughout
