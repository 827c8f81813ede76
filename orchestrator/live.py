"""What ``launch`` shows: a rich live table of slots and trials on a terminal, plain log lines otherwise.

The live table has one row per running job: sweep, trial, slot, ``epoch 3/4`` (the total from the trial's
``info`` event), the sweep metric's last value, elapsed time, and only the parameters that vary in its sweep
(the constants are printed once, as the sweep starts). Its caption has, per sweep: finished of cap (complete, pruned,
failed), running, queued, the best value so far and an ETA (mean duration of the trials finished in this
launch × (queued + running) / jobs running, as ``orchestrate status``).

The display never ends a launch: when standard output can no longer be written (the reader of a pipe left, as
``| head`` does; a closed terminal; a full disk), the launch goes on without printing, says so once on stderr,
and its trials run and are recorded as before (click's and rich's default was to exit 1 at once, leaving the
running trials orphaned).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params(flat: dict[str, Any], limit: int = 60) -> str:
    text = " ".join(f"{k}={_fmt(v)}" for k, v in flat.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dur(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _sweep_of(label: str) -> str:
    """The sweep of a display label (``name`` or ``name fold 3``)."""
    head, sep, tail = label.rpartition(" fold ")
    return head if sep and tail.isdigit() else label


def _constants(runner: Any) -> dict[str, Any]:
    try:
        return dict(runner.spec.parameters.constants())
    except Exception:  # noqa: BLE001 - a display never fails a launch
        return {}


def _within(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The trial's task/dataset/metric parameters (leaderboard's STRATA): its best is kept per their values."""
    from orchestrator.leaderboard.compute import STRATA

    return tuple((k, v) for k, v in sorted(params.items()) if k.rpartition(".")[2] in STRATA)


@dataclass
class _Row:
    sweep: str
    number: int
    slot: str
    params: dict[str, Any]
    attempt: int
    started: float = field(default_factory=time.time)
    step: int | None = None
    metric: str | None = None
    value: float | None = None
    state: str = "RUNNING"
    epochs: int | None = None  # the total, once the trial said it


def _epoch(row: _Row) -> str:
    if row.step is None:
        return "" if row.epochs is None else f"0/{row.epochs}"
    return f"{row.step}/{row.epochs}" if row.epochs else str(row.step)


