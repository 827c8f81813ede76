"""Warm trials on SSH hosts (real sshd on 127.0.0.1, the real SSH executor): the box's zygote daemon imports
once and forks the trials; a launcher that dies takes its trial with it; stops, ``--kill``, the idle exit and
``--workers fresh`` (orchestrator/remote.py)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import remote
from orchestrator.executors._base import Job
from orchestrator.executors.ssh import SSHExecutor
from orchestrator.hosts import host_slots
from orchestrator.spec.model import HostSpec
from orchestrator.trial.rundir import RunDir
from tests.orchestrator.remote.conftest import SSHBox

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork servers: Linux")

# imported by the daemon (ORCHESTRATE_PRELOAD): each import appends the importing pid to rwprobe.log
PROBE = """
import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rwprobe.log"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")
"""
# the trial: what it sees, a metric, then sleeps for --sleep seconds
TRIAL = """
import os, sys, time
from orchestrator.trial import protocol
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
protocol.emit("info", preloaded="rwprobe" in sys.modules, pid=os.getpid(), pgid=os.getpgrp(), cwd=os.getcwd(),
              secret=os.environ.get("RW_TEST_TOKEN"), argv=sys.argv[1:])
protocol.report(1, {"score": float(args.get("x", 0))})
time.sleep(float(args.get("sleep", 0)))
"""


def _alive(pid: int) -> bool:
    return remote._start_ticks(pid) != "?" and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait(cond: Any, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _daemons(folder: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"--zygote" in cmd and str(folder).encode() in cmd and _alive(int(pid)):
                    pids.append(int(pid))
    return pids


class Box:
    """One box's SSH executor, its trial programs, and its zygote folder (emptied before and after a test)."""

    def __init__(self, tmp_path: Path, box: SSHBox, warm: bool = True, idle: float = 300) -> None:
        self.tmp, self.box = tmp_path, box
        (box.workdir / "rwprobe.py").write_text(PROBE)
        (box.workdir / "rwtrial.py").write_text(TRIAL)
        self.folder = box.workdir / ".orchestrate" / "zygote"
        self.host = HostSpec(
            name=box.name, ssh=box.dest, port=box.port, identity_file=str(box.key),
            known_hosts=str(box.known_hosts), gpus="cpu:1", workdir=str(box.workdir), python=sys.executable,
        )  # fmt: skip
        self.slot = host_slots(self.host)[0]
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.ex = SSHExecutor(self.events, [self.host], warm=warm)
        self.idle = idle
        self.n = 0

    def imports(self) -> list[str]:
        log = self.box.workdir / "rwprobe.log"
        return log.read_text().split() if log.exists() else []

    def sockets(self) -> list[Path]:
        return sorted(self.folder.glob("*.sock")) if self.folder.is_dir() else []

    def clear(self) -> None:
        """No daemon of this box's folder left: their sockets removed, they leave within a second."""
        for sock in self.sockets():
            sock.unlink()
        _wait(lambda: not _daemons(self.folder), "the box's zygote daemons exit once their socket is gone")
        with contextlib.suppress(FileNotFoundError):
            (self.box.workdir / "rwprobe.log").unlink()

    def submit(self, x: int, sleep: float = 0) -> Job:
        self.n += 1
        job = Job(
            key=f"rw#{self.n}",
            slot=self.slot,
            run_dir=RunDir(self.tmp / "runs" / f"t{self.n}"),
            argv=[sys.executable, "-u", "-m", "rwtrial", f"--x={x}", f"--sleep={sleep}"],
        )
        env = dict(os.environ)
        env.update(self.slot.env())
        env.update(
            ORCHESTRATE_PRELOAD="rwprobe",
            ORCHESTRATE_ZYGOTE_IDLE_S=str(self.idle),
            RW_TEST_TOKEN=f"token-{self.n}",
        )
        self.ex.submit(job, env, self.tmp)
        return job

    def run(self, job: Job, until: str = "exit") -> dict[str, Any]:
        """The job's events until its exit (or until its trial said hello: ``until="info"``)."""
        got: dict[str, Any] = {"metrics": []}
        while True:
            kind, j, payload = self.events.get(timeout=120)
            assert j is job, f"unexpected {kind} from {j.key}"
            if kind == "exit":
                got["rc"] = payload
                return got
            if payload.get("event") == "info":
                got.update(payload)
                if until == "info" and "preloaded" in got and "remote_pid" in got:
                    return got
            elif payload.get("event") == "metrics":
                got["metrics"].append(payload)

    def close(self) -> None:
        self.ex.close()


