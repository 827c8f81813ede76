"""The zygote daemon: imports once, then forks each trial a connection asks for (``python -m orchestrator.zygote
--zygote FOLDER NAME [--local]``).

One daemon per lock file ``FOLDER/NAME.lock``, held while it listens on ``FOLDER/NAME.sock`` (a Unix
``SOCK_SEQPACKET`` socket). A request is one JSON message (module, args, environment, directory, grace) with
three descriptors: the trial's stdout and stderr, and the read end of a **lifeline** pipe whose write end only
the requester holds. The daemon forks the trial (its own session, those descriptors, the environment and
directory applied, the module run as ``__main__``), answers ``{"pid": P}`` and, once it reaped it,
``{"rc": RC}``. The trial watches its lifeline: when the requester is gone (even SIGKILLed) it stops its own
process group (SIGTERM, grace, SIGKILL). A connection that sends ``{"status": 1}`` (no descriptors) gets the
daemon's ``info()``.

A daemon with no trial and no connection for ``ORCHESTRATE_ZYGOTE_IDLE_S`` seconds (600), or whose socket was
removed, or sent SIGTERM, or whose code was replaced (a remote box's synced ``code_version``; a local one's hash
of its sources and packages, checked every 5 s), removes its socket and exits once its trials ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.zygote import forking, keys
from orchestrator.zygote.preload import preload, preload_names, run_as_main

IDLE_S = 600.0
VERSION_CHECK_S = 1.0  # how often a daemon checks its code is still the code here (x5 for a local one's hash)
MAX_MESSAGE = 4 << 20
_HOME: list[str] = []  # a daemon's directory when it started (sys.path[0]); it may be removed since


def zygote_main(folder: Path, name: str, local: bool = False) -> int:
    """The daemon: one at a time per lock file; imports the preload list, then forks each requested trial.

    ``local``: a controller's own daemon (executors/warm.py, orchestrator/front.py), whose code version is a
    hash of the sources and installed packages it preloads rather than the synced ``CODE_VERSION``.
    """
    lock = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another launcher started it first
    home = os.getcwd()
    _HOME[:] = [home]

    def version_of() -> str:  # (a removed directory finds no packages there: another version, if it had any)
        return keys.code_version(home, os.environ) if local else keys.synced_version(home)

    version = version_of()  # before the imports: a change while they run is seen at the first check
    preload(preload_names())
    try:
        idle = float(os.environ.get("ORCHESTRATE_ZYGOTE_IDLE_S") or IDLE_S)
    except ValueError:
        idle = IDLE_S
    Daemon(
        folder / f"{name}.sock", idle, lock, version, version_of, VERSION_CHECK_S * (5 if local else 1)
    ).serve()
    return 0


class Daemon:
    """The daemon's loop: accept connections, fork the trials they ask for, reap them and answer their status."""

    def __init__(
        self,
        path: Path,
        idle: float,
        lock: int,
        version: str,
        version_of: Callable[[], str],
        check_every: float = 1.0,
    ) -> None:
        self.path = path
        # held while it listens (never by its trials): a new daemon may follow one that only finishes its trials
        self.lock = lock
        self.version = version
        self.version_of = version_of
        self.check_every = check_every
        self.checked = time.monotonic()
        self.started = time.time()
        self.busy = time.monotonic()
        self.served = 0
        self.idle = idle
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead daemon's (we hold the lock)
        self.server: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server.bind(str(path))
        self.server.listen(64)
        self.inode = os.stat(path).st_ino
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.server, selectors.EVENT_READ)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.conns: dict[socket.socket, int | None] = {}  # connection → the pid of its trial
        self.children: dict[int, socket.socket | None] = {}  # trial pid → its launcher's connection
        self.leaving = False
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup fd
        signal.signal(signal.SIGTERM, self._on_term)
        signal.set_wakeup_fd(self.wake_w)

    def _on_term(self, *_: Any) -> None:
        self.leaving = True

    def serve(self) -> None:
        while self.server is not None or self.children or self.conns:
            for key, _ in self.sel.select(1.0):
                if key.fileobj is self.server:
                    self._accept()
                elif key.fileobj == self.wake_r:
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 512):
                            pass
                else:
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    self._request(conn)
            self._reap()
            now = time.monotonic()
            if self.children or any(pid is not None for pid in self.conns.values()):
                self.busy = now  # (a connection that only asks for the status keeps nothing alive)
            if self.server is not None and (self.leaving or now - self.busy >= self.idle or not self._ours()):
                self._stop_listening()

    def _ours(self) -> bool:
        """Its socket is still there, and the code it imported is still the code here."""
        if not self._socket_ours():
            return False
        now = time.monotonic()
        if now - self.checked < self.check_every:
            return True
        self.checked = now
        try:
            return bool(self.version_of() == self.version)
        except Exception:  # noqa: BLE001 - a version it cannot compute: stale, to be safe
            return False

    def info(self) -> dict[str, Any]:
        """What ``orchestrate status`` shows of it."""
        return {
            "pid": os.getpid(),
            "started": self.started,
            "idle_s": 0.0 if self.children else round(time.monotonic() - self.busy, 1),
            "running": len(self.children),
            "served": self.served,
            "python": sys.executable,
            "cwd": _HOME[0] if _HOME else "",
            "version": self.version,
            "env": {k: os.environ[k] for k in keys.ZYGOTE_ENV + keys.ZYGOTE_SETTINGS if k in os.environ},
            "idle_exit_s": self.idle,
        }

    def _socket_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _accept(self) -> None:
        assert self.server is not None
        self.server.setblocking(False)
        while True:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(True)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
            self.conns[conn] = None
            self.sel.register(conn, selectors.EVENT_READ)

    def _stop_listening(self) -> None:
        """No new trials: the socket goes (if still ours), connections already made are still served."""
        assert self.server is not None
        if self._socket_ours():
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._accept()
        self.sel.unregister(self.server)
        self.server.close()
        self.server = None
        with contextlib.suppress(OSError):
            os.close(self.lock)  # a new daemon may start while this one finishes its trials
        self.lock = -1

    def _drop(self, conn: socket.socket) -> None:
        pid = self.conns.pop(conn, None)
        if pid is not None and pid in self.children:
            self.children[pid] = None
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _request(self, conn: socket.socket) -> None:
        try:
            message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        except OSError:
            message, fds = b"", []
        try:
            if message and not fds and self.conns.get(conn) is None:
                self._status(conn, message)
                return
            if not message or len(fds) != 3 or self.conns.get(conn) is not None:
                self._drop(conn)  # its launcher is gone (or it asked twice)
                return
            pid = self._fork(json.loads(message), fds)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            print(f"orchestrate zygote: bad request: {exc}", file=sys.stderr)
            self._drop(conn)
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.children[pid] = conn
        self.conns[conn] = pid
        self.served += 1
        try:
            conn.sendall(json.dumps({"pid": pid}).encode())
        except OSError:
            self._drop(conn)  # its lifeline ends too: the trial stops itself

    def _status(self, conn: socket.socket, message: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(message).get("status"):
                conn.sendall(json.dumps(self.info()).encode())
        self._drop(conn)

    def _fork(self, req: dict[str, Any], fds: list[int]) -> int:
        """Fork the trial of ``req``; returns once it has its own session (a stop reaches it)."""
        sys.stdout.flush()
        sys.stderr.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            close = [self.lock, self.sel, self.server, *self.conns, self.wake_r, self.wake_w]
            forking.exit_with(_trial, req, fds, ready_w, close)
        os.close(ready_w)
        with contextlib.suppress(OSError):
            os.read(ready_r, 1)  # end of file once the trial has its own session: a stop reaches it
        os.close(ready_r)
        return pid

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"rc": os.waitstatus_to_exitcode(status)}).encode())
                self._drop(conn)


