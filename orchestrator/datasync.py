"""Datasets on remote hosts: each dataset folder a trial reads is copied to a host once, not once per trial.

A built-in experiment reads its images from ``trial.json``'s ``data_root`` (the sweep's, a folder with one
sub-folder per dataset or the dataset's own root) or from its ``data_root`` parameter; with neither it makes
synthetic data, which each host makes for itself once (``datasets.ensure_synthetic``, under the host's shared
cache). :func:`units` says which controller folders a trial needs — only ``<data_root>/<dataset>`` when that
sub-folder exists, so a CelebA copy never travels for an Adience sweep — and :class:`DataSync` copies each to
``<workdir>/.orchestrate/data/<name>-<hash of the controller path>`` on a host, before that host's first trial
of the launch. The trial's ``trial.json`` then names the host's copy (:func:`remap`).

A copy is skipped when the host already holds an identical one: a manifest digest of the folder (every file's
relative path, size and modification time) is written beside the copy (``<copy>.manifest``) and compared. A
copy is unpacked in a temporary folder and renamed into place, so a host that dies mid-copy keeps no half
dataset. Each copy made appends one line to ``<workdir>/.orchestrate/data/sync.log`` on the host.

The decoded-image cache (``datasets/cache.py``) is keyed by the dataset's path on the machine that reads it, so
it is not copied: it is built once per host, in the host's shared cache, by the first trial there that needs it.
A host that lists a folder in its inventory's ``data_roots`` has its own copy at that same path: nothing is
sent there and the trial keeps the path.

Weights files travel the same way: a trial's ``pretrained`` / ``init_checkpoint`` parameter naming a file on
the controller (a local weights file, or the parent trial's ``checkpoint_best.pt`` of a two-stage sweep) is
copied to ``<workdir>/.orchestrate/data/<name>-<hash>/<file>`` once per host, and every mention of its path in
the trial's command line, environment and ``trial.json`` names the host's copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.spec.model import HostSpec
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import PROJECT_ROOT
from orchestrator.trial.spec import TrialSpec

DATA_DIR = "data"  # under the host's <workdir>/.orchestrate
MANIFEST_SUFFIX = ".manifest"
SYNC_LOG = "sync.log"


@dataclass(frozen=True)
class Unit:
    """One folder a trial reads: ``field`` of trial.json (``data_root`` or ``params.data_root``, dotted as
    :meth:`TrialSpec.map_paths` names it) → ``src``."""

    field: str
    src: Path


_RESOLVED: dict[str, dict[str, Any]] = {}  # the experiments' checker's answer, by the trial's params


def _resolved(experiment: str, params: dict[str, Any]) -> dict[str, Any]:
    """The experiment's own resolution of ``params`` (its ``dataset`` and ``data_root``), asked through the
    seam ``python -m experiments.check`` once per distinct parameter set."""
    from orchestrator.validate import ask_experiments

    key = json.dumps([experiment, params], sort_keys=True, default=str)
    if key not in _RESOLVED:
        _RESOLVED[key] = ask_experiments([{"op": "resolve", "experiment": experiment, "params": params}])[0]
    return _RESOLVED[key]


WEIGHT_PARAMS = ("pretrained", "init_checkpoint")  # parameters that may name a weights file


def weight_units(trial: TrialSpec) -> list[Unit]:
    """The weights files on this machine a trial starts from (its ``pretrained`` / ``init_checkpoint``)."""
    found = []
    for key in WEIGHT_PARAMS:
        value = trial.params.get(key)
        if isinstance(value, str) and value.strip() and value.lower() not in ("true", "false"):
            path = _local(value)
            if path.is_file():
                found.append(Unit(f"params.{key}", path))
    return found


def units(trial: TrialSpec) -> list[Unit]:
    """What a trial reads from this machine: the dataset folders of a built-in experiment (none for a program,
    or synthetic data), and the weights files it starts from."""
    return _dataset_units(trial.experiment, trial.params, trial.data_root) + weight_units(trial)


def _dataset_units(experiment: str | None, params: dict[str, Any], data_root: str | None) -> list[Unit]:
    if not experiment:
        return []
    dataset: str | None = None
    own_root: str | None = None
    res = _resolved(experiment, params)
    if res.get("ok"):
        dataset, own_root = res.get("dataset"), res.get("data_root")
    else:  # bad params: the trial will say so itself
        own = params.get("data_root")
        own_root = own if isinstance(own, str) else None
        dataset = params.get("dataset") if isinstance(params.get("dataset"), str) else None
    if own_root:  # the experiment's own data_root parameter wins over the sweep's (experiments/train.py)
        return [Unit(_param_field(params, "data_root", own_root), _local(own_root))]
    if not data_root:
        return []
    root = _local(str(data_root))
    if dataset and (root / dataset).is_dir():
        return [Unit("data_root", root / dataset)]  # the trial falls back to "the dataset's own root" there
    return [Unit("data_root", root)]


def _param_field(params: dict[str, Any], name: str, value: str, where: str = "params") -> str:
    """The dotted field of ``params`` holding ``name`` = ``value``: ``params.data_root``, or one the experiment
    flattens to it (``params.data.data_root``: a group, or a dotted key); ``params.<name>`` when none does."""
    return _find_field(params, name, value, where) or f"{where}.{name}"


def _find_field(params: dict[str, Any], name: str, value: str, where: str) -> str | None:
    for key, item in params.items():
        if str(key).rsplit(".", 1)[-1] == name and item == value:
            return f"{where}.{key}"
    for key, item in params.items():
        if isinstance(item, dict):
            found = _find_field(item, name, value, f"{where}.{key}")
            if found:
                return found
    return None


def _local(path: str) -> Path:
    """A data path as a trial on this machine reads it (children run in the project root); links are kept, so
    that a host's ``data_roots`` entry matches the path as the sweep file writes it."""
    p = Path(path).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else PROJECT_ROOT / p))


