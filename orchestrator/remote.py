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
torch/timm/… imports (orchestrator/executors/warm.py's ``PRELOAD``; ``ORCHESTRATE_PRELOAD=a,b`` replaces it) are
paid once per box, not once per trial. One daemon per (interpreter, working directory, the start-up environment
of ``ZYGOTE_ENV``), listening on a Unix socket ``WORKDIR/.orchestrate/zygote/HASH.sock`` (a private
directory under /tmp when that path is too long for a socket). The first launcher that finds no daemon starts
one (detached: double fork, setsid, its messages in ``HASH.log``; a lock file held while the daemon listens
makes it one) and runs its own trial fresh rather than wait for the imports. Later launchers send the request
(module, args, environment, directory) with three descriptors: the session's stdout and stderr, and the read end
of a **lifeline** pipe whose write end only the launcher holds. The daemon forks the trial (its own session,
those descriptors, the environment and directory applied, the module run as ``__main__``), answers
``{"pid": P}`` and, once it reaped it, ``{"rc": RC}``. The daemon's own environment is the box's plus those
start-up variables: no trial's secrets live on in it. The trial watches its lifeline: when the launcher is gone
(even SIGKILLed, or its box's sshd killed) it stops its own process group (SIGTERM, grace, SIGKILL). Stops,
``remote.pid`` and ``--kill`` work as for a fresh trial: its pid is its process group. A daemon with no trial
and no connection for ``ORCHESTRATE_ZYGOTE_IDLE_S`` seconds (600), or whose socket was removed, or sent SIGTERM,
or whose code was replaced by a newer sync (``.orchestrate/code_version``), removes its socket and exits once
its trials ended. A connection that sends ``{"status": 1}`` (no descriptors) gets the daemon's ``info()``.

The controller's own warm zygote is this daemon too, run with ``--local`` (orchestrator/executors/warm.py): its
code version is then a hash of the sources and packages it preloads, checked every 5 s.

Standard library only (plus orchestrator.trial.protocol): this runs on boxes before anything else is checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
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

WORKDIR_TOKEN = "@@ORCHESTRATE_WORKDIR@@"
PID_FILE = "remote.pid"
# the environment fixed when an interpreter starts or imports (sys.path, sitecustomize, thread pools): trials
# differing in these need another zygote, here and in executors/warm.py; and the daemon's own settings
ZYGOTE_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ORCHESTRATE_WANDB_BRIDGE",
    "ORCHESTRATE_METRIC",
)
ZYGOTE_SETTINGS = ("ORCHESTRATE_PRELOAD", "ORCHESTRATE_ZYGOTE_IDLE_S")
ZYGOTE_DIR = ".orchestrate/zygote"
CODE_VERSION = ".orchestrate/code_version"  # written by the controller's code sync (orchestrator/hosts.py)
IDLE_S = 600.0
VERSION_CHECK_S = 1.0  # how often a daemon checks its code is still the code here (x5 for a local one's hash)
MAX_MESSAGE = 4 << 20
SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path is 108 with the terminating NUL)
_HOME: list[str] = []  # a daemon's directory when it started (sys.path[0]); it may be removed since


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


def _end_group(pgid: int, grace: float) -> None:
    """SIGTERM to what is left of a finished trial's process group, SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
    _killpg(pgid, signal.SIGKILL)


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
    grace = float(job.get("grace", 10))
    proc: subprocess.Popen[bytes] | WarmTrial | None = None
    module = _warm_module(job["argv"]) if job.get("warm", True) else None
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
    (run_dir / PID_FILE).write_text(f"{proc.pid} {_start_ticks(proc.pid)}\n", encoding="ascii")
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
    _end_group(
        proc.pid, min(grace, 5.0)
    )  # what the trial left behind (holding this session's stdout) ends too
    with contextlib.suppress(OSError):
        (run_dir / PID_FILE).unlink()
    sent = set(job.get("files") or {}) | {PID_FILE}
    produced = sum(
        1 for f in run_dir.rglob("*") if f.is_file() and f.relative_to(run_dir).parts[0] not in sent
    )
    with contextlib.suppress(BrokenPipeError, OSError):
        protocol.emit(protocol.EVENT_INFO, remote_exit=rc, remote_files=produced)
    return rc if rc >= 0 else 128 - rc


# ------------------------------------------------------------------------------------- warm trials: launcher
def _same_interpreter(exe: str) -> bool:
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


def _warm_module(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(module, args)`` of ``python [-u] -m module args…`` with this interpreter; None: it runs fresh."""
    if not argv or not hasattr(socket, "send_fds") or not _same_interpreter(argv[0]):
        return None
    rest = argv[1:]
    while rest and rest[0] == "-u":
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return rest[1], rest[2:]
    return None


