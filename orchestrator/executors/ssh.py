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
names the host's copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import datasync
from orchestrator import hosts as hs
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor, _dies_with_parent
from orchestrator.spec.model import HostSpec
from orchestrator.trial import protocol
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import CONTROLLER_FILES

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
_PID = "remote.pid"
#: the controller's inputs in a run directory: sent in the job (paths mapped); the rest of it is the trial's own
#: state (checkpoints, W&B run), sent as it is when there is any (a re-queued trial resumes from it)
_INPUTS = CONTROLLER_FILES - _LOGS - {_PID}
_PART = ".orch-part"  # a file being received into the controller's run directory
#: the host's run directory, one ``TYPE SIZE MTIME PATH`` entry per file or link, NUL-separated
_LIST = r"find . \( -type f -o -type l \) ! -name '*.tmp' -printf '%y %s %T@ %P\0'"
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0


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
        """What the remote launcher gets on stdin: argv, environment and files, with local paths mapped.

        ``data``: trial.json fields that name a dataset folder → the host's copy; ``paths``: weights files on
        this machine → the host's copy, replaced wherever the trial names them (orchestrator/datasync.py)."""
        host = self.hosts[job.slot.host]
        token = hs.WORKDIR_TOKEN
        remote_rd = f"{token}/{self.remote_run_dir(job)}"
        local_rd = str(job.run_dir.path.resolve())
        cache = env.get("ORCHESTRATE_CACHE_DIR")
        subs = sorted((paths or {}).items())  # weights files first: the most specific paths
        subs += [(local_rd, remote_rd), (str(job.run_dir.path), remote_rd)]
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
            if f.name in _INPUTS and f.is_file():
                with contextlib.suppress(UnicodeDecodeError):
                    text = f.read_text(encoding="utf-8")
                    if f.name == job.run_dir.trial_json.name and data:
                        text = json.dumps(datasync.remap(json.loads(text), data), indent=2)
                    files[f.name] = mapped(text)
        return {
            "argv": argv,
            "env": renv,
            "run_dir": remote_rd,
            "files": files,
            "grace": 10,
            "warm": self.warm,
        }

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
            except RunError as exc:  # with its hint, as for the datasets below
                stderr_log.write(f"orchestrate: {exc.render()}\n".encode())
                self._exit(job, 1)
                return
            try:  # the datasets it reads: copied to this host once (then its trial.json names the copy)
                data, paths = self._datasets(job, host, stderr_log)
            except hs.HostUnreachable as exc:
                self._lost(job, str(exc))
                return
            except RunError as exc:
                stderr_log.write(f"orchestrate: {exc.render()}\n".encode())
                self._exit(job, 1)
                return
            try:
                body = self.payload(job, env, data, paths)
            except Exception as exc:  # a bug or unreadable run dir: fail the trial, not the controller
                stderr_log.write(f"orchestrate: cannot prepare the remote job: {exc}\n".encode())
                self._exit(job, 1)
                return
            skip = set(body["files"]) | _LOGS | {_PID}
            try:  # what it resumes from (a checkpoint copied back from a host that was lost)
                seen = self._push(job, host, skip)
            except hs.HostUnreachable as exc:
                self._lost(job, str(exc))
                return
            except (RunError, OSError, tarfile.TarError) as exc:
                stderr_log.write(
                    f"orchestrate: cannot send the run directory to {host.name}: {exc}\n".encode()
                )
                self._exit(job, 1)
                return
            body["fresh"] = seen is None  # nothing sent: the launcher empties the host's run directory
            syncer = _CheckpointSync(self, job, host, skip, seen or {})
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
                    stderr=stderr_log,
                    start_new_session=True,
                    preexec_fn=preexec,
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
            try:
                remote_exit, files = self._pump(job, proc, syncer)
                rc = proc.wait()
            finally:
                syncer.close()  # a copy in flight finishes (or fails) before the exit is reported
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
            if files != 0:  # the trial wrote files (or did not say): copy back what the last copy lacks
                self._pull(job, host, skip, syncer.seen)
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
        try:
            trial = job.run_dir.read_trial()
        except (OSError, ValueError):
            return {}, {}
        copies: dict[str, str] = {}
        paths: dict[str, str] = {}
        for unit in datasync.units(trial):
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

    def _listing(self, host: HostSpec, rel: str) -> dict[str, str] | None:
        """``{path: "TYPE SIZE MTIME"}`` of the host's run directory (None: it does not exist; ``{".": ""}``:
        the host's ``find`` cannot list it — not GNU find — so everything is copied)."""
        command = f"cd {hs.remote_path(host.workdir)} && {{ cd {shlex.quote(rel)} 2>/dev/null || exit 3; }} && {_LIST}"
        try:
            proc = subprocess.run(
                hs.ssh_argv(host, self.ctl, command),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise hs.HostUnreachable(f"host {host.name}: no answer within 120s") from exc
        if proc.returncode == 255:
            raise hs.HostUnreachable(f"host {host.name}: {proc.stderr.decode(errors='replace').strip()}")
        if proc.returncode == 3:
            return None
        found = _parse_listing(proc.stdout.decode("utf-8", "surrogateescape"))
        if not found and proc.returncode != 0:
            return {".": ""}
        return found  # find's own complaints (a file gone while it looked) leave the rest of the list

    def _push(self, job: Job, host: HostSpec, skip: set[str]) -> dict[str, str] | None:
        """Send the controller's run directory (e.g. the checkpoint a re-queued job resumes from) to the host,
        replacing the host's; returns the host's listing after it (None: there was nothing to send)."""
        local = job.run_dir.path
        names = _local_files(local, skip)
        if not names:
            return None
        rel = shlex.quote(self.remote_run_dir(job))
        command = (
            f"cd {hs.remote_path(host.workdir)} && rm -rf {rel} && mkdir -p {rel} && cd {rel} && "
            f"tar -xf - && {{ {_LIST} || true; }}"
        )
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                hs.ssh_argv(host, self.ctl, command), stdin=subprocess.PIPE, stdout=out, stderr=err
            )
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                    for name in names:
                        tar.add(str(local / name), arcname=name, recursive=False)
                proc.stdin.close()
            rc = proc.wait()
            out.seek(0)
            err.seek(0)
            listing, message = (
                out.read().decode("utf-8", "surrogateescape"),
                err.read().decode(errors="replace"),
            )
        if rc == 255:
            raise hs.HostUnreachable(f"host {host.name}: {message.strip() or 'ssh exit 255'}")
        if rc != 0:
            raise RunError(message.strip() or f"exit {rc}")
        return _parse_listing(listing)

    def _pull(
        self, job: Job, host: HostSpec, skip: set[str], seen: dict[str, str], last: tuple[str, ...] = ()
    ) -> int:
        """Copy back the files of the host's run directory that changed since ``seen`` (updated); all are
        received under temporary names and renamed into place once the whole copy arrived (``last`` last).
        Returns the number of files copied."""
        rel = self.remote_run_dir(job)
        listing = self._listing(host, rel)
        if listing is None:
            return 0
        want = sorted(
            n
            for n, sig in listing.items()
            if n == "." or (n.split("/")[0] not in skip and seen.get(n) != sig and not _partial(n))
        )
        if not want:
            return 0
        command = (
            f"cd {hs.remote_path(host.workdir)} && cd {shlex.quote(rel)} && "
            f"tar -cf - -- {' '.join(shlex.quote(n) for n in want)}"
        )
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                hs.ssh_argv(host, self.ctl, command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            assert proc.stdout is not None
            try:
                staged = _receive(proc.stdout, job.run_dir.path, skip)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                raise
            proc.stdout.close()
            rc = proc.wait()
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        if rc == 255:  # the host went away: the copy may be short, keep the previous files
            _discard(staged)
            raise hs.HostUnreachable(f"host {host.name}: {message or 'ssh exit 255'}")
        # tar's own complaints (a file that vanished or grew while read) still leave whole members
        staged.sort(key=lambda s: s[0] in last)
        for name, tmp, target in staged:
            try:
                os.replace(tmp, target)
            except OSError:
                _discard([(name, tmp, target)])
                continue
            if name in listing:
                seen[name] = listing[name]
        return len(staged)

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


class _CheckpointSync:
    """Copies a running remote job's new files back after each checkpoint event, one copy at a time.

    ``request`` only records the newest epoch and wakes the copier thread: a checkpoint that arrives while a
    copy runs is taken by the next copy (one copy of the newest, not one per epoch).
    """

    def __init__(
        self, ex: SSHExecutor, job: Job, host: HostSpec, skip: set[str], seen: dict[str, str]
    ) -> None:
        self.ex, self.job, self.host, self.skip = ex, job, host, skip
        self.seen = seen  # path → listing entry of the files the controller holds
        self._cond = threading.Condition()
        self._wanted: tuple[int, float] | None = None  # (epoch, when asked)
        self._names: set[str] = set()  # the checkpoint files: renamed into place last
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failed = False

    def request(self, event: dict[str, Any]) -> None:
        try:
            epoch = int(event.get("epoch", 0))
        except (TypeError, ValueError):
            epoch = 0
        path = str(event.get("path") or "")
        with self._cond:
            if self._closed:
                return
            if path and not os.path.isabs(path):
                self._names.add(path)
            if self._wanted is None or epoch >= self._wanted[0]:
                self._wanted = (epoch, time.time())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name=f"ckpt-{self.job.key}")
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._closed:
                    self._cond.wait()
                if self._closed or self._wanted is None:
                    return
                (epoch, asked), self._wanted = self._wanted, None
                last = tuple(sorted(self._names))
            try:
                self.ex._pull(self.job, self.host, self.skip, self.seen, last=last)
            except (
                hs.HostUnreachable,
                OSError,
                tarfile.TarError,
                subprocess.SubprocessError,
                ValueError,
            ) as exc:
                if not self._failed:  # said once per job; the next checkpoint tries again
                    self._failed = True
                    with contextlib.suppress(OSError), open(self.job.run_dir.stderr_log, "ab") as fh:
                        fh.write(f"orchestrate: could not copy checkpoint {epoch} back: {exc}\n".encode())
                continue
            self.job.checkpoint_epoch = epoch
            self.ex.sync_times.append(time.time() - asked)

    def close(self) -> None:
        """No more copies; wait for the one in flight (a pending one is dropped: the end of the job decides)."""
        with self._cond:
            self._closed = True
            self._wanted = None
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()


