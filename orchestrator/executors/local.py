"""Run trials as local subprocesses, one process group each, pinned to their slot by the environment."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.executors._base import Executor, Job
from orchestrator.trial import protocol
from orchestrator.zygote.forking import ORPHAN_GRACE, end_group
from orchestrator.zygote.forking import die_with_parent as _die_with_parent
from orchestrator.zygote.forking import dies_with_parent as _dies_with_parent
from orchestrator.zygote.forking import kill_group as _kill_group
from orchestrator.zygote.forking import signal_group as _signal_group

# (the process-group code is orchestrator/zygote/forking.py's, shared with the warm executors and remote boxes;
# these names stay importable from here: the SSH and Slurm executors start their processes with them)
__all__ = [
    "ORPHAN_GRACE",
    "LocalExecutor",
    "_die_with_parent",
    "_dies_with_parent",
    "end_group",
    "read_lines",
]


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
            argv, preexec = _dies_with_parent(job.argv, env, cwd)
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_log,
                start_new_session=True,  # its own process group: Ctrl-C reaches the controller only
                preexec_fn=preexec,
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
        """Forward the trial's lines until its stdout ends — or until its main process ended and whatever it
        left behind holding the pipe was stopped (its process group: TERM, grace, KILL); then report the exit.
        Whatever happens here, the exit is reported (the controller waits for it)."""
        assert proc.stdout is not None
        try:
            for raw in read_lines(proc, ORPHAN_GRACE):
                # a full disk loses log lines, never the events (nor the exit the controller waits for)
                with contextlib.suppress(OSError):
                    log.write(raw)  # type: ignore[attr-defined]
                event = protocol.parse_line(raw.decode("utf-8", "replace"))
                if event is not None:
                    with contextlib.suppress(OSError):
                        log.flush()  # type: ignore[attr-defined]
                    self.events.put(("event", job, event))
        except Exception as exc:  # never leave the controller waiting for an exit that is never reported
            with contextlib.suppress(OSError):
                log.write(f"orchestrate: reading the trial's output failed: {exc!r}\n".encode())  # type: ignore[attr-defined]
            _signal_group(proc.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                log.close()  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                proc.stdout.close()
            rc = proc.wait()
            end_group(proc.pid, ORPHAN_GRACE)  # what the trial left running (not holding its stdout) ends too
            job.ended = time.time()
            self.events.put(("exit", job, rc))

    def stop(self, job: Job, grace: float = 10.0) -> None:
        proc = job.handle
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        pgid = proc.pid

        def _kill() -> None:
            if proc.poll() is None:
                _signal_group(pgid, signal.SIGKILL)
            else:
                _kill_group(
                    pgid, signal.SIGKILL
                )  # its main process is gone; what is left of its group goes too

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()


def read_lines(proc: subprocess.Popen[bytes], grace: float = ORPHAN_GRACE) -> Iterator[bytes]:
    """The lines of ``proc``'s stdout (over-long ones cut at ``protocol.MAX_LINE``), until end of file — or until
    ``proc`` has ended and the pipe is still held open by something it left behind: its process group then
    gets SIGTERM, SIGKILL ``grace`` seconds later, and the reading stops at the latest a second after that
    (a process that left the group holds a pipe no one reads any more)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    exited: float | None = None
    killed = False
    checked = 0.0
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            while True:
                cut = buf.find(b"\n", 0, protocol.MAX_LINE)
                if cut >= 0:
                    line, buf = buf[: cut + 1], buf[cut + 1 :]
                elif len(buf) >= protocol.MAX_LINE:  # a line this long is cut; the rest never reads as a line
                    line, buf = buf[: protocol.MAX_LINE], b" " + buf[protocol.MAX_LINE :]
                else:
                    break
                yield line
        now = time.monotonic()
        if now - checked < 0.2:
            continue
        checked = now
        if exited is None:
            if proc.poll() is not None:
                exited = now
                _kill_group(proc.pid, signal.SIGTERM)
        elif not killed and now - exited > grace:
            killed = True
            _kill_group(proc.pid, signal.SIGKILL)
        elif killed and now - exited > grace + 1.0:
            break
    if buf:
        yield buf
