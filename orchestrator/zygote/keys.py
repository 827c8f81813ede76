"""Which zygote: the start-up environment that keys one, where a kept daemon lives, and its code version.

A zygote serves trials whose interpreter would start and import the same way: one per (interpreter, the
start-up environment of ``ZYGOTE_ENV``, the daemon's own settings ``ZYGOTE_SETTINGS``, and the version of the
code it preloaded). A remote box's version is the one the controller's code sync wrote (``CODE_VERSION``); a
controller's own daemons hash the sources and installed packages they preload (``code_version()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# the environment fixed when an interpreter starts or imports (sys.path, sitecustomize, thread pools): trials
# differing in these need another zygote, for local warm workers and kept daemons alike; and a daemon's settings
ZYGOTE_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ORCHESTRATE_WANDB_BRIDGE",
    "ORCHESTRATE_METRIC",
)
ZYGOTE_SETTINGS = ("ORCHESTRATE_PRELOAD", "ORCHESTRATE_ZYGOTE_IDLE_S")
ZYGOTE_DIR = ".orchestrate/zygote"
CODE_VERSION = ".orchestrate/code_version"  # written by the controller's code sync (orchestrator/hosts.py)
SUN_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path is 108 with the terminating NUL)
KEEP_ENV = "ORCHESTRATE_ZYGOTE"  # "0": no zygote outlives its launch
# the sources a daemon's preloaded modules come from: a change in them means another daemon
CODE_PACKAGES = ("experiments", "backbones", "datasets", "orchestrator")


def keep_zygote(env: Mapping[str, str] = os.environ) -> bool:
    """Whether a launch's zygote may outlive it (``ORCHESTRATE_ZYGOTE``, on unless 0/false/no/off)."""
    return env.get(KEEP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _private(folder: Path, parents: bool = False) -> bool:
    """``folder`` exists (made 0700 if need be), is ours and not a link: else whoever can connect runs code as us."""
    try:
        folder.mkdir(mode=0o700, parents=parents, exist_ok=True)
        st = os.lstat(folder)
        if st.st_uid != os.getuid() or os.path.islink(folder) or not os.path.isdir(folder):
            return False
        if st.st_mode & 0o077:
            os.chmod(folder, 0o700)
    except OSError:
        return False
    return True


def runtime_dir() -> Path | None:
    """The per-user directory of the controller's daemons (0700, ours, not a link); None: no usable one."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
        top = Path(base) / "orchestrate"
    else:
        top = Path("/tmp") / f"orchestrate-{os.getuid()}"
    return top / "zygote" if _private(top) else None


def place(
    env: Mapping[str, str], cwd: str, version: str | None = None, root: Path | None = None
) -> tuple[Path, str] | None:
    """The private directory of the daemon for this start-up environment, and its name (None: no usable one).

    ``version``: of the code it preloads (default: the synced one, ``CODE_VERSION``); ``root``: the directory
    (default: ``cwd/.orchestrate/zygote``; the controller's own daemons live in a per-user runtime directory).
    """
    version = synced_version(cwd) if version is None else version
    key: list[str | None] = [os.path.realpath(sys.executable), cwd, version]
    key += [env.get(k) for k in ZYGOTE_ENV + ZYGOTE_SETTINGS]
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    folder = Path(cwd) / ZYGOTE_DIR if root is None else root
    if len(os.fsencode(str(folder / f"{name}.sock"))) > SUN_PATH_MAX:
        digest = hashlib.sha256(os.fsencode(str(folder))).hexdigest()[:12]
        folder = Path("/tmp") / f"orchestrate-zygote-{os.getuid()}-{digest}"
    return (folder, name) if _private(folder, parents=True) else None


def synced_version(cwd: str) -> str:
    """The version of the code synced here: a daemon never serves modules it imported from an older one."""
    try:
        with open(os.path.join(cwd, CODE_VERSION), encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _package_dir(name: str, search: list[str]) -> Path | None:
    for entry in search:
        if os.path.isfile(os.path.join(entry, name, "__init__.py")):
            return Path(entry, name).resolve()
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def code_version(cwd: str, env: Mapping[str, str]) -> str:
    """A hash of what a daemon preloads for trials run in ``cwd`` with ``env``: the interpreter, the sources of
    ``CODE_PACKAGES`` (found as ``python -m`` would: ``cwd``, then ``PYTHONPATH``, then this ``sys.path``) and the
    distributions installed in its site-packages (names carry versions). A few milliseconds."""
    h = hashlib.sha256(f"{sys.executable}\0{sys.prefix}\0{sys.version}".encode())
    pythonpath = [os.path.join(cwd, p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    search = [cwd, *pythonpath, *(p for p in sys.path if p)]
    for name in CODE_PACKAGES:
        folder = _package_dir(name, search)
        h.update(f"\0package {name} {folder}\0".encode())
        if folder is None:
            continue
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                h.update(f"\0{path.relative_to(folder)} {len(data)}\0".encode() + data)
    for site in sorted({p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}):
        with contextlib.suppress(OSError):
            names = sorted(n for n in os.listdir(site) if n.endswith((".dist-info", ".egg-info", ".pth")))
            h.update(f"\0site {site}\0{chr(0).join(names)}".encode())
    return h.hexdigest()[:16]


def daemon_env(env: Mapping[str, str]) -> dict[str, str]:
    """A box's daemon's environment: this process's own plus the start-up variables of ``env`` (no trial's
    secrets in it)."""
    out = dict(os.environ)
    for k in ZYGOTE_ENV + ZYGOTE_SETTINGS:
        out.pop(k, None)
        if k in env:
            out[k] = env[k]
    return out
