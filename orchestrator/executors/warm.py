"""Warm workers: one pre-imported Python process per slot that forks each trial (a fork server).

A fresh ``python -m experiments.train`` pays for the interpreter, torch, timm and wandb imports every time
(seconds on a small CPU, before the first training step). A warm worker is started once per slot with the
slot's environment and imports those modules up front without touching CUDA; for each trial it ``fork()``s:
the child gets a clean copy of the warmed interpreter, applies the trial's environment, changes directory,
sends stderr to the run dir and runs the module as ``__main__`` — the same code path as a fresh process,
minus the imports. The worker's stdout is the protocol channel, exactly as for a fresh process.

Control lines from the worker (``@orchestrate-worker {...}``) tell the executor the child's pid and its exit
status; everything else is the trial's own output. If a worker dies, its trial ends as a failure (and is
retried) and the next trial on that slot starts a new worker. A fresh process per trial (``--workers
fresh``) stays available as the safe mode, and user programs (``program:``/``command:``) always use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from orchestrator import protocol
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor, _die_with_parent, _signal_group

CONTROL = "@orchestrate-worker "
# what a worker imports before its first fork (never CUDA initialisation: a forked child must be able to)
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


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.job: Job | None = None
        self.child_pid: int | None = None
        self.log: IO[bytes] | None = None
        self.lock = threading.Lock()


class WarmExecutor(Executor):
    """Trials of built-in experiments run in forked children of one warm worker per slot."""

    def __init__(self, events: queue.Queue[tuple[str, Job, Any]], preload: tuple[str, ...] = PRELOAD) -> None:
        super().__init__(events)
        self.preload = preload
        self.workers: dict[str, _Worker] = {}  # slot id → worker
        self.fresh = LocalExecutor(events)  # for argv a worker cannot run in-process

    @staticmethod
    def runnable(argv: list[str]) -> bool:
        """Only ``python [-u] -m module args…`` runs warm."""
        rest = argv[1:]
        while rest and rest[0] == "-u":
            rest = rest[1:]
        return len(rest) >= 2 and rest[0] == "-m"

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        if not self.runnable(job.argv):
            self.fresh.submit(job, env, cwd)
            return
        job.run_dir.create()
        worker = self.workers.get(job.slot.id)
        if worker is None or worker.proc.poll() is not None:
            worker = self._start_worker(job, env, cwd)
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
        log = open(job.run_dir.stdout_log, "ab")  # noqa: SIM115 - closed when the trial ends
        with worker.lock:
            worker.job = job
            worker.child_pid = None
            worker.log = log
        job.handle = worker
        job.started = time.time()
        assert worker.proc.stdin is not None
        try:
            worker.proc.stdin.write((json.dumps(request) + "\n").encode())
            worker.proc.stdin.flush()
        except OSError:
            self._end(worker, 255)

    def _start_worker(self, job: Job, env: dict[str, str], cwd: Path) -> _Worker:
        base = {
            k: v
            for k, v in env.items()
            if not k.startswith(("WANDB_RUN_ID", "WANDB_NAME", "ORCHESTRATE_RUN_DIR"))
        }
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "orchestrator.executors.warm", *self.preload],
            cwd=str(cwd),
            env=base,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self._log_path(env, job), "ab"),  # noqa: SIM115
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        worker = _Worker(proc)
        self.workers[job.slot.id] = worker
        threading.Thread(target=self._pump, args=(worker,), daemon=True, name=f"warm-{job.slot.id}").start()
        return worker

    @staticmethod
    def _log_path(env: dict[str, str], job: Job) -> Path:
        """Where a worker's own messages go (its trials' output goes to their run dirs)."""
        root = Path(env.get("ORCHESTRATE_CACHE_DIR") or Path.home() / ".cache" / "orchestrate") / "workers"
        root.mkdir(parents=True, exist_ok=True)
        return root / f"{job.slot.id}-{os.getpid()}.log"

    def _pump(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        for raw in iter(worker.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            if line.startswith(CONTROL):
                try:
                    msg = json.loads(line[len(CONTROL) :])
                except json.JSONDecodeError:
                    continue
                if msg.get("event") == "started":
                    with worker.lock:
                        worker.child_pid = int(msg["pid"])
                        if worker.job is not None:
                            worker.job.pid = worker.child_pid
                            if worker.job.stopping is not None:  # stop was asked before the fork
                                _signal_group(worker.child_pid, signal.SIGTERM)
                elif msg.get("event") == "exit":
                    self._end(worker, int(msg["rc"]))
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
        worker.proc.wait()
        if worker.job is not None:  # the worker died under a trial
            self._end(worker, -signal.SIGKILL)

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
            if worker.proc.poll() is None and worker.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()


# ------------------------------------------------------------------------------------------- the worker
def _worker_main(preload: list[str]) -> None:
    import importlib
    import runpy

    control = os.fdopen(os.dup(1), "w", buffering=1)

    def say(**msg: Any) -> None:
        control.write(CONTROL + json.dumps(msg) + "\n")
        control.flush()

    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional module only costs its warmth
            print(f"warm worker: could not preload {name}: {exc}", file=sys.stderr)
    current: dict[str, int] = {}

    def _forward(signum: int, frame: Any) -> None:
        pid = current.get("pid")
        if pid:
            _signal_group(pid, signal.SIGTERM)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _forward)
    for line in sys.stdin:
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
                sys.argv = [req["module"], *req["args"]]
                try:
                    runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
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
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        current["pid"] = pid
        say(event="started", pid=pid)
        _, status = os.waitpid(pid, 0)
        current.pop("pid", None)
        rc = os.waitstatus_to_exitcode(status)
        say(event="exit", rc=rc)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
