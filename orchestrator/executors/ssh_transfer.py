"""What travels between the controller and a remote host for one trial (orchestrator/executors/ssh.py runs it).

- :func:`payload`: the job the remote launcher gets on stdin — argv, environment and the controller's input
  files of the run directory (``trial.json`` from the job's :class:`TrialSpec`, its paths mapped to the host's
  with :meth:`TrialSpec.map_paths`; dataset folders and weights files to the host's copies, datasync.py);
- :func:`push` / :func:`pull`: the run directory both ways, as tar streams over the host's shared connection;
  a copy back is received under temporary names and renamed into place only once it all arrived;
- :class:`_CheckpointSync`: a running job's copies back after each ``checkpoint`` event, one at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import datasync
from orchestrator import hosts as hs
from orchestrator.executors._base import Job
from orchestrator.spec.model import HostSpec
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import CONTROLLER_FILES, PROJECT_ROOT

if TYPE_CHECKING:
    from orchestrator.executors.ssh import SSHExecutor

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
LOGS = {"stdout.log", "stderr.log", "metrics.jsonl", "result.json"}
PID = "remote.pid"
#: the controller's inputs in a run directory: sent in the job (paths mapped); the rest of it is the trial's own
#: state (checkpoints, W&B run), sent as it is when there is any (a re-queued trial resumes from it)
_INPUTS = CONTROLLER_FILES - LOGS - {PID}
_PART = ".orch-part"  # a file being received into the controller's run directory
#: the host's run directory, one ``TYPE SIZE MTIME PATH`` entry per file or link, NUL-separated
_LIST = r"find . \( -type f -o -type l \) ! -name '*.tmp' -printf '%y %s %T@ %P\0'"


def payload(
    job: Job,
    env: dict[str, str],
    host: HostSpec,
    remote_rd: str,
    warm: bool,
    data: dict[str, str] | None = None,
    paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What the remote launcher gets on stdin: argv, environment and files, with local paths mapped.

    ``remote_rd``: the host's run directory (under the workdir token); ``data``: trial.json fields that name a
    dataset folder → the host's copy; ``paths``: weights files on this machine → the host's copy, replaced
    wherever the trial names them (orchestrator/datasync.py)."""
    mapped = _mapper(job, env, remote_rd, paths or {})
    argv: list[str] = []
    for a in job.argv:
        if a == sys.executable:
            argv += hs.python_argv(host)
        else:
            argv.append(mapped(a))
    return {
        "argv": argv,
        "env": _remote_env(env, mapped),
        "run_dir": remote_rd,
        "files": _input_files(job, mapped, data or {}),
        "grace": 10,
        "warm": warm,
    }


def _mapper(job: Job, env: dict[str, str], remote_rd: str, paths: dict[str, str]) -> Callable[[str], str]:
    """Replaces the controller's paths in a string by the host's: weights files, run dir, cache, project root."""
    token = hs.WORKDIR_TOKEN
    local_rd = str(job.run_dir.path.resolve())
    cache = env.get("ORCHESTRATE_CACHE_DIR")
    subs = sorted(paths.items())  # weights files first: the most specific paths
    subs += [(local_rd, remote_rd), (str(job.run_dir.path), remote_rd)]
    if cache:
        subs.append((cache, f"{token}/{hs.STATE_DIR}/cache"))
    subs.append((str(PROJECT_ROOT), token))

    def mapped(value: str) -> str:
        for old, new in subs:
            value = value.replace(old, new)
        return value

    return mapped


def _remote_env(env: dict[str, str], mapped: Callable[[str], str]) -> dict[str, str]:
    renv: dict[str, str] = {}
    for k, v in env.items():
        if k in _DROP:
            continue
        if os.environ.get(k) == v and not _PASS.match(k):
            continue  # the controller's own environment stays here
        renv[k] = mapped(v)
    renv["PYTHONPATH"] = hs.WORKDIR_TOKEN
    return renv


def _input_files(job: Job, mapped: Callable[[str], str], data: dict[str, str]) -> dict[str, str]:
    """The controller's input files of the run directory, paths mapped: ``trial.json`` from the job's spec
    (dataset fields to the host's copies first), the others (``params.json``) as text."""
    trial_json = job.run_dir.trial_json.name
    files: dict[str, str] = {}
    for f in job.run_dir.path.iterdir():
        if f.name in _INPUTS and f.is_file() and not (job.spec is not None and f.name == trial_json):
            with contextlib.suppress(UnicodeDecodeError):
                files[f.name] = mapped(f.read_text(encoding="utf-8"))
    if job.spec is not None:
        spec = datasync.remap(job.spec, data).map_paths(lambda _field, value: mapped(value))
        files[trial_json] = spec.to_json()
    return files


def remote_listing(host: HostSpec, ctl: Path | None, rel: str) -> dict[str, str] | None:
    """``{path: "TYPE SIZE MTIME"}`` of the host's run directory (None: it does not exist; ``{".": ""}``:
    the host's ``find`` cannot list it — not GNU find — so everything is copied)."""
    command = (
        f"cd {hs.remote_path(host.workdir)} && {{ cd {shlex.quote(rel)} 2>/dev/null || exit 3; }} && {_LIST}"
    )
    try:
        proc = subprocess.run(
            hs.ssh_argv(host, ctl, command),
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


def push(host: HostSpec, ctl: Path | None, local: Path, rel: str, skip: set[str]) -> dict[str, str] | None:
    """Send the controller's run directory (e.g. the checkpoint a re-queued job resumes from) to the host,
    replacing the host's; returns the host's listing after it (None: there was nothing to send)."""
    names = _local_files(local, skip)
    if not names:
        return None
    quoted = shlex.quote(rel)
    command = (
        f"cd {hs.remote_path(host.workdir)} && rm -rf {quoted} && mkdir -p {quoted} && cd {quoted} && "
        f"tar -xf - && {{ {_LIST} || true; }}"
    )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            hs.ssh_argv(host, ctl, command), stdin=subprocess.PIPE, stdout=out, stderr=err
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


def pull(
    host: HostSpec,
    ctl: Path | None,
    rel: str,
    dest: Path,
    skip: set[str],
    seen: dict[str, str],
    last: tuple[str, ...] = (),
) -> int:
    """Copy back the files of the host's run directory that changed since ``seen`` (updated); all are
    received under temporary names and renamed into place once the whole copy arrived (``last`` last).
    Returns the number of files copied."""
    listing = remote_listing(host, ctl, rel)
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
            hs.ssh_argv(host, ctl, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        try:
            staged = _receive(proc.stdout, dest, skip)
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
