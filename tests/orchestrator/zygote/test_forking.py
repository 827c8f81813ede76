"""Process groups with real processes: end what a trial left behind (TERM, then KILL after the grace), reap it
as a subreaper, signal a lone process, and a forked child's exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.zygote import forking
from tests.orchestrator.executors.test_local import _alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc: Linux")

# a group leader that starts a child ignoring SIGTERM, prints both pids, then waits
STUBBORN = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE)
child.stdout.readline()
print(os.getpid(), child.pid, flush=True)
time.sleep(600)
"""


def _group(script: str) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    return proc, [int(p) for p in proc.stdout.readline().split()]


def test_end_group_terms_then_kills_what_is_left() -> None:
    proc, (leader, child) = _group(STUBBORN)
    try:
        start = time.monotonic()
        forking.end_group(leader, grace=0.5)
        # the leader died of SIGTERM; the child ignored it and was killed after the grace
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - start >= 0.5
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)  # (a zombie until init reaps it: a container's may not)
    finally:
        forking.kill_group(leader, signal.SIGKILL)
        proc.wait()


def test_an_empty_group_returns_at_once_and_a_lone_process_is_signalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not a group leader
    try:
        assert forking.kill_group(lone.pid, 0) is False
        with monkeypatch.context() as m:  # "at once": it never waits out the grace
            m.setattr(
                forking.time, "sleep", lambda s: pytest.fail(f"end_group slept {s} s on an empty group")
            )
            forking.end_group(lone.pid, grace=600.0)
        assert lone.poll() is None
        ticks = forking.start_ticks(lone.pid)
        assert ticks != "?" and ticks == forking.start_ticks(lone.pid)
        forking.signal_group(lone.pid, signal.SIGTERM)  # no group of that id: the process itself
        assert lone.wait(timeout=10) == -signal.SIGTERM
        assert forking.start_ticks(lone.pid) == "?"
    finally:
        lone.kill()
        lone.wait()


def test_a_subreaper_reaps_what_its_trial_left_behind(tmp_path: Path) -> None:
    """In a forked process made subreaper (a warm worker): the trial's orphan becomes its child, and
    ``end_group(reap=True)`` kills and reaps it (no zombie left that looks alive)."""
    out = tmp_path / "pids"
    script = f"""
import os, subprocess, sys, time
from orchestrator.zygote import forking
forking.become_subreaper()
r, w = os.pipe()
trial = os.fork()
if trial == 0:
    os.setsid()
    orphan = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    os.write(w, str(orphan.pid).encode())
    os._exit(0)
os.close(w)
orphan = int(os.read(r, 64))
os.waitpid(trial, 0)
forking.end_group(trial, 0.3, reap=True)
try:
    os.kill(orphan, 0)
    state = "alive"
except ProcessLookupError:
    state = "reaped"
open({str(out)!r}, "w").write(state)
"""
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", script], cwd=root, timeout=60, check=True)
    assert out.read_text() == "reaped"


def test_exit_with_gives_the_body_s_code_and_1_when_it_raises() -> None:
    def child(code: int) -> int:
        if code < 0:
            raise RuntimeError("boom")
        return code

    for code, expected in ((0, 0), (3, 3), (-1, 1)):
        pid = os.fork()
        if pid == 0:
            forking.exit_with(child, code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == expected
