"""The storage or the runs dir failing during a sweep, with real components: a PostgreSQL server stopped and
started again, a SQLite database held under an exclusive lock by another process, a full disk (a real tmpfs);
the controller killed while it waits. The sweep pauses (running trials go on, no new trial starts), retries,
and ends with every grid point COMPLETE exactly once: no result lost, no retry spent on a fault."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import CURVE, cli_env, run_cli
from tests.orchestrator.remote.conftest import PostgresServer, postgres_server

pytestmark = pytest.mark.e2e

QUALITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def sweep(tmp_path: Path, storage: str, qualities: list[float] = QUALITIES, epochs: int = 4) -> Path:
    path = tmp_path / "sweeps.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            defaults: {{slots: "cpu:2", wandb: disabled, retries: 0, storage: "{storage}"}}
            sweeps:
              - name: faults
                program: {CURVE}
                method: grid
                metric: {{name: score, goal: maximize}}
                parameters:
                  quality: {{values: {qualities}}}
                  epochs: {{value: {epochs}}}
                  sleep: {{value: 0.25}}
            """
        )
    )
    return path


class Launch:
    """``orchestrate launch`` in the background, its plain output in a file the test reads as it grows."""

    def __init__(self, tmp_path: Path, spec: Path, name: str = "launch.log") -> None:
        self.log = tmp_path / name
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
                cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pos = 0  # where the next wait starts reading

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, count: int = 1, deadline_s: float = 180) -> list[re.Match[str]]:
        """Block until ``pattern`` appears ``count`` times after the last match (a deadline only against hangs)."""
        rx = re.compile(pattern)
        end = time.time() + deadline_s
        while time.time() < end:
            found = list(rx.finditer(self.text(), self.pos))
            if len(found) >= count:
                self.pos = found[count - 1].end()
                return found[:count]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {count}× {pattern!r} in:\n{self.text()}")

    def finish(self) -> int:
        return self.proc.wait(timeout=300)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def trials_of(storage: str) -> list:
    url = storage.replace("postgresql://", "postgresql+psycopg2://")
    return optuna.load_study(study_name="faults", storage=url).get_trials(deepcopy=False)


def check_each_point_once(trials: list, qualities: list[float] = QUALITIES) -> list:
    """Every grid point COMPLETE exactly once; a FAIL only ever a fault's (not counted as an attempt)."""
    done = Counter(t.params["quality"] for t in trials if t.state == TrialState.COMPLETE)
    assert sorted(done) == sorted(qualities) and set(done.values()) == {1}, done
    fails = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("orchestrate.interrupted") for t in fails), [t.user_attrs for t in fails]
    assert not any(t.state == TrialState.RUNNING for t in trials)
    return fails


def first_start_after_back(launch: Launch, back_at: float) -> float:
    """Seconds from the storage coming back to the controller starting its next trial."""
    launch.wait_for(r"is back after")
    launch.wait_for(r"trial \d+ started")
    return time.time() - back_at


class SQLiteLock:
    """Another process holding ``BEGIN EXCLUSIVE`` on the study's database until released."""

    CODE = (
        "import sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "con.execute('COMMIT')\n"
    )

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


def sqlite_url(tmp_path: Path) -> str:
    # a busy timeout of 0.5 s (instead of 60 s) so that the lock shows within the test's few seconds
    return f"sqlite:///{tmp_path / 'runs' / 'orchestrate.db'}?timeout=0.5"


