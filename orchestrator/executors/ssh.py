"""Run trials on remote hosts through the system ``ssh`` client; and a router that mixes local and remote slots.

One trial is one ``ssh HOST -- cd WORKDIR && exec PYTHON -u -m orchestrator.remote`` subprocess over the host's
multiplexed connection (orchestrator/hosts.py has the options). The job (argv, environment, small run-directory
files) goes down the session's stdin as one JSON line — secrets never appear on a command line or in a file —
and the trial's stdout comes back on the session's stdout: the same protocol lines as a local child, so the
controller stays the only writer of the study. Its stderr streams into the local ``stderr.log``.

Exit semantics: the launcher reports the trial's own exit code (``remote_exit``) before it ends. If ssh ends
without that report — exit 255, a dropped connection, a dead box — the host is lost: the job is marked
``job.lost`` and its exit is reported as 255, which the controller treats as "re-queue elsewhere, rest the host",
not as a trial failure. A lost host is probed with ``ssh HOST true`` under exponential back-off
(:meth:`SSHExecutor.host_lost`); :meth:`SSHExecutor.hosts_back` hands back the hosts that answer again.

At the end of each trial its remote run directory (checkpoints, the offline W&B run, anything it wrote) is copied
back into the controller's run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import hosts as hs
from orchestrator import protocol
from orchestrator.errors import RunError
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor, _die_with_parent
from orchestrator.spec.model import HostSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: environment passed to a remote trial even when the controller did not set it itself (secrets, W&B, HF)
_PASS = re.compile(r"^(WANDB_.*|HF_.*|.*_API_KEY|.*_TOKEN|.*_SECRET)$")
#: never copied from the controller's machine
_DROP = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "TMPDIR",
    "VIRTUAL_ENV",
    "SSH_AUTH_SOCK",
}
_LOGS = {"stdout.log", "stderr.log", "metrics.jsonl", "result.json"}
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0


class SSHExecutor(Executor):
    def __init__(self, events: queue.Queue[tuple[str, Job, Any]], hosts: Sequence[HostSpec]) -> None:
        super().__init__(events)
        self.hosts = {h.name: h for h in hosts}
        self.ctl = hs.control_dir()
        self.sync = hs.CodeSync(PROJECT_ROOT)
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

    def payload(self, job: Job, env: dict[str, str]) -> dict[str, Any]:
        """What the remote launcher gets on stdin: argv, environment and files, with local paths mapped."""
        host = self.hosts[job.slot.host]
        token = hs.WORKDIR_TOKEN
        remote_rd = f"{token}/{self.remote_run_dir(job)}"
        local_rd = str(job.run_dir.path.resolve())
        cache = env.get("ORCHESTRATE_CACHE_DIR")
        subs = [(local_rd, remote_rd), (str(job.run_dir.path), remote_rd)]
        if cache:
            subs.append((cache, f"{token}/{hs.STATE_DIR}/cache"))
        subs.append((str(PROJECT_ROOT), token))

        def mapped(value: str) -> str:
            for old, new in subs:
                value = value.replace(old, new)
            return value

        renv: dict[str, str] = {}
        for k, v in env.items():
            if k in _DROP:
                continue
            if os.environ.get(k) == v and not _PASS.match(k):
                continue  # the controller's own environment stays here
            renv[k] = mapped(v)
        renv["PYTHONPATH"] = token
        argv: list[str] = []
        for a in job.argv:
            if a == sys.executable:
                argv += hs.python_argv(host)
            else:
                argv.append(mapped(a))
        files: dict[str, str] = {}
        for f in job.run_dir.path.iterdir():
            if f.is_file() and f.name not in _LOGS and f.stat().st_size < 1_000_000:
                with contextlib.suppress(UnicodeDecodeError):
                    files[f.name] = mapped(f.read_text(encoding="utf-8"))
        return {"argv": argv, "env": renv, "run_dir": remote_rd, "files": files, "grace": 10}

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
        stderr_log = open(job.run_dir.stderr_log, "ab")  # noqa: SIM115 - closed below
        try:
            try:
                self.sync.ensure(host, self.ctl)
            except hs.HostUnreachable as exc:
                self._lost(job, str(exc))
                return
            except RunError as exc:
                stderr_log.write(f"orchestrate: {exc}\n".encode())
                self._exit(job, 1)
                return
            try:
                body = self.payload(job, env)
            except Exception as exc:  # a bug or unreadable run dir: fail the trial, not the controller
                stderr_log.write(f"orchestrate: cannot prepare the remote job: {exc}\n".encode())
                self._exit(job, 1)
                return
            command = hs.in_workdir(host, [*hs.python_argv(host), "-u", "-m", "orchestrator.remote"])
            try:
                proc = subprocess.Popen(
                    hs.ssh_argv(host, self.ctl, command),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr_log,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                stderr_log.write(f"orchestrate: cannot run ssh: {exc}\n".encode())
                self._exit(job, 127)
                return
            job.handle = proc
            job.pid = proc.pid
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.write((json.dumps(body) + "\n").encode())
                proc.stdin.flush()
            remote_exit, files = self._pump(job, proc)
            rc = proc.wait()
            with contextlib.suppress(OSError):
                proc.stdin.close()
        finally:
            stderr_log.close()
        if remote_exit is None:  # the launcher never reported the trial's end
            if job.stopping is None and rc == 255:
                self._lost(job, f"host {host.name}: connection lost (ssh exit 255)")
            else:  # stopped by the controller, or the launcher could not run (e.g. no python there: 127)
                self._exit(job, rc if rc != 0 else 255)
            return
        try:
            if files != 0:  # the trial wrote files (or did not say): copy them back
                self._fetch(job, host, body)
        except (hs.HostUnreachable, OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
            with open(job.run_dir.stderr_log, "ab") as fh:
                fh.write(
                    f"orchestrate: could not copy the run directory back from {host.name}: {exc}\n".encode()
                )
        self._exit(job, remote_exit)

    def _pump(self, job: Job, proc: subprocess.Popen[bytes]) -> tuple[int | None, int]:
        """Stream the session's stdout; returns the trial's exit code and how many files it wrote (-1: unknown)."""
        assert proc.stdout is not None
        remote_exit: int | None = None
        files = -1
        with open(job.run_dir.stdout_log, "ab") as log:
            for raw in iter(proc.stdout.readline, b""):
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
                    self.events.put(("event", job, event))
        proc.stdout.close()
        return remote_exit, files

    def _fetch(self, job: Job, host: HostSpec, body: dict[str, Any]) -> None:
        """Copy the remote run directory back (everything but the files we sent and the pid file)."""
        rel = self.remote_run_dir(job)
        command = f"cd {hs.remote_path(host.workdir)} && cd {hs.quote_argv([rel])} && tar -cf - ."
        proc = subprocess.Popen(
            hs.ssh_argv(host, self.ctl, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        skip = set(body.get("files") or {}) | {"remote.pid"} | _LOGS
        dest = job.run_dir.path
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not name or name == "." or name.split("/")[0] in skip:
                    continue
                member.name = name
                tar.extract(member, dest, filter="data")
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 255:
            raise hs.HostUnreachable(err.decode(errors="replace").strip() or "ssh exit 255")

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
        self._send(proc, "TERM")

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


class RoutingExecutor(Executor):
    """Local slots to a LocalExecutor, remote ones (``slot.host != "local"``) to an SSHExecutor."""

    def __init__(self, events: queue.Queue[tuple[str, Job, Any]], hosts: Sequence[HostSpec]) -> None:
        super().__init__(events)
        self.local = LocalExecutor(events)
        self.remote = SSHExecutor(events, hosts)

    def _for(self, job: Job) -> Executor:
        return self.local if job.slot.host == "local" else self.remote

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        self._for(job).submit(job, env, cwd)

    def stop(self, job: Job, grace: float = 10.0) -> None:
        self._for(job).stop(job, grace)

    def host_lost(self, name: str) -> None:
        self.remote.host_lost(name)

    def hosts_back(self) -> list[str]:
        return self.remote.hosts_back()

    def cleanup(self, orphans: Sequence[dict[str, Any]]) -> list[str]:
        return self.remote.cleanup(orphans)

    def close(self) -> None:
        self.remote.close()
