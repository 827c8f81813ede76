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
from collections.abc import Iterator
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
    """Make a value JSON-safe and within what the controller accepts (``validate``): numpy/torch scalars to
    Python numbers, NaN/inf to strings, integers beyond ±2⁶³ to floats, over-long texts and names cut."""
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
        try:
            value = float(value)
        except OverflowError:
            return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no literal for them
    if isinstance(value, str) and len(value) > MAX_STR:
        return value[:MAX_STR]
    if isinstance(value, dict):
        return {str(k)[:MAX_KEY_LEN]: _clean(v) for k, v in value.items()}
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


#: bounds of what the controller accepts from a trial (anything beyond fails that trial, never the controller)
MAX_LINE = 1 << 20  # bytes of one protocol line
MAX_STEP = 10**9  # a step (epoch, or W&B's history step) is a non-negative integer below this
MAX_KEYS = 10_000  # metrics in one event
MAX_KEY_LEN = 1_000
MAX_STR = 10_000  # characters of a string value
MAX_INT = 2**63  # integers beyond (in absolute value) are refused: they do not fit any storage column
INVALID = "invalid"
_SHOWN = 200  # characters of a bad line quoted in the trial's failure reason


class ProtocolError(ValueError):
    """A protocol line that parses as JSON but is not a protocol event (the message says what is wrong)."""


def _int(value: Any, what: str, low: int = 0, high: int = MAX_STEP) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value < high:
        raise ProtocolError(f"{what} must be in [{low}, {high}), not {_short(repr(value), 40)}")
    return value


def _scalar(value: Any, what: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= MAX_INT:
            raise ProtocolError(f"{what} is an integer too large ({len(str(abs(value)))} digits)")
        return value
    if isinstance(value, float):
        return value  # NaN/inf are values a trial may report (the controller fails the trial on its metric)
    if isinstance(value, str):
        if len(value) > MAX_STR:
            raise ProtocolError(f"{what} is a string of {len(value)} characters (at most {MAX_STR})")
        return value
    raise ProtocolError(f"{what} must be a number, a string, a boolean or null, not {type(value).__name__}")


def _metrics(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be an object of name: value, not {type(value).__name__}")
    if len(value) > MAX_KEYS:
        raise ProtocolError(f"{what} has {len(value)} entries (at most {MAX_KEYS})")
    for key, v in value.items():
        if len(key) > MAX_KEY_LEN:
            raise ProtocolError(f"{what} has a name of {len(key)} characters (at most {MAX_KEY_LEN})")
        _scalar(v, f"{what}[{_short(key, 40)!r}]")
    return value


def validate(obj: Any) -> dict[str, Any]:
    """Check a decoded protocol line against the schema of its event; raise ``ProtocolError`` if it is not one.

    - every event: a JSON object with ``"event"`` one of ``EVENTS``
    - ``metrics``: ``metrics`` an object of scalars (number, string, boolean, null); ``step`` (optional) an
      integer in [0, MAX_STEP)
    - ``summary``: ``metrics`` an object of scalars
    - ``checkpoint``: ``epoch`` an integer in [0, MAX_STEP), ``path`` (optional) a string
    - ``info``: any fields; those the controller reads are type-checked (``resumed_from_epoch``,
      ``remote_exit``, ``remote_files``, ``remote_pid``: integers; ``remote_run_dir``, ``wandb_run``: strings or null)
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"a protocol line must be a JSON object, not {type(obj).__name__}")
    event = obj.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        raise ProtocolError(f"unknown event {_short(repr(event), 40)}; expected one of {', '.join(EVENTS)}")
    if event == EVENT_METRICS:
        if "metrics" not in obj:
            raise ProtocolError("a metrics event needs 'metrics'")
        _metrics(obj["metrics"], "metrics")
        if obj.get("step") is not None:
            _int(obj["step"], "step")
    elif event == EVENT_SUMMARY:
        _metrics(obj.get("metrics", {}), "metrics")
    elif event == EVENT_CHECKPOINT:
        _int(obj.get("epoch"), "epoch")
        if not isinstance(obj.get("path", ""), str):
            raise ProtocolError("checkpoint 'path' must be a string")
    else:
        for key in ("resumed_from_epoch", "remote_files"):
            if key in obj:
                _int(obj[key], key, low=-1)
        if "remote_exit" in obj:
            _int(obj["remote_exit"], "remote_exit", low=-255, high=256)
        if "remote_pid" in obj:
            _int(obj["remote_pid"], "remote_pid", low=1, high=2**31)
        for key in ("remote_run_dir", "wandb_run"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise ProtocolError(f"{key} must be a string or null")
    return obj


def _short(text: str, n: int = _SHOWN) -> str:
    return text if len(text) <= n else text[:n] + f"… ({len(text)} characters)"


def invalid(line: str, why: str) -> dict[str, Any]:
    """The event the controller gets for a bad protocol line: it fails the trial, quoting the line."""
    line = line.rstrip("\n")
    return {"event": INVALID, "line": _short(line), "error": why}


def parse_line(line: str) -> dict[str, Any] | None:
    """Return the event dict of a protocol line, or None for any other line.

    A line with the prefix that is not a valid event (not JSON, too deep or too long, or not matching the
    event's schema, see ``validate``) returns ``{"event": "invalid", "line": <the line, truncated>, "error":
    <why>}``: the controller fails that trial with this reason. Never raises.
    """
    if not line.startswith(PREFIX):
        return None
    if len(line) > MAX_LINE:
        return invalid(line, f"protocol line of {len(line)} characters (at most {MAX_LINE})")
    try:
        obj = json.loads(line[len(PREFIX) :])
    except RecursionError:
        return invalid(line, "JSON nested too deeply")
    except ValueError as exc:  # JSONDecodeError, and integers of more digits than Python converts
        return invalid(line, f"not JSON ({_short(str(exc), 80)})")
    try:
        return validate(obj)
    except ProtocolError as exc:
        return invalid(line, str(exc))
    except RecursionError:
        return invalid(line, "JSON nested too deeply")


def iter_lines(read: Any, limit: int = MAX_LINE) -> Iterator[bytes]:
    """Lines of a byte stream read with ``read(n)`` (``readline`` with a bound), an over-long line cut in pieces
    of at most ``limit`` bytes: the first piece keeps the line's start (a protocol line that long is then
    invalid, as it is no complete JSON), the rest are prefixed with a space so that none reads as a protocol
    line."""
    continuation = False
    while True:
        raw = read(limit)
        if not raw:
            return
        piece = b" " + raw if continuation and raw.startswith(PREFIX.encode()) else raw
        continuation = not raw.endswith(b"\n")
        yield piece


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
