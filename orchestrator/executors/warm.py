"""Warm workers: one pre-imported zygote forks a worker per slot, and each worker forks its slot's trials.

A fresh ``python -m experiments.train`` pays for the interpreter, torch, timm and wandb imports every time
(seconds on a small CPU, before the first training step). Here one **zygote** process is started per
interpreter environment and imports those modules once, without touching CUDA. Each slot gets a **worker**
forked from it (a millisecond, however many slots), and for each trial the worker ``fork()``s again: the
child gets a clean copy of the warmed interpreter, applies the trial's environment, changes directory, sends
stderr to the run dir and runs the module as ``__main__`` — the same code path as a fresh process, minus the
imports. The worker's stdout is the protocol channel, exactly as for a fresh process.

Why two levels: a worker blocks on its trial (it reaps it and reports its exit status), so it cannot also
serve other slots; and forking workers from one zygote means one import for all slots instead of one per
slot running at the same time (on 2 cores, 4 workers importing together took ≈11 s; one zygote ≈4.5 s).

Channels. The executor talks to a zygote over a ``SOCK_SEQPACKET`` Unix socket (the zygote's stdin): a
request is one JSON message (the worker's environment and directory) carrying three descriptors
(``SCM_RIGHTS``): the read end of the worker's request pipe, the write end of its stdout pipe, and its log.
Control lines from a worker (``@orchestrate-worker {...}``) give the trial's pid and its exit status;
everything else is the trial's own output.

Which zygote: one per (interpreter, directory, ``PYTHONPATH``, W&B bridge settings, thread counts) — what
is fixed when an interpreter starts or imports (``sys.path``, ``sitecustomize``). Per-trial and per-slot
variables (run dir, W&B ids, ``CUDA_VISIBLE_DEVICES``) are applied in the forked child. ``warm_up()`` starts
the zygote before the controller opens the storage, so its imports overlap the controller's start-up.

Hot launches (the default; ``ORCHESTRATE_ZYGOTE=0`` turns it off, ``--workers fresh`` too). The zygote
may outlive the launch: it is then orchestrator/remote.py's **zygote daemon**, run here (``--local``), in a
private per-user directory (``$XDG_RUNTIME_DIR/orchestrate/zygote``, else ``/tmp/orchestrate-UID/zygote``,
0700), one per (interpreter, directory, the start-up environment of ``ZYGOTE_ENV`` and the daemon's settings,
and ``code_version()``: a hash of the sources of experiments/, backbones/, datasets/, orchestrator/ and the
installed distributions), so a launch never gets modules older than its code. The first launch that finds no
daemon starts one (its lock file makes it one when two launches start at once; a dead one's socket is
replaced); its trials wait for the imports as with the launch's own zygote; the next launch connects at once.
Each trial is one connection: the daemon forks it with the trial's stdout pipe, its stderr log and a lifeline
pipe whose write end only the controller holds, so a controller that dies (even SIGKILLed) still takes its
trials with it. The daemon leaves when idle for ``ORCHESTRATE_ZYGOTE_IDLE_S`` seconds (600), when its code
changed, or on SIGTERM; ``orchestrate status`` lists the running ones (``zygotes()``). When no daemon can be
used, trials run as fresh processes.

Life and death: the launch's own zygote dies with the controller (PR_SET_PDEATHSIG), a worker with its zygote,
a trial with its worker (each forwards SIGTERM to the next). A worker or zygote that dies ends its trial as a
failure (retried) and the next trial on that slot gets a new one. A fresh process per trial (``--workers
fresh``) stays available as the safe mode, and any argv that is not ``python -m module …`` with orchestrate's
own interpreter runs fresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from orchestrator import remote
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import (
    ORPHAN_GRACE,
    LocalExecutor,
    _die_with_parent,
    _dies_with_parent,
    _signal_group,
)
from orchestrator.remote import ZYGOTE_ENV, note_temp_dirs, run_as_main
from orchestrator.trial import protocol

CONTROL = "@orchestrate-worker "
# what a zygote imports before its first fork (never CUDA initialisation: a forked child must be able to)
PRELOAD = (
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "wandb",
    "sklearn.metrics",
    "datasets",
    "datasets.pipeline",
    "backbones",
    "experiments.config",
    "experiments.tasks",
    "experiments.metrics",
    "experiments.optim",
    "experiments.wandb_log",
)
# never given to a zygote or a worker: they belong to one trial
TRIAL_ENV_PREFIXES = ("WANDB_RUN_ID", "WANDB_NAME", "ORCHESTRATE_RUN_DIR")
MAX_MESSAGE = 4 << 20
KEEP_ENV = "ORCHESTRATE_ZYGOTE"  # "0": no zygote outlives its launch
# the sources a daemon's preloaded modules come from: a change in them means another daemon
CODE_PACKAGES = ("experiments", "backbones", "datasets", "orchestrator")
START_WAIT_S = 300.0  # how long a trial waits for a starting daemon's imports before it runs fresh


def keep_zygote(env: Mapping[str, str] = os.environ) -> bool:
    """Whether a launch's zygote may outlive it (``ORCHESTRATE_ZYGOTE``, on unless 0/false/no/off)."""
    return env.get(KEEP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def runtime_dir() -> Path | None:
    """The per-user directory of the controller's daemons (0700, ours, not a link); None: no usable one."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
        top = Path(base) / "orchestrate"
    else:
        top = Path("/tmp") / f"orchestrate-{os.getuid()}"
    try:
        top.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(top)
        if st.st_uid != os.getuid() or os.path.islink(top) or not os.path.isdir(top):
            return None  # someone else's: whoever can connect runs code as us
        if st.st_mode & 0o077:
            os.chmod(top, 0o700)
    except OSError:
        return None
    return top / "zygote"


def _package_dir(name: str, search: list[str]) -> Path | None:
    for entry in search:
        if os.path.isfile(os.path.join(entry, name, "__init__.py")):
            return Path(entry, name).resolve()
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def code_version(cwd: str, env: Mapping[str, str]) -> str:
    """A hash of what a daemon preloads for trials run in ``cwd`` with ``env``: the interpreter, the sources of
    ``CODE_PACKAGES`` (found as ``python -m`` would: ``cwd``, then ``PYTHONPATH``, then this ``sys.path``) and the
    distributions installed in its site-packages (names carry versions). A few milliseconds."""
    h = hashlib.sha256(f"{sys.executable}\0{sys.prefix}\0{sys.version}".encode())
    pythonpath = [os.path.join(cwd, p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    search = [cwd, *pythonpath, *(p for p in sys.path if p)]
    for name in CODE_PACKAGES:
        folder = _package_dir(name, search)
        h.update(f"\0package {name} {folder}\0".encode())
        if folder is None:
            continue
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                h.update(f"\0{path.relative_to(folder)} {len(data)}\0".encode() + data)
    for site in sorted({p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}):
        with contextlib.suppress(OSError):
            names = sorted(n for n in os.listdir(site) if n.endswith((".dist-info", ".egg-info", ".pth")))
            h.update(f"\0site {site}\0{chr(0).join(names)}".encode())
    return h.hexdigest()[:16]


def _locked(path: Path) -> bool:
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


def zygotes(folder: Path | None = None) -> list[dict[str, Any]]:
    """The running daemons of this user (what ``orchestrate status`` shows); stale sockets are removed."""
    folder = runtime_dir() if folder is None else folder
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
            if not _locked(folder / f"{path.stem}.lock"):
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


def _zygote_key(env: dict[str, str], cwd: Path) -> tuple[str, ...]:
    return (str(cwd), *(env.get(k, "\0") for k in ZYGOTE_ENV))


def _worker_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(TRIAL_ENV_PREFIXES)}


class _Forked:
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


class _Zygote:
    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork_worker(self, env: dict[str, str], cwd: Path, log: int) -> _Forked:
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
        return _Forked(os.fdopen(req_w, "wb", buffering=0), os.fdopen(out_r, "rb"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()  # the zygote's loop ends on end of file; its workers go on until their stdin ends


class _Kept:
    """A trial forked by a daemon that outlives the launch (its handle; ``pid`` once forked)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.pid: int | None = None
        self.stop_grace: float | None = None  # a stop asked before the fork
        self.ended = False
        self.lock = threading.Lock()


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes] | _Forked, key: tuple[str, ...]) -> None:
        self.proc = proc
        self.key = key
        self.job: Job | None = None
        self.child_pid: int | None = None
        self.log: IO[bytes] | None = None
        self.lock = threading.Lock()