def _trial(req: dict[str, Any], fds: list[int], ready: int, close: list[Any]) -> int:
    """In the forked child: become the trial (its own session, its descriptors, environment and directory)."""
    os.setsid()
    os.close(ready)
    signal.set_wakeup_fd(-1)
    for obj in close:  # the daemon's: its lock, socket, connections, selector and wake-up pipe
        with contextlib.suppress(OSError):
            if isinstance(obj, int):
                os.close(obj)
            elif obj is not None:
                obj.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out, err, life = fds
    forking.redirect(out, err)
    os.set_inheritable(life, False)
    forking.enter(req["env"], req["cwd"])
    if sys.path and sys.path[0] in _HOME:  # `python -m` looks in the trial's directory, not the daemon's
        sys.path[0] = os.getcwd()
    grace = float(req.get("grace", 10))
    threading.Thread(target=_lifeline, args=(life, grace), daemon=True, name="lifeline").start()
    return run_as_main(req["module"], req["args"])


def _lifeline(fd: int, grace: float) -> None:
    """The trial's watch on its launcher: the pipe ends when the launcher is gone, and so does the trial."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    print("orchestrate: the launcher is gone; stopping the trial", file=sys.stderr)
    forking.kill_group(os.getpgrp(), signal.SIGTERM)
    time.sleep(grace)
    forking.kill_group(os.getpgrp(), signal.SIGKILL)
