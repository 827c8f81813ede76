"""The requesting side of a zygote daemon: start one, connect, have it fork a trial, wait for it; list them.

Used by a remote box's launcher (orchestrator/remote.py), the controller's warm executor for trials kept between
launches (orchestrator/executors/warm.py), and the ``orchestrate`` front forking a launch (orchestrator/front.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.zygote import forking, keys

MAX_MESSAGE = 4 << 20
DAEMON_MODULE = "orchestrator.zygote"


def daemon_argv(folder: Path, name: str, local: bool = False) -> list[str]:
    """The daemon's command line (``--local``: a controller's own, keyed by the hash of its code)."""
    argv = [sys.executable, "-u", "-m", DAEMON_MODULE, "--zygote", str(folder), name]
    return [*argv, "--local"] if local else argv


def locked(path: Path) -> bool:
    """A daemon holds this lock file (importing, or listening)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def spawn_local(folder: Path, name: str, env: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
    """Start a controller's own daemon (``--local``) in its own session: it never dies with this process, it
    serves the next launch. Its messages go to ``NAME.log``."""
    with open(folder / f"{name}.log", "ab") as out:
        return subprocess.Popen(
            daemon_argv(folder, name, local=True),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def spawn_detached(folder: Path, name: str, env: dict[str, str], cwd: str) -> None:
    """Start a box's daemon detached from this launcher and its session (double fork, setsid); returns at once.

    Its environment is the box's plus the start-up variables of ``env`` (keys.daemon_env)."""
    argv = daemon_argv(folder, name)
    denv = keys.daemon_env(env)
    log = str(folder / f"{name}.log")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setsid()
            if os.fork() == 0:
                code = 127
                null = os.open(os.devnull, os.O_RDONLY)
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(null, 0)  # never the ssh session's pipes: the session ends with its launcher
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.chdir(cwd)
                os.execve(sys.executable, argv, denv)
        except BaseException:
            pass
        os._exit(code)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def connect(folder: Path, name: str, env: dict[str, str], cwd: str) -> socket.socket | None:
    """A connection to a ready daemon; None when there is none yet (one is started unless one is starting)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(folder / f"{name}.sock"))
        return sock
    except OSError:
        sock.close()
    try:
        fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        return None  # a daemon holds it: importing, or leaving
    finally:
        os.close(fd)
    spawn_detached(folder, name, env, cwd)  # (two launchers at once may both start one: the lock keeps one)
    return None


class WarmTrial:
    """A trial forked by the daemon, shaped like the Popen the launcher uses (pid = its process group)."""

    def __init__(self, conn: socket.socket, lifeline: int, pid: int) -> None:
        self.conn = conn
        self.lifeline = lifeline  # the write end: closed only when this launcher exits
        self.pid = pid
        self.ticks = forking.start_ticks(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            rc = self._answer()
            if rc is None:  # the daemon died under it: the trial may go on (its exit status is lost)
                while self.ticks != "?" and forking.start_ticks(self.pid) == self.ticks:
                    time.sleep(0.2)
                rc = -signal.SIGKILL
            self.returncode = rc
        return self.returncode

    def _answer(self) -> int | None:
        """The daemon's ``{"rc": RC}`` once it reaped the trial; None: the connection ended without it."""
        while True:
            try:
                message = self.conn.recv(4096)
            except InterruptedError:
                continue
            except OSError:
                message = b""
            if not message:
                return None
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                return int(json.loads(message)["rc"])

    def send_signal(self, sig: int) -> None:
        forking.kill_group(self.pid, sig)


def fork_trial(
    conn: socket.socket,
    module: str,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    grace: float,
    out: int,
    err: int,
) -> WarmTrial | None:
    """Over a connection to a daemon: fork the trial with stdout ``out`` and stderr ``err`` (None: it failed us).

    The trial's lifeline is a new pipe whose write end only the returned ``WarmTrial`` (this process) holds.
    """
    life_r, life_w = os.pipe()
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        request = {"module": module, "args": args, "env": env, "cwd": cwd, "grace": grace}
        socket.send_fds(conn, [json.dumps(request).encode()], [out, err, life_r])
        conn.settimeout(30)
        pid = int(json.loads(conn.recv(4096))["pid"])
        conn.settimeout(None)
    except (OSError, ValueError, TypeError, KeyError):
        os.close(life_w)  # a trial forked without telling us stops at once (its lifeline ends)
        conn.close()
        return None
    finally:
        os.close(life_r)
    return WarmTrial(conn, life_w, pid)


def start_warm(module: str, args: list[str], env: dict[str, str], cwd: str, grace: float) -> WarmTrial | None:
    """Have the box's daemon fork the trial, its output on this process's; None: run it fresh (no daemon ready,
    or it failed us)."""
    found = keys.place(env, cwd)
    if found is None:
        return None
    conn = connect(*found, env, cwd)
    if conn is None:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    return fork_trial(conn, module, args, env, cwd, grace, 1, 2)


def same_interpreter(exe: str) -> bool:
    """This interpreter, in this environment (a venv's ``python`` links to the base one: same directory too)."""
    exe = os.path.expanduser(exe)
    if os.sep not in exe:
        exe = shutil.which(exe) or exe
    exe, mine = os.path.abspath(exe), os.path.abspath(sys.executable)
    if exe == mine:
        return True
    try:
        return os.path.dirname(exe) == os.path.dirname(mine) and os.path.samefile(exe, mine)
    except OSError:
        return False


def warm_module(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(module, args)`` of ``python [-u] -m module args…`` with this interpreter; None: it runs fresh."""
    if not argv or not hasattr(socket, "send_fds") or not same_interpreter(argv[0]):
        return None
    rest = argv[1:]
    while rest and rest[0] == "-u":
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return rest[1], rest[2:]
    return None


def zygotes(folder: Path | None = None) -> list[dict[str, Any]]:
    """The running daemons of this user (what ``orchestrate status`` shows); stale sockets are removed."""
    folder = keys.runtime_dir() if folder is None else folder
    found: list[dict[str, Any]] = []
    if folder is None or not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.sock")):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        try:
            sock.connect(str(path))
            sock.send(json.dumps({"status": 1}).encode())
            info = json.loads(sock.recv(1 << 16))
        except (OSError, ValueError):
            if not locked(folder / f"{path.stem}.lock"):
                with contextlib.suppress(OSError):
                    path.unlink()  # a dead daemon's
            continue
        finally:
            sock.close()
        if isinstance(info, dict):
            found.append({"name": path.stem, **info})
    return found


def render_zygotes(found: list[dict[str, Any]]) -> str:
    """One line per kept zygote: pid, age, idle time, trials running/served, its key."""
    lines = []
    for z in found:
        age = time.time() - float(z.get("started", time.time()))
        shown = dict(z.get("env") or {})
        controller = str(shown.get("ORCHESTRATE_PRELOAD", "")).startswith("orchestrator.cli,")
        if controller:
            shown.pop("ORCHESTRATE_PRELOAD")  # the front's list (orchestrator/front.py)
        env = " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
        lines.append(
            f"zygote {z['name']} ({'controller' if controller else 'trials'}): pid {z.get('pid')},"
            f" up {age:.0f} s, idle {z.get('idle_s')} s"
            f" (leaves at {z.get('idle_exit_s'):.0f}), running {z.get('running')}, served {z.get('served')};"
            f" {z.get('python')} in {z.get('cwd')}, code {str(z.get('version'))[:12]}"
            + (f", {env}" if env else "")
        )
    return "".join(line + "\n" for line in lines)