@pytest.fixture
def box(tmp_path: Path, ssh_boxes: list[SSHBox]) -> Iterator[Box]:
    b = Box(tmp_path, ssh_boxes[0])
    b.clear()
    try:
        yield b
    finally:
        b.close()
        b.clear()


def test_the_daemon_imports_once_and_forks_the_next_trials(box: Box) -> None:
    first = box.run(box.submit(1))
    assert first["rc"] == 0 and first["remote_warm"] is False  # no daemon yet: it runs fresh, one is started
    assert not first["preloaded"]
    _wait(box.sockets, "the daemon listens once it has imported")
    results = [box.run(box.submit(x)) for x in (2, 3)]
    for x, r in enumerate(results, start=2):
        assert r["rc"] == 0, r
        assert r["remote_warm"] is True and r["preloaded"] is True
        assert r["pid"] == r["pgid"] == r["remote_pid"]  # its own session: its pid is its group, as recorded
        assert r["cwd"] == str(box.box.workdir) and r["argv"] == [f"--x={x}", "--sleep=0"]
        assert r["secret"] == f"token-{x}"  # the trial's own environment, not the first trial's
        assert [m["metrics"]["score"] for m in r["metrics"]] == [
            float(x)
        ]  # metric lines reach the controller
    assert len(box.imports()) == 1  # the daemon's import, for both trials
    (daemon,) = _daemons(box.folder)
    secret = Path(f"/proc/{daemon}/environ").read_bytes()
    assert b"RW_TEST_TOKEN" not in secret  # no trial's secret lives on in the daemon


def test_a_dead_launcher_takes_its_trial_with_it_and_kill_still_works(box: Box) -> None:
    box.run(box.submit(1))
    _wait(box.sockets, "the daemon listens")
    job = box.submit(2, sleep=300)
    info = box.run(job, until="info")
    assert info["remote_warm"] is True
    trial = int(info["remote_pid"])
    launchers = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and b"orchestrator.remote" in _cmdline(int(p))
        and b"--zygote" not in _cmdline(int(p))
        and _cwd(int(p)) == str(box.box.workdir)
    ]
    assert len(launchers) == 1, launchers
    os.kill(launchers[0], signal.SIGKILL)  # the launcher dies at once (as with its box's sshd killed)
    _wait(lambda: not _alive(trial), "the trial stops once its lifeline ends")
    assert box.run(job)["rc"] != 0

    # `orchestrate` cleaning up after a dead controller: `python -m orchestrator.remote --kill RUN_DIR`
    job = box.submit(3, sleep=300)
    info = box.run(job, until="info")
    assert info["remote_warm"] is True
    notes = box.ex.cleanup([{"host": box.host.name, "run_dir": info["remote_run_dir"]}])
    assert notes == [f"stopped process group {info['remote_pid']} on {os.uname().nodename}"], notes
    assert box.run(job)["rc"] == -signal.SIGTERM
    assert not _alive(int(info["remote_pid"]))


def test_a_stopped_trial_exits_minus_15_and_the_daemon_goes_on(box: Box) -> None:
    box.run(box.submit(1))
    _wait(box.sockets, "the daemon listens")
    job = box.submit(2, sleep=300)
    info = box.run(job, until="info")
    assert info["remote_warm"] is True
    box.ex.stop(job, grace=30)
    assert box.run(job)["rc"] == -signal.SIGTERM
    assert not (Path(info["remote_run_dir"]) / "stop.json").exists()  # an interruption: no reason given
    nxt = box.run(box.submit(3))
    assert nxt["rc"] == 0 and nxt["remote_warm"] is True and nxt["preloaded"] is True
    assert len(box.imports()) == 1
    # a pruned trial learns why on the box, before its SIGTERM (its W&B run then finishes, tagged pruned)
    job = box.submit(4, sleep=300)
    info = box.run(job, until="info")
    job.stopping = "pruned"
    box.ex.stop(job, grace=30)
    assert box.run(job)["rc"] == -signal.SIGTERM
    assert json.loads((Path(info["remote_run_dir"]) / "stop.json").read_text()) == {"reason": "pruned"}