def _zygote_place(
    env: dict[str, str], cwd: str, version: str | None = None, root: Path | None = None
) -> tuple[Path, str] | None:
    """The private directory of the daemon for this start-up environment, and its name (None: no usable one).

    ``version``: of the code it preloads (default: the synced one, ``CODE_VERSION``); ``root``: the directory
    (default: ``cwd/.orchestrate/zygote``; the controller's own daemons live in a per-user runtime directory).
    """
    version = _code_version(cwd) if version is None else version
    key: list[str | None] = [os.path.realpath(sys.executable), cwd, version]
    key += [env.get(k) for k in ZYGOTE_ENV + ZYGOTE_SETTINGS]
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    folder = Path(cwd) / ZYGOTE_DIR if root is None else root
    if len(os.fsencode(str(folder / f"{name}.sock"))) > SUN_PATH_MAX:
        digest = hashlib.sha256(os.fsencode(str(folder))).hexdigest()[:12]
        folder = Path("/tmp") / f"orchestrate-zygote-{os.getuid()}-{digest}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
        if st.st_uid != os.getuid() or not os.path.isdir(folder) or os.path.islink(folder):
            return None  # someone else's: whoever can connect runs code as us
        if st.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        return None
    return folder, name


def _code_version(cwd: str) -> str:
    """The version of the code synced here: a daemon never serves modules it imported from an older one."""
    try:
        with open(os.path.join(cwd, CODE_VERSION), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _daemon_env(env: dict[str, str]) -> dict[str, str]:
    """The daemon's environment: the box's own plus the start-up variables (no trial's secrets in it)."""
    out = dict(os.environ)
    for k in ZYGOTE_ENV + ZYGOTE_SETTINGS:
        out.pop(k, None)
        if k in env:
            out[k] = env[k]
    return out


def _spawn_daemon(folder: Path, name: str, env: dict[str, str], cwd: str) -> None:
    """Start the daemon detached from this launcher and its session (double fork, setsid); returns at once."""
    argv = [sys.executable, "-u", "-m", "orchestrator.remote", "--zygote", str(folder), name]
    daemon_env = _daemon_env(env)
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
                os.execve(sys.executable, argv, daemon_env)
        except BaseException:
            pass
        os._exit(code)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _connect(folder: Path, name: str, env: dict[str, str], cwd: str) -> socket.socket | None:
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
    _spawn_daemon(folder, name, env, cwd)  # (two launchers at once may both start one: the lock keeps one)
    return None


class WarmTrial:
    """A trial forked by the daemon, shaped like the Popen the launcher uses (pid = its process group)."""

    def __init__(self, conn: socket.socket, lifeline: int, pid: int) -> None:
        self.conn = conn
        self.lifeline = lifeline  # the write end: closed only when this launcher exits
        self.pid = pid
        self.ticks = _start_ticks(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            rc: int | None = None
            while rc is None:
                try:
                    message = self.conn.recv(4096)
                except InterruptedError:
                    continue
                except OSError:
                    message = b""
                if not message:
                    break
                with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                    rc = int(json.loads(message)["rc"])
            if rc is None:  # the daemon died under it: the trial may go on (its exit status is lost)
                while self.ticks != "?" and _start_ticks(self.pid) == self.ticks:
                    time.sleep(0.2)
                rc = -signal.SIGKILL
            self.returncode = rc
        return self.returncode

    def send_signal(self, sig: int) -> None:
        _killpg(self.pid, sig)


def start_warm(module: str, args: list[str], env: dict[str, str], cwd: str, grace: float) -> WarmTrial | None:
    """Have the box's daemon fork the trial; None: run it fresh (no daemon ready, or it failed us)."""
    place = _zygote_place(env, cwd)
    if place is None:
        return None
    conn = _connect(*place, env, cwd)
    if conn is None:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    return fork_trial(conn, module, args, env, cwd, grace, 1, 2)


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


# --------------------------------------------------------------------------------- warm trials: the daemon
def zygote_main(folder: Path, name: str, local: bool = False) -> int:
    """The daemon: one at a time per lock file; imports the preload list, then forks each requested trial.

    ``local``: a controller's own daemon (executors/warm.py), whose code version is a hash of the sources
    and installed packages it preloads rather than the synced ``CODE_VERSION``.
    """
    lock = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another launcher started it first
    from orchestrator.executors import warm  # torch and the rest: in this process only

    home = os.getcwd()
    _HOME[:] = [home]

    def version_of() -> str:  # (a removed directory finds no packages there: another version, if it had any)
        return warm.code_version(home, os.environ) if local else _code_version(home)

    version = version_of()  # before the imports: a change while they run is seen at the first check
    preload = [n.strip() for n in os.environ.get("ORCHESTRATE_PRELOAD", "").split(",") if n.strip()]
    warm._preload(preload or list(warm.PRELOAD))
    try:
        idle = float(os.environ.get("ORCHESTRATE_ZYGOTE_IDLE_S") or IDLE_S)
    except ValueError:
        idle = IDLE_S
    _Daemon(
        folder / f"{name}.sock", idle, lock, version, version_of, VERSION_CHECK_S * (5 if local else 1)
    ).serve()
    return 0


class _Daemon:
    def __init__(
        self,
        path: Path,
        idle: float,
        lock: int,
        version: str,
        version_of: Any,
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
            "env": {k: os.environ[k] for k in ZYGOTE_ENV + ZYGOTE_SETTINGS if k in os.environ},
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
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(message).get("status"):
                        conn.sendall(json.dumps(self.info()).encode())
                self._drop(conn)
                return
            if not message or len(fds) != 3 or self.conns.get(conn) is not None:
                self._drop(conn)  # its launcher is gone (or it asked twice)
                return
            req = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _trial(
                    req,
                    fds,
                    ready_w,
                    [self.lock, self.sel, self.server, *self.conns, self.wake_r, self.wake_w],
                )
            os.close(ready_w)
            with contextlib.suppress(OSError):
                os.read(ready_r, 1)  # end of file once the trial has its own session: a stop reaches it
            os.close(ready_r)
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


def _trial(req: dict[str, Any], fds: list[int], ready: int, close: list[Any]) -> None:
    """In the forked child: become the trial (its own session, its descriptors, environment and directory)."""
    code = 1
    try:
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
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            if fd > 2:
                os.close(fd)
        os.set_inheritable(life, False)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        if sys.path and sys.path[0] in _HOME:  # `python -m` looks in the trial's directory, not the daemon's
            sys.path[0] = os.getcwd()
        grace = float(req.get("grace", 10))
        threading.Thread(target=_lifeline, args=(life, grace), daemon=True, name="lifeline").start()
        code = run_as_main(req["module"], req["args"])
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


_INHERITED_TEMP_DIRS: list[Any] | None = None  # found by note_temp_dirs() in a pre-importing process


def note_temp_dirs() -> None:
    """In a process that pre-imports for forked trials, once its imports are done: find the temp dirs they hold.

    (A scan of every loaded module costs ≈0.25 s with torch and wandb loaded: paid once here, not per trial.)
    """
    global _INHERITED_TEMP_DIRS
    import tempfile

    found: dict[int, Any] = {}
    for mod in list(sys.modules.values()):
        try:
            names = vars(mod)
        except TypeError:
            continue
        for value in list(names.values()):
            held = [value]
            if isinstance(value, type) and getattr(value, "__module__", None) == getattr(
                mod, "__name__", None
            ):
                with contextlib.suppress(TypeError):
                    held = list(vars(value).values())
            for obj in held:
                if isinstance(obj, tempfile.TemporaryDirectory):
                    found[id(obj)] = obj
    _INHERITED_TEMP_DIRS = list(found.values())


def own_temp_dirs() -> None:
    """In a forked child: the temporary directories its pre-importing parent made become the child's own.

    A module imported before the fork may hold a ``tempfile.TemporaryDirectory`` and remove it at exit (wandb's
    media staging dir ``…wandb-media``, where every table and image is written before it is copied into the run;
    its artifacts' ``…wandb-artifacts``). Every trial forked from that process would share it, and the first one
    to exit would delete it under the others (their tables lost: ``No such file … wandb-media``). Each one held
    by a loaded module or one of its classes gets a new directory, in the trial's own temp dir, removed when the
    trial exits; the parent's is left to the parent. ``tempfile.tempdir`` (cached by the parent's first use) is
    forgotten, so the trial's ``TMPDIR`` counts.
    """
    import tempfile

    tempfile.tempdir = None
    if _INHERITED_TEMP_DIRS is None:
        note_temp_dirs()
    for obj in _INHERITED_TEMP_DIRS or ():
        with contextlib.suppress(OSError, AttributeError):
            _renew(obj)


def _renew(obj: Any) -> None:
    """``obj`` (a TemporaryDirectory) now names a new directory of the same suffix, which its clean-up removes."""
    import tempfile

    base = os.path.basename(obj.name)
    suffix = base[11:] if base.startswith("tmp") and len(base) > 11 else ""
    new = tempfile.TemporaryDirectory(suffix=suffix)
    obj._finalizer.detach()  # the parent's directory: never removed by this process
    obj.name = new.name
    obj._finalizer = getattr(new, "_finalizer")  # noqa: B009 - private: removed at exit, or by obj.cleanup()
    obj._orchestrate_own = new  # keeps the finalizer's referent alive as long as obj


def run_as_main(module: str, args: list[str]) -> int:
    """In a forked child: run ``module`` as ``python -m module args…`` would, then its exit handlers; the exit code.

    The caller flushes and ``os._exit``s with it (a forked child must never return into its parent's loop).
    """
    import runpy

    own_temp_dirs()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    return code


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
    _killpg(os.getpgrp(), signal.SIGTERM)
    time.sleep(grace)
    _killpg(os.getpgrp(), signal.SIGKILL)


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
    if args[:1] == ["--zygote"] and len(args) in (3, 4):
        return zygote_main(Path(args[1]), args[2], local=args[3:] == ["--local"])
    return launch()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter shutdown: the stdin reader thread is blocked in read(), and finalising would abort
    os._exit(code)
