"""What a zygote imports once, and what each trial forked from it does: own its temp dirs, run its module.

The heavy modules (torch & co.) are imported here only when a zygote process is told to (``preload()``, by
name at run time): importing this package imports none of them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# what a zygote imports before its first fork (never CUDA initialisation: a forked child must be able to)
PRELOAD = (
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "wandb",
    "sklearn.metrics",
    "datasets",
    "datasets.pipeline",
    "backbones",
    "experiments.config",
    "experiments.tasks",
    "experiments.metrics",
    "experiments.optim",
    "experiments.wandb_log",
    "experiments.trainer",  # and trainer_data, evaluation: the training loop train.py hands over to
)

_INHERITED_TEMP_DIRS: list[Any] | None = None  # found by note_temp_dirs() in a pre-importing process


def preload_names(env: Mapping[str, str] = os.environ) -> list[str]:
    """``ORCHESTRATE_PRELOAD=a,b`` (a daemon's setting), else ``PRELOAD``."""
    names = [n.strip() for n in env.get("ORCHESTRATE_PRELOAD", "").split(",") if n.strip()]
    return names or list(PRELOAD)


def preload(names: Iterable[str]) -> None:
    """Import ``names`` (a missing optional module only costs its warmth), then note the temp dirs they hold.

    ``module:function`` imports ``module`` and calls its ``function()`` (work to do once before any fork, such
    as ``orchestrator.optuna_compat:warm_storage``)."""
    import importlib

    for name in names:
        module, _, call = name.partition(":")
        try:
            imported = importlib.import_module(module)
            if call:
                getattr(imported, call)()
        except Exception as exc:
            print(f"warm worker: could not preload {name}: {exc}", file=sys.stderr)
    note_temp_dirs()  # each trial forked from here gets its own copy of them (own_temp_dirs)


def note_temp_dirs() -> None:
    """In a process that pre-imports for forked trials, once its imports are done: find the temp dirs they hold.

    (A scan of every loaded module costs ≈0.25 s with torch and wandb loaded: paid once here, not per trial.)
    """
    global _INHERITED_TEMP_DIRS
    import tempfile

    found: dict[int, Any] = {}
    for mod in list(sys.modules.values()):
        try:
            names = vars(mod)
        except TypeError:
            continue
        for value in list(names.values()):
            held = [value]
            if isinstance(value, type) and getattr(value, "__module__", None) == getattr(
                mod, "__name__", None
            ):
                with contextlib.suppress(TypeError):
                    held = list(vars(value).values())
            for obj in held:
                if isinstance(obj, tempfile.TemporaryDirectory):
                    found[id(obj)] = obj
    _INHERITED_TEMP_DIRS = list(found.values())


def own_temp_dirs() -> None:
    """In a forked child: the temporary directories its pre-importing parent made become the child's own.

    A module imported before the fork may hold a ``tempfile.TemporaryDirectory`` and remove it at exit (wandb's
    media staging dir ``…wandb-media``, where every table and image is written before it is copied into the run;
    its artifacts' ``…wandb-artifacts``). Every trial forked from that process would share it, and the first one
    to exit would delete it under the others (their tables lost: ``No such file … wandb-media``). Each one held
    by a loaded module or one of its classes gets a new directory, in the trial's own temp dir, removed when the
    trial exits; the parent's is left to the parent. ``tempfile.tempdir`` (cached by the parent's first use) is
    forgotten, so the trial's ``TMPDIR`` counts.
    """
    import tempfile

    tempfile.tempdir = None
    if _INHERITED_TEMP_DIRS is None:
        note_temp_dirs()
    for obj in _INHERITED_TEMP_DIRS or ():
        with contextlib.suppress(OSError, AttributeError):
            _renew(obj)


def _renew(obj: Any) -> None:
    """``obj`` (a TemporaryDirectory) now names a new directory of the same suffix, which its clean-up removes."""
    import tempfile

    base = os.path.basename(obj.name)
    suffix = base[11:] if base.startswith("tmp") and len(base) > 11 else ""
    new = tempfile.TemporaryDirectory(suffix=suffix)
    obj._finalizer.detach()  # the parent's directory: never removed by this process
    obj.name = new.name
    obj._finalizer = getattr(new, "_finalizer")  # noqa: B009 - private: removed at exit, or by obj.cleanup()
    obj._orchestrate_own = new  # keeps the finalizer's referent alive as long as obj


def run_as_main(module: str, args: list[str]) -> int:
    """In a forked child: run ``module`` as ``python -m module args…`` would, then its exit handlers; the exit code.

    The caller flushes and ``os._exit``s with it (a forked child must never return into its parent's loop).
    """
    import runpy

    own_temp_dirs()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    return code
