"""Run trials on remote hosts through the system ``ssh`` client; and a router that mixes local and remote slots.

One trial is one ``ssh HOST -- cd WORKDIR && exec PYTHON -u -m orchestrator.remote`` subprocess over the host's
multiplexed connection (orchestrator/hosts.py has the options). The job (argv, environment, small run-directory
files) goes down the session's stdin as one JSON line — secrets never appear on a command line or in a file —
and the trial's stdout comes back on the session's stdout: the same protocol lines as a local child, so the
controller stays the only writer of the study. Its stderr streams into the local ``stderr.log``. A ``python -m``
trial is forked there by the host's zygote daemon, which imported torch & co. once (orchestrator/remote.py);
``--workers fresh`` (``warm=False``) starts each one as a new process.

Exit semantics: the launcher reports the trial's own exit code (``remote_exit``) before it ends. If ssh ends
without that report — exit 255, a dropped connection, a dead box — the host is lost: the job is marked
``job.lost`` and its exit is reported as 255, which the controller treats as "re-queue elsewhere, rest the host",
not as a trial failure. A lost host is probed with ``ssh HOST true`` under exponential back-off
(:meth:`SSHExecutor.host_lost`); :meth:`SSHExecutor.hosts_back` hands back the hosts that answer again.

At the end of each trial its remote run directory (checkpoints, the offline W&B run, anything it wrote) is copied
back into the controller's run directory. While it runs, each ``checkpoint`` protocol event (a resumable checkpoint
is complete on the host) copies back what changed since the last copy — the checkpoint, the best checkpoint, the
offline W&B run — on a background thread per job over the host's shared connection: the event reader never waits,
and checkpoints arriving while a copy runs are coalesced into one copy of the newest. Every file is received under
a temporary name and all are renamed into place only once the whole copy arrived (the checkpoint last), so a host
that dies mid-copy leaves the previous complete checkpoint. A job re-queued after its host was lost therefore
resumes from its last copied checkpoint: locally the run directory holds it; on another host the controller's run
directory is sent there before the trial starts (:meth:`SSHExecutor._push`; otherwise the host's run directory is
emptied first, so a stale one from another launch is never resumed).

The dataset folders a trial reads are copied to each host once (orchestrator/datasync.py), and its ``trial.json``
names the host's copy. What travels (the job's payload, the run directory both ways) is
orchestrator/executors/ssh_transfer.py; the executor that mixes local and remote slots is routing.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from orchestrator import datasync
from orchestrator import hosts as hs
from orchestrator.executors import ssh_transfer as xfer
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import _dies_with_parent
from orchestrator.executors.ssh_transfer import LOGS, PID, _CheckpointSync
from orchestrator.spec.model import HostSpec
from orchestrator.trial import protocol
from orchestrator.trial.errors import RunError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0


class _Failed(Exception):
    """A remote job that cannot start: the line for its stderr.log and the exit code to report."""

    def __init__(self, text: str, rc: int) -> None:
        super().__init__(text)
        self.text, self.rc = text, rc


class SSHExecutor(Executor):
    def __init__(
        self, events: queue.Queue[tuple[str, Job, Any]], hosts: Sequence[HostSpec], warm: bool = True
    ) -> None:
        super().__init__(events)
        self.hosts = {h.name: h for h in hosts}
        # False (``--workers fresh``): no zygote daemon on the hosts (orchestrator/remote.py)
        self.warm = warm
        self.ctl = hs.control_dir()
        self.sync = hs.CodeSync(PROJECT_ROOT)
        self.data = datasync.DataSync()
        self.sync_times: list[float] = []  # checkpoint event received → copied (seconds), for measurements
        self._lock = threading.Lock()
        self._resting: dict[str, float] = {}  # host -> when it was lost
        self._back: list[str] = []
        self.closed = False

    # ----- start -----
    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        job.run_dir.create()
        job.started = time.time()
        threading.Thread(target=self._run, args=(job, env), daemon=True, name=f"ssh-{job.key}").start()

    def remote_run_dir(self, job: Job) -> str:
        p = job.run_dir.path
        return f"{hs.STATE_DIR}/runs/{p.parent.name}/{p.name}"

    def payload(
        self,
        job: Job,
        env: dict[str, str],
        data: dict[str, str] | None = None,
        paths: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """What the remote launcher gets on stdin (ssh_transfer.payload): argv, environment and files, with
        local paths mapped; ``data``: trial.json fields → dataset copies, ``paths``: weights files → copies."""
        host = self.hosts[job.slot.host]
        remote_rd = f"{hs.WORKDIR_TOKEN}/{self.remote_run_dir(job)}"
        return xfer.payload(job, env, host, remote_rd, self.warm, data, paths)

    def _run(self, job: Job, env: dict[str, str]) -> None:
        try:
            self._run_job(job, env)
        except Exception as exc:  # never leave the controller waiting for an exit that does not come
            with contextlib.suppress(OSError), open(job.run_dir.stderr_log, "ab") as fh:
                fh.write(f"orchestrate: remote job failed: {type(exc).__name__}: {exc}\n".encode())
            if job.ended is None:
                self._exit(job, 1)

    def _run_job(self, job: Job, env: dict[str, str]) -> None:
        host = self.hosts[job.slot.host]
        with open(job.run_dir.stderr_log, "ab") as stderr_log:
            try:
                body, skip, seen = self._prepare(job, env, host, stderr_log)
            except hs.HostUnreachable as exc:
                self._lost(job, str(exc))
                return
            except _Failed as exc:
                stderr_log.write(f"orchestrate: {exc.text}\n".encode())
                self._exit(job, exc.rc)
                return
            syncer = _CheckpointSync(self, job, host, skip, seen or {})
            proc = self._start(job, host, body, stderr_log)
            if proc is None:
                return
            try:
                remote_exit, files = self._pump(job, proc, syncer)
                rc = proc.wait()
            finally:
                syncer.close()  # a copy in flight finishes (or fails) before the exit is reported
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        self._ended(job, host, remote_exit, rc, files, skip, syncer.seen)

    def _prepare(
        self, job: Job, env: dict[str, str], host: HostSpec, log: IO[bytes]
    ) -> tuple[dict[str, Any], set[str], dict[str, str] | None]:
        """The code and the datasets on the host, the job's payload, and its run directory sent there:
        (payload, names never copied back, the host's listing after the send or None: nothing was sent).
        Raises HostUnreachable (the host is lost) or _Failed (the trial fails)."""
        try:
            self.sync.ensure(host, self.ctl)
            # the datasets it reads: copied to this host once (then its trial.json names the copy)
            data, paths = self._datasets(job, host, log)
        except hs.HostUnreachable:
            raise
        except RunError as exc:  # with its hint
            raise _Failed(exc.render(), 1) from exc
        try:
            body = self.payload(job, env, data, paths)
        except Exception as exc:  # a bug or unreadable run dir: fail the trial, not the controller
            raise _Failed(f"cannot prepare the remote job: {exc}", 1) from exc
        skip = set(body["files"]) | LOGS | {PID}
        try:  # what it resumes from (a checkpoint copied back from a host that was lost)
            seen = self._push(job, host, skip)
        except hs.HostUnreachable:
            raise
        except (RunError, OSError, tarfile.TarError) as exc:
            raise _Failed(f"cannot send the run directory to {host.name}: {exc}", 1) from exc
        body["fresh"] = seen is None  # nothing sent: the launcher empties the host's run directory
        return body, skip, seen

    def _start(
        self, job: Job, host: HostSpec, body: dict[str, Any], log: IO[bytes]
    ) -> subprocess.Popen[bytes] | None:
        """Start the ssh session of the remote launcher and send it the job; None: ssh could not run."""
        command = hs.in_workdir(host, [*hs.python_argv(host), "-u", "-m", "orchestrator.remote"])
        try:
            # setpriv --pdeathsig where it exists: no fork of the whole controller per trial start
            argv, preexec = _dies_with_parent(
                hs.ssh_argv(host, self.ctl, command), dict(os.environ), Path.cwd()
            )
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            log.write(f"orchestrate: cannot run ssh: {exc}\n".encode())
            self._exit(job, 127)
            return None
        job.handle = proc
        job.pid = proc.pid
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write((json.dumps(body) + "\n").encode())
            proc.stdin.flush()
        return proc

    def _ended(
        self,
        job: Job,
        host: HostSpec,
        remote_exit: int | None,
        rc: int,
        files: int,
        skip: set[str],
        seen: dict[str, str],
    ) -> None:
        """Report the end of the session: the trial's exit once its files are copied back, or the host lost."""
        if remote_exit is None:  # the launcher never reported the trial's end
            if job.stopping is None and rc == 255:
                self._lost(job, f"host {host.name}: connection lost (ssh exit 255)")
            else:  # stopped by the controller, or the launcher could not run (e.g. no python there: 127)
                self._exit(job, rc if rc != 0 else 255)
            return
        try:
            if files != 0:  # the trial wrote files (or did not say): copy back what the last copy lacks
                self._pull(job, host, skip, seen)
        except (hs.HostUnreachable, OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
            with open(job.run_dir.stderr_log, "ab") as fh:
                fh.write(
                    f"orchestrate: could not copy the run directory back from {host.name}: {exc}\n".encode()
                )
        self._exit(job, remote_exit)

    def _pump(
        self, job: Job, proc: subprocess.Popen[bytes], syncer: _CheckpointSync
    ) -> tuple[int | None, int]:
        """Stream the session's stdout; returns the trial's exit code and how many files it wrote (-1: unknown)."""
        assert proc.stdout is not None
        remote_exit: int | None = None
        files = -1
        with open(job.run_dir.stdout_log, "ab") as log:
            for raw in protocol.iter_lines(proc.stdout.readline):
                event = protocol.parse_line(raw.decode("utf-8", "replace"))
                if event is not None and event.get("event") == protocol.EVENT_INFO and "remote_exit" in event:
                    with contextlib.suppress(TypeError, ValueError):
                        remote_exit = int(event["remote_exit"])
                        files = int(event.get("remote_files", -1))
                    continue
                with contextlib.suppress(OSError):  # a full disk loses log lines, never the events
                    log.write(raw)
                if event is not None:
                    with contextlib.suppress(OSError):
                        log.flush()
                    if event.get("event") == protocol.EVENT_CHECKPOINT:
                        syncer.request(event)  # copied back in the background (coalesced)
                    self.events.put(("event", job, event))
        proc.stdout.close()
        return remote_exit, files

    # ----- datasets, and the run directory both ways -----
    def _datasets(self, job: Job, host: HostSpec, log: Any) -> tuple[dict[str, str], dict[str, str]]:
        """Copy the dataset folders and weights files the trial reads to the host (once per host):
        (trial.json fields → folder copies, weights file paths → file copies)."""
        if job.spec is None:  # a job built without a spec (tests): it reads nothing of this machine
            return {}, {}
        copies: dict[str, str] = {}
        paths: dict[str, str] = {}
        for unit in datasync.units(job.spec):
            if datasync.host_has(host, unit.src):
                continue  # the host's own copy, at the same path
            note = self.data.ensure(host, self.ctl, unit.src)
            if note:
                log.write(f"orchestrate: {note}\n".encode())
                log.flush()
            copy = f"{hs.WORKDIR_TOKEN}/{datasync.copy_name(unit.src)}"
            if unit.src.is_file():  # a weights file: its path is replaced wherever the trial names it
                paths[str(unit.src)] = f"{copy}/{unit.src.name}"
            else:
                copies[unit.field] = copy
        return copies, paths

    def _push(self, job: Job, host: HostSpec, skip: set[str]) -> dict[str, str] | None:
        """Send the controller's run directory (e.g. the checkpoint a re-queued job resumes from) to the host,
        replacing the host's; returns the host's listing after it (None: there was nothing to send)."""
        return xfer.push(host, self.ctl, job.run_dir.path, self.remote_run_dir(job), skip)

    def _pull(
        self, job: Job, host: HostSpec, skip: set[str], seen: dict[str, str], last: tuple[str, ...] = ()
    ) -> int:
        """Copy back the files of the host's run directory that changed since ``seen`` (updated), ``last``
        renamed into place last; the number of files copied."""
        return xfer.pull(host, self.ctl, self.remote_run_dir(job), job.run_dir.path, skip, seen, last)

    def _exit(self, job: Job, rc: int) -> None:
        job.ended = time.time()
        self.events.put(("exit", job, rc))

    def _lost(self, job: Job, reason: str) -> None:
        job.lost = reason
        with open(job.run_dir.stderr_log, "ab") as fh:
            fh.write(f"orchestrate: {reason}\n".encode())
        self._exit(job, 255)

    # ----- stop -----
    def stop(self, job: Job, grace: float = 10.0) -> None:
        proc = job.handle
        if proc is None or proc.poll() is not None:
            return
        self._send(proc, "TERM PRUNED" if job.stopping == "pruned" else "TERM")  # the trial finds stop.json

        def _kill() -> None:
            if proc.poll() is None:
                self._send(proc, "KILL")
            time.sleep(10)
            if proc.poll() is None:  # the host does not answer: drop the session
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

        timer = threading.Timer(grace, _kill)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], command: str) -> None:
        if proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()

    # ----- lost hosts -----
    def host_lost(self, name: str) -> None:
        """Rest the host: probe it with ``ssh HOST true`` under exponential back-off until it answers."""
        with self._lock:
            if name in self._resting or name not in self.hosts:
                return
            self._resting[name] = time.time()
        self.sync.forget(name)
        self.data.forget(name)
        threading.Thread(target=self._probe, args=(name,), daemon=True, name=f"probe-{name}").start()

    def _probe(self, name: str) -> None:
        host = self.hosts[name]
        delay = BACKOFF_START
        while not self.closed:
            time.sleep(delay)
            if hs.reachable(host, self.ctl, timeout=hs.CONNECT_TIMEOUT + 5):
                with self._lock:
                    self._resting.pop(name, None)
                    self._back.append(name)
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def hosts_back(self) -> list[str]:
        """Hosts that answer again since the last call (their slots may be used again)."""
        with self._lock:
            back, self._back = self._back, []
        return back

    # ----- a dead controller's trials -----
    def cleanup(self, orphans: Sequence[dict[str, Any]]) -> list[str]:
        """Stop trials a dead controller left on remote hosts: ``[{"host", "run_dir"}]``; returns messages."""
        by_host: dict[str, list[str]] = {}
        for o in orphans:
            if o.get("host") in self.hosts and o.get("run_dir"):
                by_host.setdefault(str(o["host"]), []).append(str(o["run_dir"]))
        notes = []
        for name, dirs in by_host.items():
            host = self.hosts[name]
            argv = [*hs.python_argv(host), "-m", "orchestrator.remote", "--kill", *dirs]
            try:
                proc = hs.run_ssh(host, self.ctl, hs.in_workdir(host, argv), timeout=60)
                notes += [line for line in proc.stdout.splitlines() if line.strip()]
            except hs.HostUnreachable as exc:
                notes.append(f"could not clean up {len(dirs)} trial(s) on {name}: {exc}")
        return notes

    def close(self) -> None:
        self.closed = True
        for host in self.hosts.values():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                hs.close_master(host, self.ctl)
        shutil.rmtree(self.ctl, ignore_errors=True)
