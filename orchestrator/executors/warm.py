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
may outlive the launch: it is then the **zygote daemon** (orchestrator/zygote/daemon.py), run here (``--local``), in a
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

The processes themselves (the zygote, the workers, the daemon) and the client side of a daemon are
orchestrator/zygote/; this module is the executor that uses them.
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

from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.trial import protocol
from orchestrator.zygote import client, keys
from orchestrator.zygote.client import render_zygotes, zygotes
from orchestrator.zygote.forking import dies_with_parent, signal_group
from orchestrator.zygote.keys import KEEP_ENV, ZYGOTE_ENV, code_version, keep_zygote, runtime_dir
from orchestrator.zygote.preload import PRELOAD
from orchestrator.zygote.workers import CONTROL, Forked, Forker, socket_pair, worker_env

__all__ = [
    "CONTROL",
    "KEEP_ENV",
    "PRELOAD",
    "ZYGOTE_ENV",
    "WarmExecutor",
    "code_version",
    "keep_zygote",
    "render_zygotes",
    "runtime_dir",
    "zygotes",
]

START_WAIT_S = 300.0  # how long a trial waits for a starting daemon's imports before it runs fresh


def _zygote_key(env: dict[str, str], cwd: Path) -> tuple[str, ...]:
    return (str(cwd), *(env.get(k, "\0") for k in ZYGOTE_ENV))


class _Kept:
    """A trial forked by a daemon that outlives the launch (its handle; ``pid`` once forked)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.pid: int | None = None
        self.stop_grace: float | None = None  # a stop asked before the fork
        self.ended = False
        self.lock = threading.Lock()


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes] | Forked, key: tuple[str, ...]) -> None:
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
        self.zygotes: dict[tuple[str, ...], Forker] = {}
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
                place = keys.place(denv, str(cwd) if relative else "", version, root)
            self.places[key] = place
        return self.places[key]

    def _daemon_env(self, env: dict[str, str]) -> dict[str, str]:
        """The daemon's environment: the launch's, less each trial's own variables, plus its settings."""
        denv = worker_env(env)
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
            if client.locked(folder / f"{name}.lock"):
                return None  # importing (or just binding its socket)
            spawned = self.spawned.get(name)
            if spawned is not None and spawned[0].poll() is None:
                return None  # ours, not yet holding its lock
            if spawned is not None and not spawned[1][0]:
                raise OSError(f"the zygote daemon exited ({spawned[0].returncode}) before it listened")
            # never dies with this controller: it serves the next launch
            proc = client.spawn_local(folder, name, self._daemon_env(env), str(cwd))
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
        trial: client.WarmTrial | None = None
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
                    trial = client.fork_trial(conn, module, args, env, str(cwd), 10.0, out_w, err)
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
        signal_group(pid, signal.SIGTERM)

        def _kill() -> None:
            with handle.lock:
                alive = not handle.ended
            if alive:
                signal_group(pid, signal.SIGKILL)

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()

    def _start_worker(self, job: Job, env: dict[str, str], cwd: Path, key: tuple[str, ...]) -> _Worker:
        log_path = self._log_path(env, job)
        proc: subprocess.Popen[bytes] | Forked | None = None
        if self.use_zygote:
            try:
                zygote = self._zygote(env, cwd)
                fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    proc = zygote.fork_worker(worker_env(env), cwd, fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # a message too large, a zygote gone: this worker starts on its own
                with contextlib.suppress(OSError), open(log_path, "a") as fh:
                    fh.write(f"orchestrate: no zygote for slot {job.slot.id} ({exc}); starting a worker\n")
                proc = None
        if proc is None:
            proc = self._popen(
                ["-m", "orchestrator.zygote", "--worker", *self.preload], env, cwd, subprocess.PIPE, log_path
            )
        worker = _Worker(proc, key)
        self.workers[job.slot.id] = worker
        threading.Thread(target=self._pump, args=(worker,), daemon=True, name=f"warm-{job.slot.id}").start()
        return worker

    def _zygote(self, env: dict[str, str], cwd: Path) -> Forker:
        key = _zygote_key(env, cwd)
        zygote = self.zygotes.get(key)
        if zygote is not None and zygote.alive():
            return zygote
        if zygote is not None:
            zygote.close()
        ours, theirs = socket_pair()
        try:
            proc = self._popen(
                ["-m", "orchestrator.zygote", "--forker", *self.preload],
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
        self.zygotes[key] = zygote = Forker(proc, ours)
        return zygote

    @staticmethod
    def _popen(
        args: list[str], env: dict[str, str], cwd: Path, stdin: Any, log: Path
    ) -> subprocess.Popen[bytes]:
        argv, preexec = dies_with_parent([sys.executable, "-u", *args], env, cwd)
        with open(log, "ab") as err:
            return subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=worker_env(env),
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
                        signal_group(worker.child_pid, signal.SIGTERM)
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
        signal_group(pid, signal.SIGTERM)

        def _kill() -> None:
            with worker.lock:
                alive = worker.job is job and worker.child_pid == pid
            if alive:
                signal_group(pid, signal.SIGKILL)

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                self._retire(worker)
        for zygote in self.zygotes.values():
            zygote.close()


def _gone(proc: subprocess.Popen[bytes] | Forked) -> None:
    """A worker whose request pipe broke: it is dead (or made so), and ``poll()`` says it from now on."""
    if isinstance(proc, Forked):
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
