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

Warm trials. A trial whose argv is ``python [-u] -m module …`` with the launcher's own interpreter is forked by
a **zygote daemon** on the box instead of started fresh (``"warm": false`` in the job turns this off), so the
torch/timm/… imports (orchestrator/zygote/preload.py's ``PRELOAD``; ``ORCHESTRATE_PRELOAD=a,b`` replaces it) are
paid once per box, not once per trial. One daemon per (interpreter, working directory, the start-up environment
of ``ZYGOTE_ENV``), listening on a Unix socket ``WORKDIR/.orchestrate/zygote/HASH.sock`` (a private
directory under /tmp when that path is too long for a socket). The first launcher that finds no daemon starts
one (detached: double fork, setsid, its messages in ``HASH.log``; a lock file held while the daemon listens
makes it one) and runs its own trial fresh rather than wait for the imports. Later launchers have it fork their
trial with the session's stdout and stderr and a **lifeline** whose write end only the launcher holds: when the
launcher is gone (even SIGKILLed, or its box's sshd killed) the trial stops its own process group (SIGTERM,
grace, SIGKILL). The daemon's own environment is the box's plus those start-up variables: no trial's secrets
live on in it. Stops, ``remote.pid`` and ``--kill`` work as for a fresh trial: its pid is its process group. A
daemon leaves when idle for ``ORCHESTRATE_ZYGOTE_IDLE_S`` seconds (600), when its socket was removed, on SIGTERM,
or when its code was replaced by a newer sync (``.orchestrate/code_version``). The daemon, its client side and
the keys are orchestrator/zygote/ (``python -m orchestrator.remote --zygote …`` still runs a daemon).

Standard library only (plus orchestrator.trial and orchestrator.zygote): this runs on boxes before anything else
is checked.
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

from orchestrator.trial import protocol
from orchestrator.zygote import client, forking, keys
from orchestrator.zygote.client import WarmTrial, fork_trial, start_warm
from orchestrator.zygote.keys import ZYGOTE_ENV

__all__ = [
    "PID_FILE",
    "WORKDIR_TOKEN",
    "ZYGOTE_ENV",
    "WarmTrial",
    "fork_trial",
    "kill",
    "launch",
    "main",
    "start_warm",
]

WORKDIR_TOKEN = "@@ORCHESTRATE_WORKDIR@@"
PID_FILE = "remote.pid"

# the names this module had before orchestrator/zygote/ (tests and older callers use them)
_start_ticks = forking.start_ticks
_zygote_place = keys.place
_code_version = keys.synced_version
_daemon_env = keys.daemon_env
_spawn_daemon = client.spawn_detached
_connect = client.connect
_same_interpreter = client.same_interpreter
_warm_module = client.warm_module
_killpg = forking.kill_group


def _sub(value: Any, workdir: str) -> Any:
    if isinstance(value, str):
        return value.replace(WORKDIR_TOKEN, workdir)
    if isinstance(value, list):
        return [_sub(v, workdir) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v, workdir) for k, v in value.items()}
    return value


def _watch_stdin(proc: subprocess.Popen[bytes] | WarmTrial, grace: float, run_dir: Path) -> None:
    """Commands from the controller; end of file means it (or the connection) is gone: stop the trial.

    ``TERM PRUNED``: the trial was pruned; it finds that in ``protocol.STOP_FILE`` when SIGTERM reaches it."""
    for raw in sys.stdin.buffer:
        cmd = raw.strip().decode("ascii", "replace").upper()
        if cmd.startswith("TERM"):
            reason = cmd[4:].strip().lower()
            if reason:
                with contextlib.suppress(OSError):
                    (run_dir / protocol.STOP_FILE).write_text(
                        json.dumps({"reason": reason}), encoding="utf-8"
                    )
            forking.kill_group(proc.pid, signal.SIGTERM)
        elif cmd == "KILL":
            forking.kill_group(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        forking.kill_group(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        forking.kill_group(proc.pid, signal.SIGKILL)


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
    grace = float(job.get("grace", 10))
    proc: subprocess.Popen[bytes] | WarmTrial | None = None
    module = client.warm_module(job["argv"]) if job.get("warm", True) else None
    if module is not None:
        proc = start_warm(module[0], module[1], env, workdir, grace)
    try:
        if proc is None:
            proc = subprocess.Popen(
                job["argv"], cwd=workdir, env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
    except OSError as exc:
        print(
            f"orchestrate: cannot start {job['argv'][0]!r} on {socket.gethostname()}: {exc}", file=sys.stderr
        )
        protocol.emit(protocol.EVENT_INFO, remote_exit=127)
        return 127
    (run_dir / PID_FILE).write_text(f"{proc.pid} {forking.start_ticks(proc.pid)}\n", encoding="ascii")
    protocol.emit(
        protocol.EVENT_INFO,
        remote_pid=proc.pid,
        remote_pgid=proc.pid,
        remote_host=socket.gethostname(),
        remote_run_dir=str(run_dir),
        remote_warm=isinstance(proc, WarmTrial),
    )
    threading.Thread(target=_watch_stdin, args=(proc, grace, run_dir), daemon=True).start()
    rc = proc.wait()
    # what the trial left behind (holding this session's stdout) ends too
    forking.end_group(proc.pid, min(grace, 5.0))
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
    if forking.start_ticks(pid) != ticks:
        return 0  # gone (or the pid was recycled)
    forking.kill_group(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while forking.start_ticks(pid) == ticks and time.time() < deadline:
        time.sleep(0.1)
    forking.kill_group(pid, signal.SIGKILL)
    print(f"stopped process group {pid} on {socket.gethostname()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--kill"] and len(args) >= 2:
        return sum(kill(d) for d in args[1:])
    if args[:1] == ["--zygote"] and len(args) in (
        3,
        4,
    ):  # (the daemon's command line before orchestrator/zygote/)
        from orchestrator.zygote.daemon import zygote_main

        return zygote_main(Path(args[1]), args[2], local=args[3:] == ["--local"])
    return launch()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter shutdown: the stdin reader thread is blocked in read(), and finalising would abort
    os._exit(code)
