"""Remote hosts: the inventory (``defaults.hosts:``), ssh command lines, code sync, and ``hosts check``.

Everything goes through the system ``ssh`` client as a subprocess, with:

- ``BatchMode=yes`` (never a password prompt), host keys verified (``StrictHostKeyChecking=yes`` against the
  host's ``known_hosts`` file when given, else the user's own) — never disabled;
- connection multiplexing (``ControlMaster=auto``, ``ControlPath`` in a short private directory,
  ``ControlPersist``), so a trial start is a new channel on an open connection, not a new handshake;
- keep-alives (``ServerAliveInterval``/``ServerAliveCountMax``), so a dead box is noticed within seconds;
- remote commands built from lists with :func:`shlex.quote` (no shell injection through values or paths).

The host's copy of the project is made to match the controller's: the tracked (and untracked, not ignored) files
of the checkout are streamed as a tar archive once per host per launch, skipped when the host already holds the
same code version (a hash of those files, kept in ``<workdir>/.orchestrate/code_version``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.slots import Slot
from orchestrator.spec.model import HostSpec
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import PROJECT_ROOT

STATE_DIR = ".orchestrate"  # under the host's workdir: code_version, runs/, cache/
#: placeholder for the remote workdir in paths sent to the remote launcher (it knows its absolute cwd)
WORKDIR_TOKEN = "@@ORCHESTRATE_WORKDIR@@"
#: packages whose versions ``hosts check`` compares with the controller's
PACKAGES = ("torch", "torchvision", "timm", "wandb", "numpy", "pillow")
ALIVE_INTERVAL = 2  # seconds between keep-alives; a box is declared dead after ALIVE_COUNT missed ones
ALIVE_COUNT = 3
CONNECT_TIMEOUT = 8


class HostUnreachable(RunError):
    """ssh could not reach the host (exit 255), or the host did not answer in time."""


def control_dir() -> Path:
    """A short private directory for the multiplexing sockets (a socket path must fit in 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="orch-ssh-", dir="/tmp" if os.path.isdir("/tmp") else None))


def ssh_options(host: HostSpec, ctl: Path | None, *, persist: int = 120) -> list[str]:
    opts = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        f"ServerAliveInterval={ALIVE_INTERVAL}",
        "-o",
        f"ServerAliveCountMax={ALIVE_COUNT}",
        "-o",
        "LogLevel=ERROR",
    ]
    if host.known_hosts:
        opts += ["-o", f"UserKnownHostsFile={os.path.expanduser(host.known_hosts)}"]
    if host.identity_file:
        opts += ["-i", os.path.expanduser(host.identity_file), "-o", "IdentitiesOnly=yes"]
    if host.port:
        opts += ["-p", str(host.port)]
    if ctl is not None:
        opts += [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={ctl}/%C",
            "-o",
            f"ControlPersist={persist}",
        ]
    return opts


def ssh_argv(host: HostSpec, ctl: Path | None, command: str) -> list[str]:
    """``ssh [options] DEST -- COMMAND`` where COMMAND is one already-quoted shell line."""
    return ["ssh", *ssh_options(host, ctl), host.ssh, "--", command]