def copy_name(src: Path) -> str:
    """The host-side folder of a copy, relative to the workdir: ``.orchestrate/data/<name>-<hash>``."""
    from orchestrator.hosts import STATE_DIR

    tag = hashlib.sha256(str(src).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{STATE_DIR}/{DATA_DIR}/{src.name or 'root'}-{tag}"


def host_has(host: HostSpec, src: Path) -> bool:
    """The host lists this folder (or one above it) in its ``data_roots``: it has its own copy there."""
    for root in host.data_roots:
        r = Path(os.path.abspath(Path(root).expanduser()))
        if r == src or r in src.parents:
            return True
    return False


@dataclass(frozen=True)
class Manifest:
    digest: str
    files: int
    bytes: int


def manifest(src: Path) -> Manifest:
    """Digest of every file's relative path, size and modification time (no contents read)."""
    h = hashlib.sha256(b"orchestrate-data-v1\n")
    files = size = 0
    if src.is_file():
        st = src.stat()
        h.update(f"{src.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return Manifest(h.hexdigest()[:20], 1, st.st_size)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            rel = str(path.relative_to(src))
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            files += 1
            size += st.st_size
    return Manifest(h.hexdigest()[:20], files, size)


def remap(trial: TrialSpec, copies: dict[str, str]) -> TrialSpec:
    """``trial`` with the fields of ``copies`` (``data_root``, ``params.data_root``, …; :attr:`Unit.field`)
    naming the host's copies."""
    return trial.map_paths(copies.get)


@dataclass
class DataSync:
    """Copies dataset folders to hosts, once per (host, folder) per launch; thread-safe."""

    sent: list[tuple[str, str, Manifest, float]] = field(default_factory=list)  # (host, src, manifest, s)
    _manifests: dict[Path, Manifest] = field(default_factory=dict)
    _done: set[tuple[str, Path]] = field(default_factory=set)
    _locks: dict[tuple[str, Path], threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def forget(self, host: str) -> None:
        """Check the host's copies again before its next trial (after it was lost: it may have been rebuilt)."""
        with self._lock:
            self._done = {d for d in self._done if d[0] != host}

    def _manifest(self, src: Path) -> Manifest:
        with self._lock:
            found = self._manifests.get(src)
        if found is None:
            found = manifest(src)
            with self._lock:
                self._manifests[src] = found
        return found

    def ensure(self, host: HostSpec, ctl: Path | None, src: Path) -> str | None:
        """Make the host hold ``src`` (unless it already does); the note to log when a copy was made."""
        from orchestrator import hosts as hs

        if src.is_file():
            pass  # a weights file: copied into a folder of its own
        elif not src.is_dir():
            raise RunError(
                f"dataset folder {src} does not exist on this machine (the controller copies it to {host.name})",
                hint="fix data_root in the sweep file, or list the host's own copy in its data_roots",
            )
        key = (host.name, src)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                return None
            want = self._manifest(src)
            copy = copy_name(src)
            marker = f"{host.workdir.rstrip('/')}/{copy}{MANIFEST_SUFFIX}"
            have = hs.run_ssh(host, ctl, f"cat {hs.remote_path(marker)} 2>/dev/null || true").stdout.strip()
            note = None
            if have != want.digest:
                t0 = time.time()
                self._send(host, ctl, src, copy, want)
                took = time.time() - t0
                with self._lock:
                    self.sent.append((host.name, str(src), want, took))
                note = (
                    f"copied dataset {src} to {host.name}:{copy} "
                    f"({want.files} files, {want.bytes / 1e6:.1f} MB, {took:.1f} s; once per host)"
                )
            self._done.add(key)
            return note

    def _send(self, host: HostSpec, ctl: Path | None, src: Path, copy: str, want: Manifest) -> None:
        from orchestrator import hosts as hs

        wd = hs.remote_path(host.workdir)
        final = shlex.quote(copy)
        tmp = shlex.quote(f"{copy}.incoming")
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {want.digest} {want.files} {want.bytes} {src}"
        command = (
            f"cd {wd} && mkdir -p {shlex.quote(os.path.dirname(copy))} && rm -rf {tmp} && mkdir {tmp} && "
            f"tar -xf - -C {tmp} && rm -rf {final} && mv {tmp} {final} && "
            f"printf '%s\\n' {shlex.quote(want.digest)} > {final}{MANIFEST_SUFFIX} && "
            f"printf '%s\\n' {shlex.quote(line)} >> {shlex.quote(os.path.dirname(copy) + '/' + SYNC_LOG)}"
        )
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(
                hs.ssh_argv(host, ctl, command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf
            )
            assert proc.stdin is not None
            try:  # symlinks followed: a dataset that is a farm of links arrives as files
                with tarfile.open(fileobj=proc.stdin, mode="w|", dereference=True) as tar:
                    tar.add(str(src), arcname=src.name if src.is_file() else ".")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            rc = proc.wait()
            errf.seek(0)
            err = errf.read().decode(errors="replace").strip()
        if rc == 255:
            raise hs.HostUnreachable(f"host {host.name}: dataset copy: {err or 'ssh exit 255'}")
        if rc != 0:
            raise RunError(f"host {host.name}: copying dataset {src} failed: {err or f'exit {rc}'}")


def sweep_units(sweeps: Sequence[Any]) -> list[Path]:
    """The dataset folders the built-in experiment sweeps of a file read (for ``hosts check``)."""
    from orchestrator.validate import candidate_points

    found: list[Path] = []
    for spec in sweeps:
        if not getattr(spec, "experiment", None):
            continue
        try:
            points = candidate_points(spec.parameters, spec.method)
        except Exception:  # a sweep that cannot be sampled is reported by launch
            continue
        for flat in points:
            params = spec.parameters.nest(flat)
            for unit in _dataset_units(spec.experiment, params, getattr(spec, "data_root", None)):
                if unit.src not in found:
                    found.append(unit.src)
    return found