def _partial(name: str) -> bool:
    """A file still being written (``*.tmp``) or received (``.<name>.orch-part``)."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith((".tmp", _PART))


def _parse_listing(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in text.split("\0"):
        parts = entry.split(" ", 3)
        if len(parts) == 4 and parts[3]:
            out[parts[3]] = " ".join(parts[:3])
    return out


def _local_files(root: Path, skip: set[str]) -> list[str]:
    """Files and links under ``root`` (relative paths), minus the top-level names in ``skip``."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        top = rel == Path(".")
        for d in list(dirnames):
            if top and d in skip:
                dirnames.remove(d)
            elif (here / d).is_symlink():  # sent as the link it is
                dirnames.remove(d)
                names.append(str(rel / d))
        names += [str(rel / f) for f in filenames if not (top and f in skip) and not _partial(f)]
    return sorted(names)


def _receive(stream: Any, dest: Path, skip: set[str]) -> list[tuple[str, Path, Path]]:
    """Unpack a tar stream into ``dest`` under temporary names: ``[(name, tmp, final)]`` (nothing renamed yet).

    Members are checked with tarfile's ``data`` filter (no absolute paths, no links out of ``dest``)."""
    staged: list[tuple[str, Path, Path]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = (member.name[2:] if member.name.startswith("./") else member.name).rstrip("/")
                if not name or name == "." or name.split("/")[0] in skip or _partial(name):
                    continue
                member.name = name
                try:
                    member = tarfile.data_filter(member, str(dest))
                except tarfile.FilterError:
                    continue
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not (member.isfile() or member.issym()):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}{_PART}")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                staged.append((name, tmp, target))
                if member.issym():
                    os.symlink(member.linkname, tmp)
                    continue
                src = tar.extractfile(member)
                assert src is not None
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
                os.utime(tmp, (member.mtime, member.mtime))
    except BaseException:
        _discard(staged)
        raise
    return staged


def _discard(staged: list[tuple[str, Path, Path]]) -> None:
    for _, tmp, _ in staged:
        with contextlib.suppress(OSError):
            tmp.unlink()


class RoutingExecutor(Executor):
    """Local slots to a LocalExecutor, remote ones (``slot.host != "local"``) to an SSHExecutor."""

    def __init__(
        self, events: queue.Queue[tuple[str, Job, Any]], hosts: Sequence[HostSpec], warm: bool = False
    ) -> None:
        super().__init__(events)
        self.local: Executor = LocalExecutor(events)
        if warm:
            from orchestrator.executors.warm import WarmExecutor

            self.local = WarmExecutor(events)
        self.remote = SSHExecutor(events, hosts, warm=warm)

    def warm_up(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.local.warm_up(argv, env, cwd)

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
        self.local.close()