def remote_path(path: str) -> str:
    """A path for the remote shell: quoted, with a leading ``~/`` left to the shell to expand."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def python_argv(host: HostSpec) -> list[str]:
    """How to run Python on the host: ``python3``, ``/opt/venv/bin/python``, a venv dir, ``conda run … python``."""
    words = shlex.split(host.python)
    if len(words) == 1 and not Path(words[0]).name.startswith("python"):
        return [words[0].rstrip("/") + "/bin/python"]  # a venv directory
    return words


def quote_argv(argv: Sequence[str]) -> str:
    """A remote shell line from a list; ``~/…`` paths keep their tilde expansion."""
    return " ".join(remote_path(a) if a.startswith("~/") else shlex.quote(a) for a in argv)


def in_workdir(host: HostSpec, argv: Sequence[str]) -> str:
    """``cd WORKDIR && exec ARGV`` as one quoted remote shell line."""
    return f"cd {remote_path(host.workdir)} && exec {quote_argv(argv)}"


def run_ssh(
    host: HostSpec, ctl: Path | None, command: str, *, timeout: float = 30, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one remote command; raise HostUnreachable when ssh itself fails (exit 255) or times out."""
    try:
        proc = subprocess.run(
            ssh_argv(host, ctl, command),
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL if stdin is None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise HostUnreachable(f"host {host.name}: no answer within {timeout:.0f}s") from exc
    except OSError as exc:
        raise HostUnreachable(f"host {host.name}: cannot run ssh: {exc}") from exc
    if proc.returncode == 255:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "ssh exit 255"
        raise HostUnreachable(f"host {host.name}: {msg}")
    return proc


def reachable(host: HostSpec, ctl: Path | None, timeout: float = 15) -> bool:
    """``ssh host true`` succeeds."""
    try:
        return run_ssh(host, ctl, "true", timeout=timeout).returncode == 0
    except HostUnreachable:
        return False


def close_master(host: HostSpec, ctl: Path) -> None:
    """Stop the multiplexing master of a host (``ssh -O exit``), if one runs."""
    subprocess.run(
        ["ssh", *ssh_options(host, ctl), "-O", "exit", host.ssh],
        capture_output=True,
        timeout=10,
        check=False,
    )


# ----------------------------------------------------------------------------------------- slots
def host_slots(host: HostSpec, gpus: Sequence[str] | None = None) -> list[Slot]:
    """The slots of a host: ``cpu:N`` → N CPU slots; GPU indices (given, or found by ``gpus: auto``)."""
    spec = host.gpus
    if isinstance(spec, str) and spec.startswith("cpu:"):
        return [Slot(id=f"{host.name}:cpu{i}", kind="cpu", host=host.name) for i in range(int(spec[4:]))]
    ids = list(gpus if gpus is not None else ([] if isinstance(spec, str) else spec))
    out = []
    for gpu in ids:
        for share in range(host.per_gpu):
            sid = f"{host.name}:gpu{gpu}" + (f".{share}" if host.per_gpu > 1 else "")
            out.append(Slot(id=sid, kind="gpu", gpu=gpu, host=host.name))
    return out


def inventory_slots(hosts: Sequence[HostSpec], ctl: Path | None = None) -> tuple[list[Slot], list[str]]:
    """Slots of every host, and one message per host that gives none (``gpus: auto`` asks ``nvidia-smi``)."""
    slots: list[Slot] = []
    notes: list[str] = []
    for host in hosts:
        found: list[str] | None = None
        if host.gpus == "auto":
            try:
                proc = run_ssh(
                    host,
                    ctl,
                    "nvidia-smi --query-gpu=index --format=csv,noheader",
                    timeout=CONNECT_TIMEOUT + 20,
                )
            except HostUnreachable as exc:
                notes.append(f"{exc} — its slots are left out")
                continue
            found = [x.strip() for x in proc.stdout.splitlines() if x.strip().isdigit()]
            if not found:
                notes.append(f"host {host.name}: gpus: auto found no GPU (nvidia-smi) — use gpus: cpu:N")
        slots += host_slots(host, found)
    return slots, notes


# ----------------------------------------------------------------------------------------- code sync
def code_files(root: Path = PROJECT_ROOT) -> list[str]:
    """The project's files: tracked plus untracked-but-not-ignored (``git ls-files``), that exist.

    Outside a git checkout (an unpacked archive, a copy) the tree is walked instead and the project's
    ``.gitignore`` is honoured, plus hidden entries (``.venv``, caches) which are never code.
    """
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=root,
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise RunError(
                f"cannot list the project's files in {root} (git ls-files): {exc}",
                hint="install git, or run the controller from a copy without .git (its tree is walked)",
            ) from exc
        names = sorted({n for n in out.decode("utf-8", "surrogateescape").split("\0") if n})
        return [n for n in names if (root / n).is_file()]
    return _walk_files(root)


def _ignore_rules(root: Path) -> list[tuple[str, bool, bool]]:
    """(pattern, anchored, directories only) for each line of ``root/.gitignore`` (negations are not used)."""
    try:
        lines = (root / ".gitignore").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        rules.append((line.lstrip("/"), anchored, dir_only))
    return rules


def _ignored(rel: str, is_dir: bool, rules: Sequence[tuple[str, bool, bool]]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):
        return True
    for pattern, anchored, dir_only in rules:
        if dir_only and not is_dir:
            continue
        if fnmatch.fnmatchcase(rel if anchored else name, pattern):
            return True
    return False


def _walk_files(root: Path) -> list[str]:
    rules = _ignore_rules(root)
    out: list[str] = []
    for top, dirs, files in os.walk(root):
        rel_top = os.path.relpath(top, root)
        prefix = "" if rel_top == "." else rel_top.replace(os.sep, "/") + "/"
        dirs[:] = sorted(d for d in dirs if not _ignored(prefix + d, True, rules))
        for f in files:
            rel = prefix + f
            if not _ignored(rel, False, rules) and os.path.isfile(os.path.join(top, f)):
                out.append(rel)
    return sorted(out)


def code_version(root: Path = PROJECT_ROOT, files: Sequence[str] | None = None) -> str:
    """A hash of the project's files (names and contents)."""
    h = hashlib.sha256()
    for name in files if files is not None else code_files(root):
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with open(root / name, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:16]


@dataclass
class CodeSync:
    """Makes each host's workdir hold this checkout, once per host per launch (thread-safe)."""

    root: Path = PROJECT_ROOT
    _files: list[str] | None = None
    _version: str | None = None
    _done: set[str] = field(default_factory=set)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version(self) -> str:
        with self._lock:
            if self._version is None:
                self._files = code_files(self.root)
                self._version = code_version(self.root, self._files)
            return self._version

    def forget(self, host: str) -> None:
        """Check again before the next trial (after the host was lost: it may have been rebuilt)."""
        with self._lock:
            self._done.discard(host)

    def ensure(self, host: HostSpec, ctl: Path | None) -> bool:
        """Sync the code to the host unless it already holds this version; True when files were sent."""
        version = self.version
        with self._lock:
            lock = self._locks.setdefault(host.name, threading.Lock())
        with lock:
            if host.name in self._done:
                return False
            marker = f"{host.workdir.rstrip('/')}/{STATE_DIR}/code_version"
            have = run_ssh(host, ctl, f"cat {remote_path(marker)} 2>/dev/null || true").stdout.strip()
            sent = False
            if have != version:
                self._send(host, ctl, version)
                sent = True
            self._done.add(host.name)
            return sent

    def _send(self, host: HostSpec, ctl: Path | None, version: str) -> None:
        wd = remote_path(host.workdir)
        state = remote_path(f"{host.workdir.rstrip('/')}/{STATE_DIR}")
        command = (
            f"mkdir -p {wd} {state} && tar -xf - -C {wd} && "
            f"printf %s {shlex.quote(version)} > {state}/code_version"
        )
        proc = subprocess.Popen(
            ssh_argv(host, ctl, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                for name in self._files or []:
                    tar.add(str(self.root / name), arcname=name, recursive=False)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace").strip()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise HostUnreachable(f"host {host.name}: code sync timed out") from exc
        if proc.returncode == 255:
            raise HostUnreachable(f"host {host.name}: code sync: {err or 'ssh exit 255'}")
        if proc.returncode != 0:
            raise RunError(f"host {host.name}: code sync to {host.workdir} failed: {err}")


# ----------------------------------------------------------------------------------------- hosts check
_PROBE = r"""
import json, os, platform, subprocess, sys
from importlib import metadata
out = {"python": platform.python_version(), "executable": sys.executable, "packages": {}, "data": {}}
for n in PKGS:
    try:
        out["packages"][n] = metadata.version(n)
    except Exception:
        out["packages"][n] = None
try:
    with open(os.path.join(STATE, "code_version")) as fh:
        out["code"] = fh.read().strip()
except OSError:
    out["code"] = None
for r in ROOTS:
    out["data"][r] = os.path.exists(os.path.expanduser(r))
out["copies"] = {}
for src, marker in COPIES.items():
    try:
        with open(marker) as fh:
            out["copies"][src] = fh.read().strip()
    except OSError:
        out["copies"][src] = None
try:
    p = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    out["gpus"] = [[c.strip() for c in line.split(",")] for line in p.stdout.splitlines() if line.strip()]
    out["gpu_error"] = None if p.returncode == 0 else (p.stderr.strip() or "nvidia-smi failed")
except (OSError, subprocess.SubprocessError) as e:
    out["gpus"], out["gpu_error"] = [], f"nvidia-smi: {e}"
out["cpus"] = os.cpu_count()
print(json.dumps(out))
"""


def _local_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in PACKAGES:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def check_host(
    host: HostSpec,
    ctl: Path | None,
    *,
    code: str | None,
    data_root: str | None = None,
    datasets: Sequence[Path] = (),
) -> dict[str, Any]:
    """Connect and report: ``{"host", "ok", "problems": [lines], "info": {...}}``.

    ``data_root`` (a path on the host) and the host's ``data_roots`` must exist there; ``datasets`` are the
    controller's dataset folders that ``launch`` copies to the host (orchestrator/datasync.py): whether the
    host's copy is up to date is reported in ``info["datasets"]``, never as a problem.
    """
    from orchestrator import datasync

    problems: list[str] = []
    info: dict[str, Any] = {}
    roots = list(host.data_roots) + ([data_root] if data_root and data_root not in host.data_roots else [])
    to_copy = [d for d in datasets if not datasync.host_has(host, d)]
    copies = {str(d): datasync.copy_name(d) + datasync.MANIFEST_SUFFIX for d in to_copy}
    script = (
        f"PKGS={list(PACKAGES)!r}\nROOTS={roots!r}\nSTATE={STATE_DIR!r}\nCOPIES={copies!r}\n" + _PROBE
    )  # no secrets: safe on a command line
    command = f"cd {remote_path(host.workdir)} 2>/dev/null; " + quote_argv([*python_argv(host), "-c", script])
    try:
        proc = run_ssh(host, ctl, command, timeout=CONNECT_TIMEOUT + 40)
    except HostUnreachable as exc:
        return {"host": host.name, "ok": False, "problems": [f"unreachable: {exc}"], "info": info}
    info["reachable"] = True
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        problems.append(f"python {host.python!r} does not run there: {tail}")
        return {"host": host.name, "ok": False, "problems": problems, "info": info}
    try:
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"host": host.name, "ok": False, "problems": ["unreadable probe output"], "info": info}
    info.update(got)
    problems += _version_problems(got, code)
    problems += _dataset_problems(host, datasets, got, info)
    problems += _gpu_problems(host, got)
    return {"host": host.name, "ok": not problems, "problems": problems, "info": info}


def _version_problems(got: dict[str, Any], code: str | None) -> list[str]:
    """The host's packages and synced code against this controller's."""
    problems: list[str] = []
    local = _local_versions()
    for name, want in local.items():
        have = got["packages"].get(name)
        if have is None and want is not None:
            problems.append(f"package {name} is missing (the controller has {want})")
        elif want is not None and have != want:
            problems.append(f"package {name} {have} differs from the controller's {want}")
    if code is not None and got.get("code") != code:
        problems.append(
            f"code version {got.get('code') or 'none'} differs from this checkout's {code} "
            "(launch syncs it before the first trial)"
        )
    for root, present in got.get("data", {}).items():
        if not present:
            problems.append(f"dataset root {root} is missing")
    return problems


def _dataset_problems(
    host: HostSpec, datasets: Sequence[Path], got: dict[str, Any], info: dict[str, Any]
) -> list[str]:
    """Each dataset folder launch copies: the state of the host's copy goes in ``info["datasets"]``."""
    from orchestrator import datasync

    problems: list[str] = []
    info["datasets"] = {}
    for d in datasets:
        if datasync.host_has(host, d):
            info["datasets"][str(d)] = "the host's own copy (data_roots)"
            continue
        local_copy = datasync.manifest(d) if d.is_dir() else None
        have = (got.get("copies") or {}).get(str(d))
        if local_copy is None:
            problems.append(f"dataset folder {d} does not exist on this machine (launch copies it from here)")
        elif have == local_copy.digest:
            info["datasets"][str(d)] = "copy up to date"
        else:
            info["datasets"][str(d)] = (
                f"{'stale copy' if have else 'no copy'}: launch copies it before the first trial "
                f"({local_copy.files} files, {local_copy.bytes / 1e6:.1f} MB)"
            )
    return problems


def _gpu_problems(host: HostSpec, got: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if isinstance(host.gpus, str) and host.gpus.startswith("cpu:"):
        pass
    elif got.get("gpu_error") or not got.get("gpus"):
        problems.append(f"no GPU found ({got.get('gpu_error') or 'nvidia-smi lists none'})")
    elif not isinstance(host.gpus, str):
        have_ids = {g[0] for g in got["gpus"]}
        missing = [g for g in host.gpus if g not in have_ids]
        if missing:
            problems.append(f"GPU(s) {', '.join(missing)} not present (found {', '.join(sorted(have_ids))})")
    return problems


def describe(result: dict[str, Any]) -> str:
    """One summary line of a host's check."""
    info = result["info"]
    if not info.get("reachable"):
        return f"{result['host']}: unreachable"
    gpus = info.get("gpus") or []
    gpu_text = ", ".join(f"GPU{g[0]} {g[1]} {g[3]}/{g[2]} MiB free" for g in gpus if len(g) >= 4) or "no GPU"
    pk = " ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items() if v)
    data = "; ".join(f"dataset {Path(d).name}: {state}" for d, state in (info.get("datasets") or {}).items())
    return (
        f"{result['host']}: reachable; {gpu_text}; {info.get('cpus')} CPUs; Python {info.get('python')}; "
        f"{pk or 'no ML packages'}; code {info.get('code') or 'not synced'}" + (f"; {data}" if data else "")
    )


def check_all(
    hosts: Sequence[HostSpec],
    *,
    data_root: str | None = None,
    datasets: Sequence[Path] = (),
    root: Path = PROJECT_ROOT,
) -> list[dict[str, Any]]:
    """Check every host (in parallel, one thread each)."""
    try:
        code: str | None = code_version(root)
    except RunError:
        code = None
    results: list[dict[str, Any]] = [{} for _ in hosts]

    def one(i: int, host: HostSpec) -> None:
        results[i] = check_host(host, None, code=code, data_root=data_root, datasets=datasets)

    threads = [threading.Thread(target=one, args=(i, h), daemon=True) for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