def test_sqlite_locked_beyond_busy_timeout_pauses_then_records_everything(tmp_path: Path) -> None:
    storage = sqlite_url(tmp_path)
    launch = Launch(tmp_path, sweep(tmp_path, storage))
    lock = None
    try:
        launch.wait_for(r"trial 1 step 1:")
        lock = SQLiteLock(tmp_path / "runs" / "orchestrate.db")
        launch.wait_for(r"paused: storage sqlite:///\S+ failed while trying to .*database is locked")
        launch.wait_for(r"trial \d+ COMPLETE", count=2)  # finished while paused: their results wait
        launch.wait_for(r"still paused: storage .*2 finished result\(s\) waiting")  # a retry failed
        lock.release()
        took = first_start_after_back(launch, time.time())
        assert launch.finish() == 0, launch.text()
    finally:
        if lock is not None:
            lock.release()
        launch.kill()
    fails = check_each_point_once(trials_of(storage.split("?")[0]))
    paused = launch.text().split("paused: storage", 1)[1].split("is back after", 1)[0]
    assert "started" not in paused  # no new trial while paused
    assert "its result waits for the storage, kept in" in paused
    assert "2 waiting result(s) recorded" in launch.text()
    print(
        f"\nSQLite lock: storage back → first new trial started {took:.2f}s; {len(fails)} trial(s) never ran"
    )
    for t in trials_of(
        storage.split("?")[0]
    ):  # the stored curve is whole: steps the pause held back came later
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [0, 1, 2, 3], t.number


def test_postgres_stopped_mid_sweep_pauses_then_records_everything(tmp_path: Path) -> None:
    server: PostgresServer = postgres_server()
    try:
        url = server.url("faults")
        launch = Launch(tmp_path, sweep(tmp_path, url))
        try:
            launch.wait_for(r"trial 1 step 1:")
            server.stop("fast")  # an admin restarts the database: connections are cut
            launch.wait_for(r"paused: storage postgresql://postgres@127\.0\.0\.1:\d+/faults failed")
            launch.wait_for(r"trial \d+ COMPLETE")  # a result waits for the server
            launch.wait_for(r"still paused: storage .*Connection refused")  # a retry failed
            server.start()
            took = first_start_after_back(launch, time.time())
            assert launch.finish() == 0, launch.text()
        finally:
            launch.kill()
        trials = trials_of(url)
        fails = check_each_point_once(trials)
        print(f"\nPostgreSQL restart: back → first new trial {took:.2f}s; {len(fails)} trial(s) never ran")
    finally:
        server.close()


def _deferred(launch: Launch, n: int) -> list[int]:
    """Wait for ``n`` trials to finish while the storage is paused; their numbers."""
    launch.wait_for(r"paused: storage")
    return [int(m.group(1)) for m in launch.wait_for(r"trial (\d+) COMPLETE", count=n)]


def _check_imported(tmp_path: Path, storage: str, numbers: list[int], relaunch_out: str) -> None:
    assert f"{len(numbers)} recorded from their result.json" in relaunch_out, relaunch_out
    trials = trials_of(storage)
    check_each_point_once(trials)
    by_number = {t.number: t for t in trials}
    for n in numbers:
        t = by_number[n]
        result = json.loads((tmp_path / "runs" / "faults" / f"{n:05d}" / "result.json").read_text())
        assert t.state == TrialState.COMPLETE and t.value == result["value"]
        assert t.user_attrs["orchestrate.imported_from"].endswith(f"{n:05d}/result.json")
        assert t.user_attrs["orchestrate.epochs"] == 4 and sorted(t.intermediate_values) == [0, 1, 2, 3]
        same_point = [u for u in trials if u.params["quality"] == t.params["quality"]]
        assert same_point == [t]  # not run again