def test_an_idle_daemon_leaves_and_the_next_trial_starts_another(tmp_path: Path, ssh_boxes) -> None:
    box = Box(tmp_path, ssh_boxes[0], idle=1)
    box.clear()
    try:
        assert box.run(box.submit(1))["remote_warm"] is False
        _wait(lambda: len(_daemons(box.folder)) == 1, "a daemon is started")
        first = _daemons(box.folder)
        _wait(lambda: not _daemons(box.folder), "the idle daemon exits")
        assert not box.sockets()  # … and removed its socket
        assert box.run(box.submit(2))["remote_warm"] is False  # none ready: fresh, and a new one starts
        _wait(box.sockets, "the new daemon listens")
        assert _daemons(box.folder) != first
        assert len(box.imports()) == 2
    finally:
        box.close()
        box.clear()


def test_a_daemon_leaves_when_newer_code_is_synced(box: Box) -> None:
    box.run(box.submit(1))
    _wait(box.sockets, "the daemon listens")
    marker = box.box.workdir / ".orchestrate" / "code_version"
    version = marker.read_text()
    try:
        marker.write_text(version + "-newer")  # what the next launch's code sync does
        _wait(lambda: not _daemons(box.folder), "the daemon with the older code exits")
        assert not box.sockets()
    finally:
        marker.write_text(version)


def test_workers_fresh_never_starts_a_daemon(tmp_path: Path, ssh_boxes) -> None:
    box = Box(tmp_path, ssh_boxes[0], warm=False)
    box.clear()
    try:
        for x in (1, 2):
            r = box.run(box.submit(x))
            assert r["rc"] == 0 and r["remote_warm"] is False and not r["preloaded"]
        assert not box.sockets() and not _daemons(box.folder) and not box.imports()
    finally:
        box.close()


def test_launchers_starting_at_once_start_one_daemon(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[3])  # this checkout's orchestrator, as a trial's PYTHONPATH
    env = {"ORCHESTRATE_PRELOAD": "json", "ORCHESTRATE_ZYGOTE_IDLE_S": "300", "PYTHONPATH": root}
    place = remote._zygote_place(env, str(tmp_path))
    assert place is not None
    folder, name = place
    try:
        for _ in range(3):  # three launchers found no daemon, and each starts one
            remote._spawn_daemon(folder, name, env, str(tmp_path))
        conns: list[Any] = []

        def answers() -> bool:
            conns.append(remote._connect(folder, name, env, str(tmp_path)))
            return conns[-1] is not None

        _wait(answers, "a daemon listens")
        conns[-1].close()
        _wait(lambda: len(_daemons(folder)) == 1, "the others saw its lock and left")
    finally:
        for sock in folder.glob("*.sock"):
            sock.unlink()
        _wait(lambda: not _daemons(folder), "the daemon leaves once its socket is gone")


def test_the_zygote_key_is_warm_workers_and_long_paths_get_a_private_tmp_folder(tmp_path: Path) -> None:
    from orchestrator.executors import warm

    assert remote.ZYGOTE_ENV == warm.ZYGOTE_ENV
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    place = remote._zygote_place({}, str(deep))
    assert place is not None
    folder, name = place
    try:
        assert str(folder).startswith("/tmp/orchestrate-zygote-") and len(str(folder / f"{name}.sock")) < 108
        assert (folder.stat().st_mode & 0o777) == 0o700
        assert remote._zygote_place({"PYTHONPATH": "x"}, str(deep)) != place  # another start-up: another one
        assert remote._zygote_place({"RW_TOKEN": "x"}, str(deep)) == place  # a trial's own variable: the same
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert remote._warm_module([sys.executable, "-u", "-m", "pkg.mod", "--a"]) == ("pkg.mod", ["--a"])
    assert remote._warm_module([sys.executable, "train.py"]) is None
    assert remote._warm_module(["/usr/bin/env", "python", "-m", "x"]) is None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
