"""The metric protocol between a trial (child process) and the controller.

A child reports by printing one line per event on its stdout::

    @orchestrate {"event": "metrics", "step": 3, "metrics": {"val/acc": 0.91, "val/loss": 0.3}}
    @orchestrate {"event": "summary", "metrics": {"val/acc": 0.93, "test/acc": 0.9}}
    @orchestrate {"event": "info", "wandb_run": "offline-run-…/run-abc.wandb", "epochs": 10}
    @orchestrate {"event": "checkpoint", "epoch": 3, "path": "checkpoint_last.pt"}

``checkpoint`` says a resumable checkpoint of ``epoch`` completed epochs is complete on disk (``path``, relative to
the run directory): a remote trial's run directory is copied back to the controller then, so that a trial whose
host dies resumes from it elsewhere. A re-run in the same run directory resumes from it and says so with
``{"event": "info", "resumed_from_epoch": E}``.

The prefix makes protocol lines unambiguous among whatever else the program prints (everything else goes
to the trial's ``stdout.log``). It works the same for a local ``Popen`` and through ``ssh``.

This module must stay dependency-free (no torch, no wandb): children of every kind import it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import IO, Any

PREFIX = "@orchestrate "

EVENT_METRICS = "metrics"
EVENT_SUMMARY = "summary"
EVENT_INFO = "info"
EVENT_CHECKPOINT = "checkpoint"
EVENTS = (EVENT_METRICS, EVENT_SUMMARY, EVENT_INFO, EVENT_CHECKPOINT)
# written into the run dir by the controller just before it stops the trial with SIGTERM, saying why:
# {"reason": "pruned", "step": 3}. A trial that finds it on SIGTERM closes its W&B run as finished (exit code 0,
# tag and summary ``pruned``) rather than as a crash; without it a SIGTERM is an interruption (exit code 143).
STOP_FILE = "stop.json"


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: numpy/torch scalars to Python numbers, NaN/inf to strings."""
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no literal for them
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def format_event(event: str, **payload: Any) -> str:
    if event not in EVENTS:
        raise ValueError(f"unknown protocol event {event!r}; expected one of {EVENTS}")
    return PREFIX + json.dumps({"event": event, **_clean(payload)}, separators=(",", ":"))


def emit(event: str, stream: IO[str] | None = None, **payload: Any) -> None:
    """Print one protocol line and flush it at once (the controller prunes on it)."""
    out = stream if stream is not None else sys.stdout
    out.write(format_event(event, **payload) + "\n")
    out.flush()


def report(step: int, metrics: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Report the metrics of one step (epoch) — what the controller prunes on."""
    emit(EVENT_METRICS, stream, step=int(step), metrics=metrics)


def summary(metrics: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Report the final summary of a trial (its objective is read from here when present)."""
    emit(EVENT_SUMMARY, stream, metrics=metrics)


def checkpoint(epoch: int, path: str = "checkpoint_last.pt", stream: IO[str] | None = None) -> None:
    """Say that the checkpoint after ``epoch`` completed epochs is written (atomically) at ``path``."""
    emit(EVENT_CHECKPOINT, stream, epoch=int(epoch), path=str(path))


def parse_line(line: str) -> dict[str, Any] | None:
    """Return the event dict of a protocol line, or None for any other line.

    Malformed protocol lines return ``{"event": "invalid", "line": ...}`` so that the controller can log them
    instead of crashing.
    """
    if not line.startswith(PREFIX):
        return None
    try:
        obj = json.loads(line[len(PREFIX) :])
    except json.JSONDecodeError:
        return {"event": "invalid", "line": line.rstrip("\n")}
    if not isinstance(obj, dict) or obj.get("event") not in EVENTS:
        return {"event": "invalid", "line": line.rstrip("\n")}
    return obj


def stop_reason(run_dir: Any) -> dict[str, Any]:
    """Why the controller stopped the trial in ``run_dir`` (``{}`` when it did not say: an interruption)."""
    import os

    if not run_dir:
        return {}
    try:
        with open(os.path.join(run_dir, STOP_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def as_float(value: Any) -> float | None:
    """A reported metric value as a float (accepting the "nan"/"inf" strings), or None if not numeric."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