def test_controller_killed_while_paused_relaunch_imports_results(tmp_path: Path) -> None:
    storage = sqlite_url(tmp_path)
    spec = sweep(tmp_path, storage)
    launch = Launch(tmp_path, spec)
    lock = None
    try:
        launch.wait_for(r"trial 1 step 1:")
        lock = SQLiteLock(tmp_path / "runs" / "orchestrate.db")
        numbers = _deferred(launch, 2)
        launch.kill()  # SIGKILL: nothing of the controller's memory survives, only the run dirs
    finally:
        if lock is not None:
            lock.release()
        launch.kill()
    plain = storage.split("?")[0]
    before = {t.number: t.state for t in trials_of(plain)}
    assert all(before[n] == TrialState.RUNNING for n in numbers)  # the storage never took them
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    _check_imported(tmp_path, plain, numbers, again.stdout)
    print(f"\nkilled while paused: {len(numbers)} result(s) imported from result.json, none re-run")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_paused_exits_130_and_keeps_results(tmp_path: Path, sig: int) -> None:
    """Ctrl-C (130) or SIGTERM (143, issue 14) while the storage is paused."""
    storage = sqlite_url(tmp_path)
    spec = sweep(tmp_path, storage)
    launch = Launch(tmp_path, spec)
    lock = None
    try:
        launch.wait_for(r"trial 1 step 1:")
        lock = SQLiteLock(tmp_path / "runs" / "orchestrate.db")
        numbers = _deferred(launch, 2)
        launch.proc.send_signal(sig)
        assert launch.finish() == 128 + sig, launch.text()
    finally:
        if lock is not None:
            lock.release()
        launch.kill()
    out = launch.text()
    assert re.search(
        r"\d+ finished result\(s\) could not be recorded \(storage sqlite:///\S+: .*locked", out
    ), out
    assert "kept in their run directories (result.json)" in out and "imports them" in out
    assert "Traceback" not in out
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    _check_imported(tmp_path, storage.split("?")[0], numbers, again.stdout)


@pytest.fixture
def small_disk(tmp_path: Path):
    """``tmp_path/runs`` on its own 16 MiB tmpfs (a disk a test can fill); skipped where mounting is not allowed."""
    runs = tmp_path / "runs"
    runs.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(runs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield runs
    finally:
        subprocess.run(["umount", "-l", str(runs)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
        try:  # the last few KiB too
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_disk_full_mid_sweep_pauses_and_spends_no_retry(tmp_path: Path, small_disk: Path) -> None:
    storage = f"sqlite:///{small_disk / 'orchestrate.db'}"  # the study on the same disk, as by default
    launch = Launch(tmp_path, sweep(tmp_path, storage))
    filler = small_disk / "filler"
    try:
        launch.wait_for(r"trial 1 step 1:")
        fill(filler)
        launch.wait_for(r"paused: (runs dir|storage) ")
        launch.wait_for(r"trial \d+ (COMPLETE|FAIL)")  # a trial ended on the full disk
        launch.wait_for(r"still paused: ")  # a retry failed
        filler.unlink()
        took = first_start_after_back(launch, time.time())
        assert launch.finish() == 0, launch.text()
    finally:
        launch.kill()
    fails = check_each_point_once(trials_of(storage))  # retries: 0, so a counted failure would leave a point
    print(
        f"\ndisk full: space back → first new trial {took:.2f}s; {len(fails)} run(s) again after the disk failed"
    )


def test_a_stale_result_json_of_another_database_is_not_imported(tmp_path: Path) -> None:
    """A runs dir reused with a fresh database: trial 0's folder still holds the old study's result.json when
    the new controller dies while its own trial 0 runs. The relaunch must run that point, not import it."""
    storage = f"sqlite:///{tmp_path / 'runs' / 'orchestrate.db'}"
    spec = sweep(tmp_path, storage, qualities=[0.1, 0.2], epochs=3)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    old = json.loads((tmp_path / "runs" / "faults" / "00000" / "result.json").read_text())
    assert old["state"] == "COMPLETE" and "record" in old
    (tmp_path / "runs" / "orchestrate.db").unlink()
    spec = sweep(tmp_path, storage, qualities=[0.1, 0.2], epochs=10)  # slow enough to be killed while running
    launch = Launch(tmp_path, spec, "second.log")
    try:
        launch.wait_for(r"trial 0 step 1:")
    finally:
        launch.kill()
    assert trials_of(storage)[0].state == TrialState.RUNNING
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "recorded from their result.json" not in again.stdout
    trials = trials_of(storage)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["orchestrate.interrupted"]
    assert "orchestrate.imported_from" not in trials[0].user_attrs
    check_each_point_once(trials, [0.1, 0.2])
