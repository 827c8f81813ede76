"""Loaded by Python at start-up in every trial of a ``program``/``command`` sweep (see ``__init__.py``).

It costs nothing unless the script imports wandb: it installs an import hook and returns; wandb is never
imported here. When ``wandb.sdk.wandb_run`` is imported, ``Run._log`` (behind ``wandb.log`` / ``run.log``) and
``Run._finish`` (behind ``run.finish()``, ``wandb.finish()`` and ``with wandb.init()``) are wrapped:

* **Reports.** A ``wandb.log`` call whose data holds the sweep metric (``ORCHESTRATE_METRIC``; a nested dict is
  also searched by its dotted path) prints one ``@orchestrate {"event": "metrics", …}`` line with every scalar
  logged since the previous report (the last value of each key) — so one report per time the metric was
  logged, which is what W&B's hyperband counts as an *iteration*. Without a sweep metric every call reports.
* **The step** of a report is the integer ``epoch`` key of the logged data when there is one, else the W&B
  step of the history row (``step=`` given to ``wandb.log``, else the run's auto-incremented step); steps only
  go up: one that is not above the previous report's becomes previous + 1. (The pruner counts reports, so
  the step only labels them.)
* **Summary.** At the run's finish (or at interpreter exit when the script never finishes the run) one
  ``@orchestrate {"event": "summary", …}`` line with the run summary (W&B: the last logged value of each key
  unless the script set ``run.summary[...]`` itself), without W&B's ``_``-prefixed keys. The controller's
  objective is ``summary[metric]``, as W&B's.
* **Stopping.** The controller stops a pruned trial with SIGTERM. Python's default for it is to die on the spot,
  and an offline W&B run then loses everything (``wandb-core`` buffers the ``.wandb`` file and exits without
  writing it when its client vanishes). So, unless the script installed its own handler, SIGTERM raises
  ``SystemExit(143)`` in the main thread: the script unwinds, W&B's exit hook finishes the run (exit code 143,
  config/history kept), and no summary is printed for it. A *pruned* trial (the controller wrote
  ``protocol.STOP_FILE`` into ``ORCHESTRATE_RUN_DIR`` first) raises ``SystemExit(0)`` instead, after adding the
  tag and the summary field ``pruned`` to ``wandb.run``: its run is finished, not crashed.
* A script that reports through ``orchestrator.trial.protocol`` itself (it imported it) is left alone: no double
  reports.
* Lines go to a duplicate of the process's original stdout (fd 1), so a script or W&B that swaps
  ``sys.stdout`` does not swallow them. Any error in the bridge is swallowed: it never breaks the script.

Another ``sitecustomize`` further down ``sys.path`` (a distribution's, a virtualenv's) is still executed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_TARGET = "wandb.sdk.wandb_run"


class _State:
    stream: Any = None
    protocol: Any = None
    metric: str = ""
    pending: dict[str, Any] = {}
    last_step: int | None = None
    summarized: set[int] = set()
    atexit_registered = False
    terminated = False


def _scalar(value: Any) -> Any:
    """A JSON scalar for a logged value, or None for media, tables, histograms …"""
    if isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            v = item()
        except (TypeError, ValueError):
            return None
        return v if isinstance(v, (bool, int, float)) else None
    return None


def _flatten(data: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                _flatten(v, key + ".", out)
            else:
                s = _scalar(v)
                if s is not None:
                    out[key] = s
    return out


def _protocol() -> Any:
    """orchestrator/trial/protocol.py, loaded by path under a private name (dependency-free)."""
    if _State.protocol is None:
        import importlib.util

        path = os.path.join(os.path.dirname(_HERE), "protocol.py")
        spec = importlib.util.spec_from_file_location("_orchestrate_bridge_protocol", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _State.protocol = module
    return _State.protocol


def _stream() -> Any:
    if _State.stream is None:
        try:
            base = sys.__stdout__
            fd = base.fileno() if base is not None else 1
            _State.stream = os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
        except (OSError, ValueError, AttributeError):
            _State.stream = sys.__stdout__
    return _State.stream


def _self_reporting() -> bool:
    return "orchestrator.trial.protocol" in sys.modules


def _on_log(run: Any, data: Any, row_step: Any) -> None:
    if _self_reporting():
        return
    flat = _flatten(data)
    _State.pending.update(flat)
    metric = _State.metric
    if metric and metric not in flat:
        return
    if metric and (isinstance(flat[metric], (bool, str))):
        return  # W&B's hyperband ignores non-numbers in the metric history
    step: int | None = None
    epoch = flat.get("epoch")
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and float(epoch).is_integer():
        step = int(epoch)
    elif isinstance(row_step, int) and not isinstance(row_step, bool):
        step = row_step
    last = _State.last_step
    if step is not None and not 0 <= step < _protocol().MAX_STEP:
        step = None  # a negative or absurd epoch/step is no step the controller takes: count instead
    if step is None or (last is not None and step <= last):
        step = 0 if last is None else last + 1
    _State.last_step = step
    metrics, _State.pending = _State.pending, {}
    _protocol().report(step, metrics, stream=_stream())
    if not _State.atexit_registered:
        import atexit

        _State.atexit_registered = True
        atexit.register(_at_exit, run)


def _summary_of(run: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    try:
        raw = dict(run.summary)
    except Exception:
        raw = {}
    for k, v in raw.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, dict) or hasattr(v, "keys"):
            try:
                _flatten({k: dict(v)}, "", summary)
            except Exception:
                continue
        else:
            s = _scalar(v)
            if s is not None:
                summary[str(k)] = s
    summary.update(_State.pending)  # values logged with commit=False that W&B has not committed yet
    return summary


def _on_finish(run: Any) -> None:
    if (
        _State.terminated
        or _self_reporting()
        or id(run) in _State.summarized
        or getattr(run, "_is_finished", False)
    ):
        return
    _State.summarized.add(id(run))
    _protocol().summary(_summary_of(run), stream=_stream())


def _at_exit(run: Any) -> None:
    with contextlib.suppress(Exception):
        _on_finish(run)


def _on_sigterm(signum: int, frame: Any) -> None:
    _State.terminated = True
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    code = 128 + signum
    with contextlib.suppress(Exception):
        if _protocol().stop_reason(os.environ.get("ORCHESTRATE_RUN_DIR")).get("reason") == "pruned":
            code = 0  # W&B's exit hook finishes the run (exit code 0), as W&B's own sweeps stop runs
            run = getattr(sys.modules.get("wandb"), "run", None)
            if run is not None:
                run.summary["pruned"] = True
                run.tags = (*(run.tags or ()), "pruned")
    raise SystemExit(code)


def _install_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _patch(module: Any) -> None:
    run_cls = getattr(module, "Run", None)
    if run_cls is None or getattr(run_cls, "_orchestrate_bridged", False):
        return
    orig_log = run_cls._log
    orig_finish = run_cls._finish

    def _log(self: Any, data: Any, step: Any = None, commit: Any = None) -> Any:
        row_step = step if step is not None else getattr(self, "_local_step", None)
        result = orig_log(self, data, step, commit)
        with contextlib.suppress(Exception):
            _on_log(self, data, row_step)
        return result

    def _finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(Exception):
            _on_finish(self)
        return orig_finish(self, *args, **kwargs)

    _log.__wrapped__ = orig_log  # type: ignore[attr-defined]
    _finish.__wrapped__ = orig_finish  # type: ignore[attr-defined]
    run_cls._log = _log
    run_cls._finish = _finish
    run_cls._orchestrate_bridged = True
    _install_sigterm()


class _Loader:
    """Runs the real loader, then patches the module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        with contextlib.suppress(Exception):
            _patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Finder:
    """A meta-path finder that only answers for ``wandb.sdk.wandb_run`` (by asking the others)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


def _install() -> None:
    if os.environ.get("ORCHESTRATE_WANDB_BRIDGE") != "1":
        return
    _State.metric = os.environ.get("ORCHESTRATE_METRIC", "")
    if _TARGET in sys.modules:  # pragma: no cover - not at start-up
        _patch(sys.modules[_TARGET])
        return
    sys.meta_path.insert(0, _Finder())


def _chain() -> None:
    """Execute the next ``sitecustomize`` on sys.path (the one this file hides), if any."""
    import importlib.machinery
    import importlib.util

    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is None or spec.loader is None or not spec.origin:
        return
    if os.path.abspath(spec.origin) == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


with contextlib.suppress(Exception):  # never break the interpreter's start-up
    _install()
with contextlib.suppress(Exception):
    _chain()
