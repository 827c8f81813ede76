"""The local executor with real processes: missing programs, PATH and relative programs, death with the parent."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.executors._base import Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.slots import Slot
from orchestrator.trial.rundir import RunDir


def _run(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    events: queue.Queue = queue.Queue()
    job = Job(
        key="t#0", slot=Slot(id="cpu0", kind="cpu"), run_dir=RunDir(tmp_path / "run").create(), argv=argv
    )
    LocalExecutor(events).submit(job, env or dict(os.environ), tmp_path)
    while True:
        kind, _, payload = events.get(timeout=60)
        if kind == "exit":
            return payload, job.run_dir.stdout_log.read_text(), job.run_dir.stderr_log.read_text()


def test_a_missing_program_exits_127_with_its_name(tmp_path: Path) -> None:
    rc, _, err = _run(tmp_path, ["no-such-program-xyz", "--lr=1"])
    assert rc == 127 and "cannot start 'no-such-program-xyz'" in err
    rc, _, err = _run(tmp_path, ["./missing.sh"])
    assert rc == 127 and "./missing.sh" in err


def test_programs_found_on_the_env_path_and_relative_to_cwd(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "say"
    prog.write_text('#!/bin/sh\necho "$0|$*"\n')
    prog.chmod(0o755)
    rc, out, _ = _run(tmp_path, ["say", "--help", "-x"], {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"})
    assert rc == 0 and out.strip().endswith("|--help -x")  # arguments reach the program, not a wrapper
    rc, out, _ = _run(tmp_path, ["./bin/say", "a b"])
    assert rc == 0 and out.strip().endswith("|a b")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_when_the_controller_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the process that started a trial (no chance to clean up) still ends the trial."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import os, queue, sys, time
        from pathlib import Path
        from orchestrator.executors._base import Job
        from orchestrator.executors.local import LocalExecutor
        from orchestrator.trial.rundir import RunDir
        from orchestrator.slots import Slot
        job = Job(key="t#0", slot=Slot(id="cpu0", kind="cpu"), run_dir=RunDir({str(tmp_path / "run")!r}).create(),
                  argv=[sys.executable, "-c", "import time; time.sleep(600)"])
        LocalExecutor(queue.Queue()).submit(job, dict(os.environ), Path.cwd())
        Path({str(pidfile)!r}).write_text(str(job.pid))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[3])
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.1)
        child = int(pidfile.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(600):
            if not _alive(child):
                break
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for a reaper that a container may not have)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone: ENOENT, or ESRCH when it ends between the open and the read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
