"""Per-slot warm workers: a launch's own zygote forks one worker per slot, and each worker forks its trials.

``python -m orchestrator.zygote --forker MODULE…``: imports the modules once, then forks a worker for each
request on the ``SOCK_SEQPACKET`` socket that is its stdin. A request is one JSON message (the worker's
environment and directory) carrying three descriptors (``SCM_RIGHTS``): the read end of the worker's request
pipe, the write end of its stdout pipe, and its log. ``python -m orchestrator.zygote --worker MODULE…``: one
worker on its own (imports, then serves its stdin).

A worker reads one JSON line per trial (module, args, environment, directory, stderr file), forks it (its own
session, dying with the worker), and writes control lines (``@orchestrate-worker {...}``) with the trial's pid
and, once reaped, its exit status; everything else on its stdout is the trial's own output. What the trial left
running (its process group) ends with it: the worker is its trials' subreaper.

Life and death: the forker dies with the controller (PR_SET_PDEATHSIG), a worker with its forker, a trial with
its worker (a worker sent SIGTERM stops its trial's whole group first).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

from orchestrator.zygote import forking
from orchestrator.zygote.preload import preload, run_as_main

CONTROL = "@orchestrate-worker "
MAX_MESSAGE = 4 << 20
# never given to a zygote or a worker: they belong to one trial
TRIAL_ENV_PREFIXES = ("WANDB_RUN_ID", "WANDB_NAME", "ORCHESTRATE_RUN_DIR")


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` less each trial's own variables (what a zygote or a worker starts with)."""
    return {k: v for k, v in env.items() if not k.startswith(TRIAL_ENV_PREFIXES)}


# ---------------------------------------------------------------------------- the controller's side
class Forked:
    """A worker forked by a zygote, seen through the two pipes the executor holds (shaped like a Popen)."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        """Called once its stdout ended: the worker is gone (its zygote reaps it; the status is not ours)."""
        if self.returncode is None:
            self.returncode = -signal.SIGKILL
        return self.returncode


class Forker:
    """A launch's zygote process (``--forker``) and the controller's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork_worker(self, env: dict[str, str], cwd: Path, log: int) -> Forked:
        """A new worker with ``env`` in ``cwd``; its messages go to the descriptor ``log``."""
        req_r, req_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            message = json.dumps({"env": env, "cwd": str(cwd)}).encode()
            socket.send_fds(self.sock, [message], [req_r, out_w, log])
        except BaseException:
            for fd in (req_w, out_r):
                os.close(fd)
            raise
        finally:
            for fd in (req_r, out_w):
                os.close(fd)
        return Forked(os.fdopen(req_w, "wb", buffering=0), os.fdopen(out_r, "rb"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()  # the zygote's loop ends on end of file; its workers go on until their stdin ends


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """The controller's and the forker's ends of a new forker's socket, sized for the largest request."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    return ours, theirs


# ---------------------------------------------------------------------------- the forker and the worker
def forker_main(names: list[str]) -> None:
    """Import once, then fork a worker for each request on the socket that is this process's stdin."""
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    preload(names)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel, never zombies
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
        except InterruptedError:
            continue
        if not message:
            return  # the controller closed the socket (or died)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        req = json.loads(message)
        if os.fork() == 0:
            forking.exit_with(_become_worker, sock, req, fds, show_errors=True)
        for fd in fds:
            os.close(fd)


def _become_worker(sock: socket.socket, req: dict[str, Any], fds: list[int]) -> int:
    """In a forker's child: the worker (its own session, dying with the forker), serving its request pipe."""
    sock.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its trials
    os.setsid()
    forking.die_with_parent()  # with the zygote, which dies with the controller
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    forking.enter(req["env"], req["cwd"])
    serve(os.fdopen(0, "r", closefd=False))
    return 0


def worker_main(names: list[str]) -> None:
    """A worker started on its own (no zygote): imports, then serves its stdin."""
    import sys

    preload(names)
    serve(sys.stdin)


def serve(requests: IO[str]) -> None:
    """A worker's loop: fork each requested trial, wait for it, report its pid and exit status."""
    control = os.fdopen(os.dup(1), "w", buffering=1)

    def say(**msg: Any) -> None:
        control.write(CONTROL + json.dumps(msg) + "\n")
        control.flush()

    current: dict[str, int] = {}

    def _forward(signum: int, frame: Any) -> None:
        # the worker is stopped (its zygote, so the controller, is gone): its trial's whole group goes too
        pid = current.get("pid") or current.get("group")
        if pid:
            forking.end_group(pid, 2.0, reap=True)
        os._exit(128 + signum)

    forking.become_subreaper()
    signal.signal(signal.SIGTERM, _forward)
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            forking.exit_with(_become_trial, req, control)
        current["pid"] = pid
        say(event="started", pid=pid)
        _, status = os.waitpid(pid, 0)
        current["group"] = current.pop("pid")
        say(event="exit", rc=os.waitstatus_to_exitcode(status))
        # what the trial left running (its process group) ends with it
        forking.end_group(pid, forking.ORPHAN_GRACE, reap=True)
        current.pop("group", None)


def _become_trial(req: dict[str, Any], control: IO[str]) -> int:
    """In a worker's child: the trial (its own session, dying with the worker), its stderr to its run dir."""
    os.setsid()
    forking.die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    forking.enter(req["env"], req["cwd"])
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    forking.redirect(None, err)  # (stdin: the worker's is its request channel, not the trial's)
    control.close()
    return run_as_main(req["module"], req["args"])
