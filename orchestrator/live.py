"""What ``launch`` shows: a rich live table of slots and trials on a terminal, plain log lines otherwise."""

from __future__ import annotations

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


class PlainDisplay:
    """One line per event: for logs, CI and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def _say(self, text: str) -> None:
        self.out.write(time.strftime("%H:%M:%S ") + text + "\n")
        self.out.flush()

    def sweep_ready(self, name: str, runner: Any) -> None:
        left = len(runner.pending)
        cap = f", cap {runner.cap}" if runner.cap is not None else ""
        self._say(f"[{name}] {runner.spec.method}: {runner.finished} finished, {left} queued{cap}")

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
        self.console = Console()
        self.rows: dict[tuple[str, int], _Row] = {}
        self.runners: dict[str, Any] = {}  # sweep name → its SweepRunner (counts for the caption)
        self.paused: str | None = None  # the pause line (storage or runs dir failing), shown above the counts
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=True)
        self.started = False  # the table appears with the first trial, below the start-up messages

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="running trials", caption=self._caption(), caption_justify="left", expand=False)
        for col in ("sweep", "trial", "slot", "epoch", "metric", "elapsed", "params"):
            table.add_column(col)
        now = time.time()
        for row in sorted(self.rows.values(), key=lambda r: r.slot):
            table.add_row(
                row.sweep,
                str(row.number),
                row.slot,
                "" if row.step is None else str(row.step),
                "" if row.value is None else f"{row.metric}={_fmt(row.value)}",
                f"{now - row.started:.0f}s",
                _params(row.params),
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
            parts.append(
                f"{name}: {r.finished}{cap} finished ({c['complete']} complete, {c['pruned']} pruned, "
                f"{c['failed']} failed), {r.running} running, {queued} queued"
            )
        return "\n".join(parts)

    def sweep_ready(self, name: str, runner: Any) -> None:
        self.runners[name] = runner
        super().sweep_ready(name, runner)

    def _say(self, text: str) -> None:
        self.console.print(time.strftime("%H:%M:%S ") + text, markup=False, highlight=False)

    def trial_started(self, sweep: str, number: int, slot: str, flat: dict[str, Any], attempt: int) -> None:
        self.rows[(sweep, number)] = _Row(sweep, number, slot, flat, attempt)
        if not self.started:
            self.started = True
            self.live.start()
        self.live.update(self._table())

    def trial_metric(
        self, sweep: str, number: int, step: int, metric: str | None, value: float | None
    ) -> None:
        row = self.rows.get((sweep, number))
        if row is not None:
            row.step, row.metric, row.value = step, metric, value
            self.live.update(self._table())

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
        self.rows.pop((sweep, number), None)
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
            self.live.stop()


def make_display(plain: bool | None = None) -> PlainDisplay:
    if plain is None:
        plain = not sys.stdout.isatty()
    return PlainDisplay() if plain else LiveDisplay()
