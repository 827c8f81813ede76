"""The zygote's two servers with real processes: a daemon forks a trial per connection (its output on the
descriptors sent, its exit status answered, its lifeline stopping it), lists itself, and leaves on SIGTERM; a
launch's forker forks a worker, which forks a trial and reports its pid and exit status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.zygote import client, keys, workers
from tests.orchestrator.executors.test_local import _alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork servers: Linux")

ROOT = Path(__file__).resolve().parents[3]
TRIAL = """
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
print(f"trial {os.getpid()} pgid {os.getpgrp()} cwd {os.getcwd()} token {os.environ.get('ZT_TOKEN')}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(float(args.get("sleep", 0)))
sys.exit(int(args.get("rc", 0)))
"""


def _wait(cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "zttrial.py").write_text(TRIAL)
    return tmp_path


@pytest.fixture
def daemon(code: Path) -> Iterator[tuple[Path, str, dict[str, str]]]:
    folder = Path(tempfile.mkdtemp(prefix="zd"))  # short: a socket's path
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCHESTRATE_PRELOAD": "json",
        "ORCHESTRATE_ZYGOTE_IDLE_S": "60",
    }
    proc = client.spawn_local(folder, "test", env, str(code))
    try:
        _wait((folder / "test.sock").exists)
        yield folder, "test", env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _fork(folder: Path, env: dict[str, str], cwd: Path, *args: str) -> tuple[client.WarmTrial, int, int]:
    conn = client.connect(folder, "test", env, str(cwd))
    assert conn is not None
    out_r, out_w = os.pipe()
    err = os.open(cwd / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        trial = client.fork_trial(
            conn, "zttrial", list(args), {**env, "ZT_TOKEN": "t"}, str(cwd), 5.0, out_w, err
        )
    finally:
        os.close(out_w)
        os.close(err)
    assert trial is not None
    return trial, out_r, trial.pid


def test_a_daemon_forks_a_trial_answers_its_status_and_lists_itself(
    daemon: tuple[Path, str, dict[str, str]], code: Path
) -> None:
    folder, name, env = daemon
    trial, out_r, pid = _fork(folder, env, code, "rc=3")
    with os.fdopen(out_r) as out:
        line = out.readline()
    assert line.strip() == f"trial {pid} pgid {pid} cwd {code} token t"
    assert trial.wait() == 3
    os.close(trial.lifeline)
    trial.conn.close()
    assert (code / "stderr.log").read_text() == "to stderr\n"
    (z,) = client.zygotes(folder)
    assert z["name"] == name and z["served"] == 1 and z["cwd"] == str(code)
    assert z["env"]["ORCHESTRATE_PRELOAD"] == "json" and "ZT_TOKEN" not in z["env"]
    assert f"zygote {name} (trials): pid {z['pid']}," in client.render_zygotes([z])
    os.kill(z["pid"], signal.SIGTERM)  # it removes its socket and leaves (no trial running)
    _wait(lambda: not _alive(z["pid"]))
    assert not (folder / f"{name}.sock").exists() and client.zygotes(folder) == []


def test_a_trial_whose_requester_is_gone_stops_itself(
    daemon: tuple[Path, str, dict[str, str]], code: Path
) -> None:
    folder, _, env = daemon
    trial, out_r, pid = _fork(folder, env, code, "sleep=600")
    with os.fdopen(out_r) as out:  # read first: a trial printing into a closed pipe would end by EPIPE (rc 1)
        assert out.readline().startswith(f"trial {pid} ")  # it sleeps now
        os.close(trial.lifeline)  # as when the requester dies
        _wait(lambda: not _alive(pid))
    assert trial.wait() == -signal.SIGTERM
    assert "the launcher is gone; stopping the trial" in (code / "stderr.log").read_text()
    trial.conn.close()


def test_the_daemon_key_depends_on_the_start_up_environment_only(tmp_path: Path) -> None:
    root = tmp_path / "rt"
    base = keys.place({}, "", "v1", root)
    assert base is not None and base[0] == root and (root.stat().st_mode & 0o777) == 0o700
    assert keys.place({"WANDB_RUN_ID": "x"}, "", "v1", root) == base
    assert keys.place({"PYTHONPATH": "x"}, "", "v1", root) != base
    assert keys.place({}, "", "v2", root) != base
    assert client.warm_module([sys.executable, "-u", "-u", "-m", "m", "a"]) == ("m", ["a"])


def test_a_forker_forks_a_worker_which_forks_and_reports_its_trials(tmp_path: Path, code: Path) -> None:
    ours, theirs = workers.socket_pair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    log = tmp_path / "worker.log"
    with open(log, "ab") as err:
        forker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.zygote", "--forker", "json"],
            cwd=code, env=env, stdin=theirs.fileno(), stderr=err,
        )  # fmt: skip
    theirs.close()
    handle = workers.Forker(forker, ours)
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            worker = handle.fork_worker(workers.worker_env({**env, "WANDB_RUN_ID": "r"}), code, fd)
        finally:
            os.close(fd)
        assert worker.stdin is not None and worker.stdout is not None
        request = {"module": "zttrial", "args": ["rc=4"], "env": {**env, "ZT_TOKEN": "w"}, "cwd": str(code),
                   "stderr": str(tmp_path / "trial.err")}  # fmt: skip
        worker.stdin.write((json.dumps(request) + "\n").encode())
        started = json.loads(worker.stdout.readline().decode()[len(workers.CONTROL) :])
        output = worker.stdout.readline().decode()
        ended = json.loads(worker.stdout.readline().decode()[len(workers.CONTROL) :])
        assert started["event"] == "started" and ended == {"event": "exit", "rc": 4}
        assert output.startswith(f"trial {started['pid']} pgid {started['pid']}") and output.endswith(
            "token w\n"
        )
        assert (tmp_path / "trial.err").read_text() == "to stderr\n"
        worker.stdin.close()  # its stdin ends: it exits (and its stdout with it)
        assert worker.stdout.read() == b""
    finally:
        handle.close()
        forker.wait(timeout=30)
    assert forker.returncode == 0


def test_the_remote_launcher_s_old_daemon_command_line_still_runs_one(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="zo"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCHESTRATE_PRELOAD": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.remote", "--zygote", str(folder), "old"], cwd=tmp_path, env=env
    )
    try:
        _wait((folder / "old.sock").exists)
        (z,) = client.zygotes(folder)
        assert z["pid"] == proc.pid and z["version"] == ""  # a box's: the synced code version (none here)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        shutil.rmtree(folder, ignore_errors=True)
