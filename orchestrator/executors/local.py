"""Run trials as local subprocesses, one process group each, pinned to their slot by the environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from orchestrator import protocol
from orchestrator.executors._base import Executor, Job


class LocalExecutor(Executor):
    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        job.run_dir.create()
        stdout_log = open(job.run_dir.stdout_log, "ab")  # noqa: SIM115 - owned by the reader thread
        try:
            stderr_log = open(job.run_dir.stderr_log, "ab")  # noqa: SIM115
        except OSError:  # an unwritable run dir: nothing started, the controller pauses
            stdout_log.close()
            raise
        try:
            proc = subprocess.Popen(
                job.argv,
                cwd=str(cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_log,
                start_new_session=True,  # its own process group: Ctrl-C reaches the controller only
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            stdout_log.close()
            stderr_log.write(f"orchestrate: cannot start {job.argv[0]!r}: {exc}\n".encode())
            stderr_log.close()
            job.started = time.time()
            self.events.put(("exit", job, 127))
            return
        stderr_log.close()  # the child holds its own descriptor
        job.handle = proc
        job.pid = proc.pid
        job.started = time.time()
        threading.Thread(
            target=self._pump, args=(job, proc, stdout_log), daemon=True, name=f"pump-{job.key}"
        ).start()

    def _pump(self, job: Job, proc: subprocess.Popen[bytes], log: object) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            # a full disk loses log lines, never the events (nor the exit the controller waits for)
            with contextlib.suppress(OSError):
                log.write(raw)  # type: ignore[attr-defined]
            event = protocol.parse_line(raw.decode("utf-8", "replace"))
            if event is not None:
                with contextlib.suppress(OSError):
                    log.flush()  # type: ignore[attr-defined]
                self.events.put(("event", job, event))
        with contextlib.suppress(OSError):
            log.close()  # type: ignore[attr-defined]
        proc.stdout.close()
        rc = proc.wait()
        job.ended = time.time()
        self.events.put(("exit", job, rc))

    def stop(self, job: Job, grace: float = 10.0) -> None:
        proc = job.handle
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)

        def _kill() -> None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if the controller dies (SIGKILL included)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