class WarmExecutor(Executor):
    """Trials of built-in experiments run in forked children of one warm worker per slot."""

    def __init__(
        self,
        events: queue.Queue[tuple[str, Job, Any]],
        preload: tuple[str, ...] = PRELOAD,
        zygote: bool = True,
        keep: bool | None = None,
    ) -> None:
        super().__init__(events)
        self.preload = preload
        self.use_zygote = zygote and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET")
        # a zygote that outlives the launch (None: ``ORCHESTRATE_ZYGOTE``)
        self.keep = self.use_zygote and (keep_zygote() if keep is None else keep)
        self.places: dict[tuple[str, ...], tuple[Path, str] | None] = {}
        self.spawned: dict[
            str, tuple[subprocess.Popen[bytes], list[bool]]
        ] = {}  # name → (daemon, [answered])
        self.keep_lock = threading.Lock()
        self.workers: dict[str, _Worker] = {}  # slot id → worker
        self.zygotes: dict[tuple[str, ...], _Zygote] = {}
        self.fresh = LocalExecutor(events)  # for argv a worker cannot run in-process

    @staticmethod
    def runnable(argv: list[str]) -> bool:
        """Only ``python [-u] -m module args…``, with this interpreter, runs warm."""
        if not argv or not _same_interpreter(argv[0]):
            return False
        rest = argv[1:]
        while rest and rest[0] == "-u":
            rest = rest[1:]
        return len(rest) >= 2 and rest[0] == "-m"

    def warm_up(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start the zygote that trials of ``argv`` with ``env`` in ``cwd`` will need, now (non-blocking)."""
        if self.use_zygote and self.runnable(argv):
            with contextlib.suppress(OSError):
                place = self._place(env, cwd) if self.keep else None
                if place is not None:
                    self._daemon_ready(place, env, cwd)
                else:
                    self._zygote(env, cwd)

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        if not self.runnable(job.argv):
            self.fresh.submit(job, env, cwd)
            return
        job.run_dir.create()
        key = _zygote_key(env, cwd)
        rest = job.argv[1:]
        while rest[0] == "-u":
            rest = rest[1:]
        place = self._place(env, cwd) if self.keep else None
        if place is not None:
            self._submit_kept(job, env, cwd, place, rest[1], rest[2:])
            return
        request = {
            "module": rest[1],
            "args": rest[2:],
            "env": env,
            "cwd": str(cwd),
            "stderr": str(job.run_dir.stderr_log),
        }
        line = (json.dumps(request) + "\n").encode()
        log = open(job.run_dir.stdout_log, "ab")  # noqa: SIM115 - closed when the trial ends
        for attempt in range(2):
            worker = self.workers.get(job.slot.id)
            if worker is not None and (worker.proc.poll() is not None or worker.key != key):
                self._retire(worker)
                worker = None
            if worker is None:
                worker = self._start_worker(job, env, cwd, key)
            with worker.lock:
                worker.job = job
                worker.child_pid = None
                worker.log = log
            job.handle = worker
            job.started = time.time()
            assert worker.proc.stdin is not None
            try:
                worker.proc.stdin.write(line)
                worker.proc.stdin.flush()
                return
            except OSError:
                # the worker died while idle and its pump has not seen it yet: once, a new worker takes the trial
                with worker.lock:
                    ours = worker.job is job
                    if ours and attempt == 0:
                        worker.job, worker.log = None, None
                if not ours:
                    return  # its pump already reported the trial's end
                _gone(worker.proc)
                if attempt == 1:
                    self._end(worker, 255)

    # ------------------------------------------------------------ trials forked by a daemon outliving the launch
    def _place(self, env: dict[str, str], cwd: Path) -> tuple[Path, str] | None:
        """The daemon (folder, name) for trials with ``env`` in ``cwd``; None: none can be used (run warm here)."""
        key = _zygote_key(env, cwd)
        if key not in self.places:
            root = runtime_dir()
            place = None
            if root is not None:
                denv = self._daemon_env(env)
                # the directory is not part of the key (a trial's sys.path[0] becomes its own directory) unless
                # a relative PYTHONPATH entry depends on it; the packages found from it are, in the version
                relative = any(
                    p and not os.path.isabs(p) for p in denv.get("PYTHONPATH", "").split(os.pathsep)
                )
                version = code_version(str(cwd), denv)
                place = remote._zygote_place(denv, str(cwd) if relative else "", version, root)
            self.places[key] = place
        return self.places[key]

    def _daemon_env(self, env: dict[str, str]) -> dict[str, str]:
        """The daemon's environment: the launch's, less each trial's own variables, plus its settings."""
        denv = _worker_env(env)
        if self.preload != PRELOAD:
            denv["ORCHESTRATE_PRELOAD"] = ",".join(self.preload)
        return denv

    def _daemon_ready(self, place: tuple[Path, str], env: dict[str, str], cwd: Path) -> socket.socket | None:
        """A connection to the daemon if it listens; else start one unless one is starting (then None)."""
        folder, name = place
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(str(folder / f"{name}.sock"))
            with self.keep_lock:
                if name in self.spawned:
                    self.spawned[name][1][0] = True
            return sock
        except OSError:
            sock.close()
        with self.keep_lock:
            if _locked(folder / f"{name}.lock"):
                return None  # importing (or just binding its socket)
            spawned = self.spawned.get(name)
            if spawned is not None and spawned[0].poll() is None:
                return None  # ours, not yet holding its lock
            if spawned is not None and not spawned[1][0]:
                raise OSError(f"the zygote daemon exited ({spawned[0].returncode}) before it listened")
            log = folder / f"{name}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-u",
                        "-m",
                        "orchestrator.remote",
                        "--zygote",
                        str(folder),
                        name,
                        "--local",
                    ],
                    cwd=str(cwd),
                    env=self._daemon_env(env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # never dies with this controller: it serves the next launch
                )
            self.spawned[name] = (proc, [False])
        return None

    def _submit_kept(
        self, job: Job, env: dict[str, str], cwd: Path, place: tuple[Path, str], module: str, args: list[str]
    ) -> None:
        err = os.open(job.run_dir.stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        handle = _Kept(job)
        job.handle = handle
        job.started = time.time()
        threading.Thread(
            target=self._run_kept,
            args=(handle, env, cwd, place, module, args, err),
            daemon=True,
            name=f"kept-{job.key}",
        ).start()

    def _run_kept(
        self,
        handle: _Kept,
        env: dict[str, str],
        cwd: Path,
        place: tuple[Path, str],
        module: str,
        args: list[str],
        err: int,
    ) -> None:
        job = handle.job
        trial: remote.WarmTrial | None = None
        out_r = -1
        try:
            deadline = time.monotonic() + START_WAIT_S
            conn = None
            while conn is None and time.monotonic() < deadline:
                conn = self._daemon_ready(place, env, cwd)
                if conn is None:
                    time.sleep(0.05)
            if conn is not None:
                out_r, out_w = os.pipe()
                try:
                    trial = remote.fork_trial(conn, module, args, env, str(cwd), 10.0, out_w, err)
                finally:
                    os.close(out_w)
                if trial is None:
                    conn.close()
                    os.close(out_r)
                    raise OSError("the zygote daemon did not fork the trial")
        except Exception as exc:  # noqa: BLE001 - whatever it was, the trial still runs (fresh)
            with contextlib.suppress(OSError):
                os.write(
                    err, f"orchestrate: no zygote ({exc}); starting the trial as a new process\n".encode()
                )
        finally:
            os.close(err)
        if trial is None:
            with handle.lock:
                grace = handle.stop_grace
                try:
                    self.fresh.submit(job, env, cwd)  # its handle is now the Popen: stops go there
                except OSError:  # its run dir went away meanwhile: a failed start, never a hang
                    job.ended = time.time()
                    self.events.put(("exit", job, 127))
                    return
            if grace is not None:
                self.fresh.stop(job, grace)
            return
        with handle.lock:
            handle.pid = job.pid = trial.pid
            grace = handle.stop_grace
        if grace is not None:
            self._stop_kept(handle, grace)
        log: IO[bytes] | None = None
        with contextlib.suppress(OSError):
            log = open(job.run_dir.stdout_log, "ab")  # noqa: SIM115 - closed below
        with os.fdopen(out_r, "rb") as out:
            for raw in iter(out.readline, b""):
                if log is not None:  # a full disk loses log lines, never the events
                    with contextlib.suppress(OSError):
                        log.write(raw)
                event = protocol.parse_line(raw.decode("utf-8", "replace"))
                if event is not None:
                    if log is not None:
                        with contextlib.suppress(OSError):
                            log.flush()
                    self.events.put(("event", job, event))
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        rc = trial.wait()
        with handle.lock:
            handle.ended = True
        with contextlib.suppress(OSError):
            os.close(trial.lifeline)
        trial.conn.close()
        job.ended = time.time()
        self.events.put(("exit", job, rc))

    def _stop_kept(self, handle: _Kept, grace: float) -> None:
        with handle.lock:
            if handle.pid is None:
                handle.stop_grace = grace  # signalled once forked
                return
            pid = handle.pid
        _signal_group(pid, signal.SIGTERM)

        def _kill() -> None:
            with handle.lock:
                alive = not handle.ended
            if alive:
                _signal_group(pid, signal.SIGKILL)

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()

    def _start_worker(self, job: Job, env: dict[str, str], cwd: Path, key: tuple[str, ...]) -> _Worker:
        log_path = self._log_path(env, job)
        proc: subprocess.Popen[bytes] | _Forked | None = None
        if self.use_zygote:
            try:
                zygote = self._zygote(env, cwd)
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    proc = zygote.fork_worker(_worker_env(env), cwd, fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # a message too large, a zygote gone: this worker starts on its own
                with contextlib.suppress(OSError), open(log_path, "a") as fh:
                    fh.write(f"orchestrate: no zygote for slot {job.slot.id} ({exc}); starting a worker\n")
                proc = None
        if proc is None:
            proc = self._popen(
                ["-m", "orchestrator.executors.warm", *self.preload], env, cwd, subprocess.PIPE, log_path
            )
        worker = _Worker(proc, key)
        self.workers[job.slot.id] = worker
        threading.Thread(target=self._pump, args=(worker,), daemon=True, name=f"warm-{job.slot.id}").start()
        return worker

    def _zygote(self, env: dict[str, str], cwd: Path) -> _Zygote:
        key = _zygote_key(env, cwd)
        zygote = self.zygotes.get(key)
        if zygote is not None and zygote.alive():
            return zygote
        if zygote is not None:
            zygote.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for s in (ours, theirs):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
            proc = self._popen(
                ["-m", "orchestrator.executors.warm", "--zygote", *self.preload],
                env,
                cwd,
                theirs.fileno(),
                self._log_dir(env) / f"zygote-{os.getpid()}-{len(self.zygotes)}.log",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.zygotes[key] = zygote = _Zygote(proc, ours)
        return zygote

    @staticmethod
    def _popen(
        args: list[str], env: dict[str, str], cwd: Path, stdin: Any, log: Path
    ) -> subprocess.Popen[bytes]:
        argv, preexec = _dies_with_parent([sys.executable, "-u", *args], env, cwd)
        with open(log, "ab") as err:
            return subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=_worker_env(env),
                stdin=stdin,
                stdout=subprocess.PIPE if stdin is subprocess.PIPE else subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=preexec,
            )

    @staticmethod
    def _log_dir(env: dict[str, str]) -> Path:
        root = Path(env.get("ORCHESTRATE_CACHE_DIR") or Path.home() / ".cache" / "orchestrate") / "workers"
        root.mkdir(parents=True, exist_ok=True)
        return root

    @classmethod
    def _log_path(cls, env: dict[str, str], job: Job) -> Path:
        """Where a worker's own messages go (its trials' output goes to their run dirs)."""
        return cls._log_dir(env) / f"{job.slot.id}-{os.getpid()}.log"

    def _retire(self, worker: _Worker) -> None:
        """An idle worker whose environment no longer fits its slot's trials: its stdin ends, so it exits."""
        if worker.proc.stdin is not None:
            with contextlib.suppress(OSError):
                worker.proc.stdin.close()

    def _pump(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        try:
            for raw in protocol.iter_lines(worker.proc.stdout.readline):
                line = raw.decode("utf-8", "replace")
                if line.startswith(CONTROL) and self._control(worker, line):
                    continue
                with worker.lock:
                    job, log = worker.job, worker.log
                if log is not None:  # a full disk loses log lines, never the events
                    with contextlib.suppress(OSError):
                        log.write(raw)
                event = protocol.parse_line(line)
                if event is not None and job is not None:
                    if log is not None:
                        with contextlib.suppress(OSError):
                            log.flush()
                    self.events.put(("event", job, event))
        except Exception as exc:  # the trial's end is reported whatever happens (the controller waits for it)
            print(f"orchestrate: reading a warm worker's output failed: {exc!r}", file=sys.stderr)
            _gone(worker.proc)
        finally:
            with contextlib.suppress(OSError):
                worker.proc.stdout.close()
            worker.proc.wait()
            if worker.job is not None:  # the worker died under a trial
                self._end(worker, -signal.SIGKILL)

    def _control(self, worker: _Worker, line: str) -> bool:
        """A worker's control line (the trial's pid, its exit status); False if it is not a well-formed one
        (then it is the trial's own output)."""
        try:
            msg = json.loads(line[len(CONTROL) :])
        except (ValueError, RecursionError):
            return False
        if not isinstance(msg, dict):
            return False
        value = msg.get("pid") if msg.get("event") == "started" else msg.get("rc")
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) < value < 2**31:
            return False
        if msg.get("event") == "started":
            with worker.lock:
                worker.child_pid = value
                if worker.job is not None:
                    worker.job.pid = worker.child_pid
                    if worker.job.stopping is not None:  # stop was asked before the fork
                        _signal_group(worker.child_pid, signal.SIGTERM)
            return True
        if msg.get("event") == "exit":
            self._end(worker, value)
            return True
        return False

    def _end(self, worker: _Worker, rc: int) -> None:
        with worker.lock:
            job, log = worker.job, worker.log
            worker.job, worker.log, worker.child_pid = None, None, None
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        if job is not None:
            job.ended = time.time()
            self.events.put(("exit", job, rc))

    def stop(self, job: Job, grace: float = 10.0) -> None:
        worker = job.handle
        if isinstance(worker, _Kept):
            with worker.lock:
                kept = job.handle is worker
            if kept:
                self._stop_kept(worker, grace)
                return
            worker = job.handle
        if not isinstance(worker, _Worker):
            self.fresh.stop(job, grace)
            return
        with worker.lock:
            if worker.job is not job or worker.child_pid is None:
                return  # not forked yet: the pump signals it when it reports its pid
            pid = worker.child_pid
        _signal_group(pid, signal.SIGTERM)

        def _kill() -> None:
            with worker.lock:
                alive = worker.job is job and worker.child_pid == pid
            if alive:
                _signal_group(pid, signal.SIGKILL)

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                self._retire(worker)
        for zygote in self.zygotes.values():
            zygote.close()


def _gone(proc: subprocess.Popen[bytes] | _Forked) -> None:
    """A worker whose request pipe broke: it is dead (or made so), and ``poll()`` says it from now on."""
    if isinstance(proc, _Forked):
        proc.returncode = -signal.SIGKILL if proc.returncode is None else proc.returncode
    elif proc.poll() is None:
        proc.kill()
        proc.wait()


def _same_interpreter(exe: str) -> bool:
    if exe == sys.executable:
        return True
    try:
        return os.path.samefile(exe, sys.executable)
    except OSError:
        return False


# ------------------------------------------------------------------------------- the zygote and the worker
def _preload(names: list[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional module only costs its warmth
            print(f"warm worker: could not preload {name}: {exc}", file=sys.stderr)
    note_temp_dirs()  # each trial forked from here gets its own copy of them (remote.own_temp_dirs)


def _zygote_main(preload: list[str]) -> None:
    """Import once, then fork a worker for each request on the socket that is this process's stdin."""
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _preload(preload)
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
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its trials
                os.setsid()
                _die_with_parent()  # with the zygote, which dies with the controller
                for target, fd in zip((0, 1, 2), fds, strict=True):
                    os.dup2(fd, target)
                    os.close(fd)
                os.environ.clear()
                os.environ.update(req["env"])
                os.chdir(req["cwd"])
                _serve(os.fdopen(0, "r", closefd=False))
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _worker_main(preload: list[str]) -> None:
    _preload(preload)
    _serve(sys.stdin)


def _serve(requests: IO[str]) -> None:
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
            _end_group(pid, 2.0)
        os._exit(128 + signum)

    _become_subreaper()

    signal.signal(signal.SIGTERM, _forward)
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the trial
            code = 1
            try:
                os.setsid()
                _die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.environ.clear()
                os.environ.update(req["env"])
                os.chdir(req["cwd"])
                err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(err, 2)
                os.close(err)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)  # the worker's stdin is its request channel, not the trial's
                os.close(null)
                control.close()
                code = run_as_main(req["module"], req["args"])
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        current["pid"] = pid
        say(event="started", pid=pid)
        _, status = os.waitpid(pid, 0)
        current["group"] = current.pop("pid")
        rc = os.waitstatus_to_exitcode(status)
        say(event="exit", rc=rc)
        _end_group(pid, ORPHAN_GRACE)  # what the trial left running (its process group) ends with it
        current.pop("group", None)


def _end_group(pgid: int, grace: float) -> None:
    """In a worker: SIGTERM to what is left of a trial's process group, SIGKILL after ``grace`` s. The worker is
    its trials' subreaper, so what they leave behind is its child: reaped here, never a zombie that looks alive."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        _reap()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _reap()


def _reap() -> None:
    """Collect every ended child (leftovers of finished trials adopted by this worker)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _become_subreaper() -> None:
    """Linux: processes a trial leaves behind are re-parented to this worker (PR_SET_CHILD_SUBREAPER), not to
    init, so that ``_end_group`` can reap them and see its group empty at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        _zygote_main(sys.argv[2:])
    else:
        _worker_main(sys.argv[1:])
