"""The remote launcher: ``python -m orchestrator.remote`` runs one trial on a host, fed by the SSH session.

The controller's SSH executor starts it with ``cd WORKDIR && exec PYTHON -m orchestrator.remote`` and writes one
JSON line on the session's stdin::

    {"argv": [...], "env": {...}, "run_dir": "...", "files": {"trial.json": "..."}, "grace": 10, "fresh": true}

``fresh``: the controller sent nothing else into the run directory, so whatever is there (a checkpoint of an
earlier launch's trial of the same number) is removed first; without it the directory holds what the controller
sent just before (the checkpoint a re-queued trial resumes from).

The environment (the W&B API key and other secrets included) travels only this way: never on a command line that
``ps`` shows, never written to a file. ``@@ORCHESTRATE_WORKDIR@@`` in any string is replaced by the workdir.

It writes the files into the run directory, reports ``{"event": "info", "remote_pid", "remote_pgid", …}``,
starts the trial in its own process group with stdout/stderr on the session (metric lines reach the controller
exactly as from a local child), then keeps reading stdin: ``TERM`` / ``KILL`` signal the trial's group, and end of
file (the controller or the connection went away) stops it (SIGTERM, grace, SIGKILL). When the trial ends it
reports ``{"event": "info", "remote_exit": RC, "remote_files": N}`` (RC negative for a signal, as Popen gives
it; N files the trial wrote, to copy back), so the controller tells a trial's own exit code apart from ssh's 255
for a lost connection.

``python -m orchestrator.remote --kill RUN_DIR`` stops the process group a launcher recorded in
``RUN_DIR/remote.pid`` (after a controller died), checking the process start time so a recycled pid is spared.

Standard library only (plus orchestrator.protocol): this runs on boxes before anything else is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator import protocol

WORKDIR_TOKEN = "@@ORCHESTRATE_WORKDIR@@"
PID_FILE = "remote.pid"


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "?"


def _sub(value: Any, workdir: str) -> Any:
    if isinstance(value, str):
        return value.replace(WORKDIR_TOKEN, workdir)
    if isinstance(value, list):
        return [_sub(v, workdir) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v, workdir) for k, v in value.items()}
    return value


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _watch_stdin(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Commands from the controller; end of file means it (or the connection) is gone: stop the trial."""
    for raw in sys.stdin.buffer:
        cmd = raw.strip().decode("ascii", "replace").upper()
        if cmd == "TERM":
            _killpg(proc.pid, signal.SIGTERM)
        elif cmd == "KILL":
            _killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        _killpg(proc.pid, signal.SIGKILL)


def launch() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        print("orchestrate.remote: no job on stdin", file=sys.stderr)
        return 2
    workdir = os.getcwd()
    job = _sub(json.loads(line), workdir)
    run_dir = Path(job["run_dir"])
    if job.get("fresh"):
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (job.get("files") or {}).items():
        if "/" in name or name.startswith("."):
            continue
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(run_dir / name)
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    try:
        proc = subprocess.Popen(
            job["argv"], cwd=workdir, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
    except OSError as exc:
        print(
            f"orchestrate: cannot start {job['argv'][0]!r} on {socket.gethostname()}: {exc}", file=sys.stderr
        )
        protocol.emit(protocol.EVENT_INFO, remote_exit=127)
        return 127
    (run_dir / PID_FILE).write_text(f"{proc.pid} {_start_ticks(proc.pid)}\n", encoding="ascii")
    protocol.emit(
        protocol.EVENT_INFO,
        remote_pid=proc.pid,
        remote_pgid=proc.pid,
        remote_host=socket.gethostname(),
        remote_run_dir=str(run_dir),
    )
    threading.Thread(target=_watch_stdin, args=(proc, float(job.get("grace", 10))), daemon=True).start()
    rc = proc.wait()
    with contextlib.suppress(OSError):
        (run_dir / PID_FILE).unlink()
    sent = set(job.get("files") or {}) | {PID_FILE}
    produced = sum(
        1 for f in run_dir.rglob("*") if f.is_file() and f.relative_to(run_dir).parts[0] not in sent
    )
    with contextlib.suppress(BrokenPipeError, OSError):
        protocol.emit(protocol.EVENT_INFO, remote_exit=rc, remote_files=produced)
    return rc if rc >= 0 else 128 - rc


def kill(run_dir: str, grace: float = 5.0) -> int:
    """Stop the trial a launcher left running in RUN_DIR (0: stopped or already gone)."""
    path = Path(run_dir).expanduser() / PID_FILE
    try:
        pid_s, ticks = path.read_text(encoding="ascii").split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return 0
    if _start_ticks(pid) != ticks:
        return 0  # gone (or the pid was recycled)
    _killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while _start_ticks(pid) == ticks and time.time() < deadline:
        time.sleep(0.1)
    _killpg(pid, signal.SIGKILL)
    print(f"stopped process group {pid} on {socket.gethostname()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--kill"] and len(args) >= 2:
        return sum(kill(d) for d in args[1:])
    return launch()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter shutdown: the stdin reader thread is blocked in read(), and finalising would abort
    os._exit(code)
