"""Issue 14 end to end: hostile trials and careless inputs end in a clear message and the documented exit code,
with no trial left RUNNING and no process left behind. Real CLI subprocesses, real trials, real SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import ROOT, cli_env, load_trials, run_cli, start_launch

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
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    (trial,) = load_trials(tmp_path, "hostile")
    assert trial.state == TrialState.COMPLETE and trial.value == 1.0
    orphan = int((tmp_path / "orphan.pid").read_text())
    _wait_for(lambda: not _alive(orphan), timeout=30)


@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        ("starting", signal.SIGINT),
        ("starting", signal.SIGTERM),
        ("running", signal.SIGINT),
        ("running", signal.SIGTERM),
        ("running", signal.SIGHUP),  # a closed terminal: it died on the spot before
    ],
)
def test_sigint_and_sigterm_exit_130_143_leaving_nothing_behind(tmp_path: Path, phase: str, sig: int) -> None:
    """Ctrl-C, SIGTERM or SIGHUP while a trial is starting (no report yet) or running (reported, with a leftover
    process that ignores SIGTERM and holds its stdout): the launch exits 128 + signal, its trial is not left
    RUNNING in the study, and none of its processes is left."""
    started = tmp_path / "started"
    started.mkdir()
    if phase == "starting":
        params = "      epochs: {value: 1}\n      sleep: {value: 600}\n"
    else:
        params = f"      epochs: {{value: 2}}\n      hold: {{value: 600}}\n      orphan: {{value: {tmp_path / 'orphan.pid'}}}\n"
    spec = _spec(tmp_path, params + f"      started: {{value: {started}}}\n", workers_slots="cpu:1")
    proc = start_launch(tmp_path, spec)
    try:
        _wait_for(lambda: any(started.iterdir()))
        if phase == "running":
            _wait_for(lambda: len(list(tmp_path.glob("runs/hostile/*/metrics.jsonl"))) == 1)
            _wait_for(
                lambda: len(next(tmp_path.glob("runs/hostile/*/metrics.jsonl")).read_text().splitlines()) == 2
            )
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)  # a hang guard: it ends within grace + seconds
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err
    assert "again to resume" in out
    trials = load_trials(tmp_path, "hostile")
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("orchestrate.interrupted") for t in trials)
    pids = [int(p.read_text()) for p in started.iterdir()]
    if phase == "running":
        pids.append(int((tmp_path / "orphan.pid").read_text()))
    _wait_for(lambda: not any(_alive(p) for p in pids), timeout=15)


def test_unexpected_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    """Commands forced into errors nobody planned for (a corrupt module state, a storage URL of an unknown
    dialect, a report folder that is a file): one line and exit 1 — the traceback only with --debug."""
    (tmp_path / "sitecustomize.py").write_text(
        "import orchestrator.leaderboard as lb\n"
        "def _boom(*a, **k):\n    raise ZeroDivisionError('forced for the test')\n"
        "lb.build = _boom\n"
    )
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    import optuna

    (tmp_path / "runs").mkdir()
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'runs' / 'orchestrate.db'}")
    for args in (["leaderboard"], ["--debug", "leaderboard"]):
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        if args[0] == "--debug":
            assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr
        else:
            assert "Traceback" not in proc.stderr
            assert "unexpected ZeroDivisionError: forced for the test" in proc.stderr
            assert "rerun with --debug" in proc.stderr
    for args in (
        ["status", "--storage", "nosuchdialect://x/y"],
        ["leaderboard", "--storage", "nosuchdialect://x/y"],
    ):
        proc = run_cli(tmp_path, *args)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip(), args


def test_timeout_stops_and_fails_the_trial_without_retrying_it(tmp_path: Path) -> None:
    """timeout: 1s on a trial that never ends: it is stopped, FAILED with reason 'timeout …', not retried
    although retries: 2 (retry_on_timeout is not set); the launch ends."""
    started = tmp_path / "started"
    started.mkdir()
    spec = _spec(
        tmp_path,
        f"      sleep: {{value: 600}}\n      started: {{value: {started}}}\n",
        extra="    timeout: 1s\n    retries: 2\n",
        workers_slots="cpu:1",
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain", "--workers", "fresh", timeout=300)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr
    (trial,) = load_trials(tmp_path, "hostile")  # one attempt only
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["orchestrate.reason"] == "timeout: ran longer than 1s"
    assert trial.duration is not None and trial.duration.total_seconds() >= 1.0
    (pid,) = [int(p.read_text()) for p in started.iterdir()]
    _wait_for(lambda: not _alive(pid), timeout=15)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1.5h", 5400.0), ("1d", 86400.0)],
)
def test_timeout_values(value: str, seconds: float) -> None:
    from orchestrator.spec.loader import parse_duration

    assert parse_duration(value) == seconds
    assert parse_duration(int(seconds)) == seconds


def test_bad_timeout_is_exit_2_with_file_line_key(tmp_path: Path) -> None:
    from orchestrator.spec import load_sweeps
    from orchestrator.trial.errors import SpecError

    for bad in ("0", "-5", "soon", "2 weeks", ".nan", "true", "[1]"):
        spec = _spec(tmp_path, "      epochs: {value: 1}\n", extra=f"    timeout: {bad}\n")
        with pytest.raises(SpecError) as err:
            load_sweeps(spec)
        assert (err.value.exit_code, err.value.line, err.value.key) == (2, 10, "sweeps[0].timeout"), bad
        assert "must be a positive duration" in err.value.message
    proc = run_cli(tmp_path, "launch", str(spec), "--dry-run")  # and the CLI says it so, exit 2
    assert (
        proc.returncode == 2 and f"{spec}:10: sweeps[0].timeout: must be a positive duration" in proc.stderr
    )


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_only_commands_never_write_into_a_foreign_or_empty_database(tmp_path: Path) -> None:
    """leaderboard, status and report on an empty file, a SQLite database of another program and a file of
    random bytes: exit 2 'not an orchestrate/Optuna study', the file byte for byte as it was, no file beside it
    (no WAL, no journal); on a missing path: exit 2 and nothing created."""
    import sqlite3

    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE people (name TEXT)")
    con.execute("INSERT INTO people VALUES ('ada')")
    con.commit()
    con.close()
    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "noise.db").write_bytes(bytes(range(256)) * 64)
    commands = (["leaderboard"], ["status"], ["report", "--out", str(tmp_path / "report")])
    runs = [(name, cmd) for cmd in commands for name in ("foreign.db",)] + [("empty.db", ["leaderboard"])]
    for name, cmd in runs:  # the real commands …
        path = tmp_path / name
        before, listing = _sha256(path), sorted(p.name for p in tmp_path.iterdir())
        proc = run_cli(tmp_path, *cmd, "--storage", f"sqlite:///{path}")
        assert proc.returncode == 2, (name, cmd, proc.stderr)
        assert "not an orchestrate/Optuna study" in proc.stderr and "Traceback" not in proc.stderr
        assert _sha256(path) == before, (name, cmd)
        assert sorted(p.name for p in tmp_path.iterdir()) == listing, (name, cmd)
    from orchestrator.storage import check_study_storage
    from orchestrator.trial.errors import UsageError

    for name in (
        "empty.db",
        "foreign.db",
        "noise.db",
    ):  # … and the check they all share, on every kind of file
        path = tmp_path / name
        before = _sha256(path)
        with pytest.raises(UsageError, match="not an orchestrate/Optuna study") as err:
            check_study_storage(f"sqlite:///{path}")
        assert err.value.exit_code == 2 and _sha256(path) == before
    missing = tmp_path / "sub" / "missing.db"
    proc = run_cli(tmp_path, "status", "--storage", f"sqlite:///{missing}")
    assert proc.returncode == 2 and "no storage at" in proc.stderr, proc.stderr
    with pytest.raises(UsageError, match="no storage at"):
        check_study_storage(f"sqlite:///{missing}?timeout=5")
    assert not missing.exists() and not missing.parent.exists()


def _study_names(tmp_path: Path) -> list[str]:
    import optuna

    return sorted(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'runs' / 'orchestrate.db'}"))


def test_relaunch_with_a_changed_spec_is_exit_2_listing_the_changes_and_new_starts_a_fresh_study(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, "      quality: {values: [1.0, 0.5]}\n      epochs: {value: 1}\n")
    run_cli(tmp_path, "launch", str(spec), "--plain", "--workers", "fresh", check=True)
    spec.write_text(spec.read_text().replace("[1.0, 0.5]", "[1.0, 0.25]"))
    changed = run_cli(tmp_path, "launch", str(spec), "--plain", "--workers", "fresh")
    assert changed.returncode == 2, changed.stderr
    assert "Traceback" not in changed.stderr
    assert f"{spec}:6: sweep 'hostile' differs from the sweep its study was created with:" in changed.stderr
    assert '"values": [1.0, 0.5]' in changed.stderr and '"values": [1.0, 0.25]' in changed.stderr
    assert "--new" in changed.stderr
    old = load_trials(tmp_path, "hostile")
    assert sorted(t.params["quality"] for t in old) == [0.5, 1.0]  # untouched, nothing RUNNING
    assert all(t.state == TrialState.COMPLETE for t in old)

    fresh = run_cli(tmp_path, "launch", str(spec), "--plain", "--workers", "fresh", "--new", check=True)
    assert "gets a fresh study 'hostile-2'" in fresh.stdout + fresh.stderr
    assert _study_names(tmp_path) == ["hostile", "hostile-2"]
    assert sorted(t.params["quality"] for t in load_trials(tmp_path, "hostile-2")) == [0.25, 1.0]
    assert (tmp_path / "runs" / "hostile-2").is_dir()  # its own run folders: no trial number clashes

    # --new again (retries changed, which is not part of the search): resumes hostile-2, runs nothing more
    spec.write_text(spec.read_text().replace("  retries: 0\n", "  retries: 3\n"))
    again = run_cli(tmp_path, "launch", str(spec), "--plain", "--workers", "fresh", "--new", check=True)
    assert "resumes its study 'hostile-2'" in again.stdout + again.stderr
    assert _study_names(tmp_path) == ["hostile", "hostile-2"]
    assert len(load_trials(tmp_path, "hostile-2")) == 2


def test_a_launch_whose_output_is_closed_goes_on_and_records_every_trial(tmp_path: Path) -> None:
    """``orchestrate launch … | head -3``: the reader of its output leaves while trials run. Before, click (plain
    output) and rich (the live view) exited 1 at once, silently, leaving the running trials orphaned in the
    study; now the launch says so once on stderr and runs the sweep to its end."""
    spec = _spec(
        tmp_path, "      quality: {values: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}\n      epochs: {value: 3}\n"
    )
    proc = start_launch(tmp_path, spec)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert "launch" in first
    proc.stdout.close()  # as `head -1` does: its next lines meet a closed pipe
    try:
        err = proc.stderr.read()  # (to its end: the launch's end)
        assert proc.wait(timeout=300) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.count("the output can no longer be written (Broken pipe); the launch goes on") == 1, err
    assert "Traceback" not in err
    trials = load_trials(tmp_path, "hostile")
    assert sorted(t.params["quality"] for t in trials) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert all(t.state == TrialState.COMPLETE for t in trials)
