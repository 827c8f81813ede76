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

Life and death: the zygote dies with the controller (PR_SET_PDEATHSIG), a worker with its zygote, a trial
with its worker (each forwards SIGTERM to the next). A worker or zygote that dies ends its trial as a
failure (retried) and the next trial on that slot gets a new one. A fresh process per trial (``--workers
fresh``) stays available as the safe mode, and any argv that is not ``python -m module …`` with orchestrate's
own interpreter runs fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from orchestrator import protocol
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import (
    ORPHAN_GRACE,
    LocalExecutor,
    _die_with_parent,
    _dies_with_parent,
    _signal_group,
)
from orchestrator.remote import ZYGOTE_ENV, run_as_main

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
    ) -> None:
        super().__init__(events)
        self.preload = preload
        self.use_zygote = zygote and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET")
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
