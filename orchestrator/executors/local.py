"""Run trials as local subprocesses, one process group each, pinned to their slot by the environment."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.executors._base import Executor, Job
from orchestrator.trial import protocol


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


#: seconds a trial's leftover processes get after its main process ended (SIGTERM, then SIGKILL)
ORPHAN_GRACE = 5.0


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


def end_group(pgid: int, grace: float) -> None:
    """SIGTERM to what is left of process group ``pgid``, SIGKILL once ``grace`` seconds passed with some of it
    still there. Waits (so that a controller about to exit leaves nothing behind); returns at once when the
    group is empty."""
    if not _kill_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not _kill_group(pgid, 0):
            return
    _kill_group(pgid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group (never a lone process of that id); False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _dies_with_parent(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[list[str], Any]:
    """The command line and pre-exec hook that make the child die with the controller (PR_SET_PDEATHSIG).

    With util-linux's ``setpriv --pdeathsig`` as the first program, Popen needs no ``preexec_fn`` and can
    use vfork: 2.7 ms a start against 36 ms for a fork of a controller holding 200 MB (measured here), which
    is slot time at every trial start. The program is resolved first, so a missing one is still reported by
    us (exit 127) rather than by setpriv. Without setpriv (not Linux, or a bare image): a ctypes pre-exec hook.
    """
    if _SETPRIV is None or not argv:
        return argv, _die_with_parent
    exe = argv[0]
    if os.sep in exe:
        path: str | None = exe if os.path.isabs(exe) else os.path.join(str(cwd), exe)
        if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            path = None
    else:
        path = shutil.which(exe, path=env.get("PATH", os.defpath))
    if path is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
    return [_SETPRIV, "--pdeathsig", "TERM", "--", os.path.abspath(path), *argv[1:]], None


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