def _output_gone(out: TextIO, exc: BaseException) -> None:
    """``out`` failed (``exc``): its descriptor, if it has one, is pointed at /dev/null, so that every later write
    to it (a library's, the launch's last lines) succeeds; the display itself writes nothing more. One line on
    stderr says so."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, out.fileno())
        finally:
            os.close(devnull)
        out.flush()  # what was buffered goes to /dev/null now
    why = getattr(exc, "strerror", None) or type(exc).__name__
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(
            f"orchestrate: the output can no longer be written ({why}); the launch goes on without printing "
            "(`orchestrate status` shows it)\n"
        )
        sys.stderr.flush()


class PlainDisplay:
    """One line per event: for logs, CI and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.gone = False  # the output failed: nothing more is printed

    def _say(self, text: str) -> None:
        if self.gone:
            return
        try:
            self.out.write(time.strftime("%H:%M:%S ") + text + "\n")
            self.out.flush()
        except OSError as exc:
            self._gone(exc)

    def _gone(self, exc: BaseException) -> None:
        """The output failed: nothing more is printed, and the launch goes on."""
        if not self.gone:
            self.gone = True
            _output_gone(self.out, exc)

    def sweep_ready(self, name: str, runner: Any) -> None:
        left = len(runner.pending)
        cap = f", cap {runner.cap}" if runner.cap is not None else ""
        self._say(f"[{name}] {runner.spec.method}: {runner.finished} finished, {left} queued{cap}")
        consts = _constants(runner)
        if consts:  # once: the rows show only what varies
            self._say(f"[{name}] constants: {_params(consts, 400)}")

    def trial_started(self, sweep: str, number: int, slot: str, flat: dict[str, Any], attempt: int) -> None:
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._say(f"[{sweep}] trial {number} started on {slot}{again}: {_params(flat, 200)}")

    def trial_metric(
        self, sweep: str, number: int, step: int, metric: str | None, value: float | None
    ) -> None:
        if metric is not None:
            self._say(f"[{sweep}] trial {number} step {step}: {metric}={_fmt(value)}")

    def trial_pruning(self, sweep: str, number: int, step: int) -> None:
        self._say(f"[{sweep}] trial {number} pruned at step {step}: stopping it")

    def trial_epochs(self, sweep: str, number: int, epochs: int) -> None:
        """The trial's number of epochs (from its ``info`` event)."""

    def trial_finished(
        self,
        sweep: str,
        number: int,
        state: str,
        value: float | None,
        duration: float,
        reason: str | None,
        steps: int,
    ) -> None:
        extra = f" value={_fmt(value)}" if value is not None else ""
        why = f" ({reason})" if reason else ""
        self._say(f"[{sweep}] trial {number} {state}{extra} after {steps} step(s), {duration:.1f}s{why}")

    def message(self, text: str) -> None:
        self._say(text)

    def pause_status(self, text: str | None) -> None:
        """While the storage or runs dir fails: what is paused, why, when it is retried (None: not paused).
        Plain output has the controller's messages for that already."""

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveDisplay(PlainDisplay):
    """A rich live table of the running trials, with finished ones printed above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__()
        display = self

        class _Console(Console):
            def on_broken_pipe(self) -> None:  # rich's default: exit 1 at once, the trials orphaned
                self.quiet = True
                display._gone(BrokenPipeError("Broken pipe"))

        self.console = _Console()
        self.rows: dict[tuple[str, int], _Row] = {}
        self.runners: dict[str, Any] = {}  # sweep name → its SweepRunner (counts for the caption)
        self.paused: str | None = None  # the pause line (storage or runs dir failing), shown above the counts
        self.durations: dict[str, list[float]] = {}  # sweep → durations of its trials finished in this launch
        # sweep → its task/dataset/metric values (none: one entry) → (best value so far, trial): values of two
        # tasks are not comparable, so a sweep over tasks has a best per task
        self.best: dict[str, dict[tuple[tuple[str, Any], ...], tuple[float, int]]] = {}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=True)
        self.started = False  # the table appears with the first trial, below the start-up messages

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="running trials", caption=self._caption(), caption_justify="left", expand=False)
        for col in ("sweep", "trial", "slot", "epoch", "metric", "elapsed", "swept params"):
            table.add_column(col, no_wrap=col != "swept params")
        now = time.time()
        for row in sorted(self.rows.values(), key=lambda r: r.slot):
            consts = _constants(self.runners.get(_sweep_of(row.sweep)))
            swept = {k: v for k, v in row.params.items() if k not in consts}
            table.add_row(
                row.sweep,
                str(row.number),
                row.slot,
                _epoch(row),
                "" if row.value is None else f"{row.metric}={_fmt(row.value)}",
                _dur(now - row.started),
                _params(swept),
            )
        return table

    def _caption(self) -> str:
        """Per sweep: finished/pruned/failed counts, running and queued — what `orchestrate status` shows."""
        paused: str | None = getattr(self, "paused", None)
        parts: list[str] = [paused] if paused else []
        for name, r in self.runners.items():
            c = r.counts
            queued = len(r.pending)
            cap = f"/{r.cap}" if r.cap is not None else ""
            line = (
                f"{name}: {r.finished}{cap} finished ({c['complete']} complete, {c['pruned']} pruned, "
                f"{c['failed']} failed), {r.running} running, {queued} queued"
            )
            metric = getattr(getattr(r.spec, "metric", None), "name", "value")
            for within, best in getattr(self, "best", {}).get(name, {}).items():
                where = "".join(f", {k}={v}" for k, v in within)
                line += f"; best {metric}={_fmt(best[0])} (trial {best[1]}{where})"
            eta = self._eta(name, r)
            if eta is not None:
                line += f"; ETA {_dur(eta)}"
            parts.append(line)
        return "\n".join(parts)

    def _eta(self, name: str, runner: Any) -> float | None:
        done = getattr(self, "durations", {}).get(name)
        running = sum(1 for row in self.rows.values() if _sweep_of(row.sweep) == name)
        left = len(runner.pending) + runner.running
        if runner.cap is not None:
            left = min(left, max(0, runner.cap - runner.finished))
        if not done or not left:
            return None
        return sum(done) / len(done) * left / max(1, running)

    def sweep_ready(self, name: str, runner: Any) -> None:
        self.runners[name] = runner
        super().sweep_ready(name, runner)

    def _gone(self, exc: BaseException) -> None:
        self.console.quiet = True  # (rich's refresh thread writes too)
        super()._gone(exc)

    def _say(self, text: str) -> None:
        if self.gone:
            return
        try:
            self.console.print(time.strftime("%H:%M:%S ") + text, markup=False, highlight=False)
        except OSError as exc:  # (a broken pipe is rich's on_broken_pipe; this is the rest: EIO, ENOSPC …)
            self._gone(exc)

    def trial_started(self, sweep: str, number: int, slot: str, flat: dict[str, Any], attempt: int) -> None:
        self.rows[(sweep, number)] = _Row(sweep, number, slot, flat, attempt)
        if not self.started:
            self.started = True
            try:
                self.live.start()
            except OSError as exc:
                self._gone(exc)
        self.live.update(self._table())

    def trial_metric(
        self, sweep: str, number: int, step: int, metric: str | None, value: float | None
    ) -> None:
        row = self.rows.get((sweep, number))
        if row is not None:
            row.step, row.metric, row.value = step, metric, value
            self.live.update(self._table())

    def trial_epochs(self, sweep: str, number: int, epochs: int) -> None:
        row = self.rows.get((sweep, number))
        if row is not None:
            row.epochs = epochs

    def trial_finished(
        self,
        sweep: str,
        number: int,
        state: str,
        value: float | None,
        duration: float,
        reason: str | None,
        steps: int,
    ) -> None:
        within: tuple[tuple[str, Any], ...] = ()
        for key in [k for k in self.rows if k[1] == number and _sweep_of(k[0]) == sweep]:
            within = _within(self.rows[key].params)
            del self.rows[key]  # the trial's row, or each of its folds' rows
        if state in ("COMPLETE", "PRUNED"):
            self.durations.setdefault(sweep, []).append(duration)
        runner = self.runners.get(sweep)
        goal = getattr(getattr(getattr(runner, "spec", None), "metric", None), "goal", None)
        if state == "COMPLETE" and value is not None and goal is not None:
            best = self.best.setdefault(sweep, {}).get(within)
            if best is None or (value > best[0] if goal == "maximize" else value < best[0]):
                self.best[sweep][within] = (value, number)
        super().trial_finished(sweep, number, state, value, duration, reason, steps)
        self.live.update(self._table())

    def pause_status(self, text: str | None) -> None:
        self.paused = text
        if self.started:
            self.live.update(self._table())

    def tick(self) -> None:
        self.live.update(self._table())

    def close(self) -> None:
        if self.started:
            try:
                self.live.stop()
            except OSError as exc:
                self._gone(exc)


def make_display(plain: bool | None = None) -> PlainDisplay:
    if plain is None:
        plain = not sys.stdout.isatty()
    return PlainDisplay() if plain else LiveDisplay()
