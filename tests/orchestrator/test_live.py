"""The live view, fed the calls the controller makes, on a real sweep file and a real study (SQLite)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import storage as st
from orchestrator.live import LiveDisplay
from orchestrator.scheduler import LaunchOptions, SweepRunner
from orchestrator.spec.loader import load_sweeps
from tests.orchestrator.conftest import write

SWEEP = """
defaults: {slots: cpu:1, wandb: disabled}
sweeps:
  - name: grid
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.1, 0.9, 0.5, 0.7]}
      lr: {values: [0.01]}
      epochs: {value: 4}
      sleep: {value: 0.5}
"""


def _text(display: LiveDisplay) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(display._table())
    out = console.file.getvalue()
    assert isinstance(out, str)
    return out


def test_live_view_rows_title_and_caption(tmp_path: Path) -> None:
    (spec,) = load_sweeps(write(tmp_path, "sweeps.yaml", SWEEP)).sweeps
    url = f"sqlite:///{tmp_path / 'o.db'}"
    runner = SweepRunner(spec, st.get_storage(url), LaunchOptions(storage=url, runs_dir=tmp_path / "runs"))
    assert len(runner.pending) == 4  # the grid's points
    runner.pending.pop()
    runner.pending.pop()  # two of them still queued
    display = LiveDisplay()
    display.console = Console(file=io.StringIO(), width=120, color_system=None)
    display.sweep_ready("grid", runner)
    header = display.console.file.getvalue()
    assert "[grid] constants: epochs=4 sleep=0.5" in header and "quality" not in header
    params = {"quality": 0.9, "lr": 0.01, "epochs": 4, "sleep": 0.5}
    display.trial_started("grid", 1, "cpu0", params, 1)
    runner.running = 1
    display.trial_epochs("grid", 1, 4)
    display.trial_metric("grid", 1, 3, "score", 0.8125)
    text = _text(display)
    row = next(line for line in text.splitlines() if "cpu0" in line)
    assert "3/4" in row and "score=0.8125" in row  # epoch 3 of 4
    assert "quality=0.9" in row and "epochs=" not in row and "sleep=" not in row  # swept only
    assert "constants" not in text  # …the constants once, in the header above
    assert "ETA" not in text and "best" not in text  # nothing finished yet: no estimate, no best

    # two trials finish in 10 s and 20 s: ETA = mean 15 s × (2 queued + 1 running) / 1 running = 45 s
    display.trial_started("grid", 2, "cpu0", {**params, "quality": 0.7}, 1)
    display.trial_finished("grid", 2, "COMPLETE", 0.75, 10.0, None, 4)
    display.trial_started("grid", 3, "cpu0", {**params, "quality": 0.1}, 1)
    display.trial_finished("grid", 3, "PRUNED", 0.05, 20.0, None, 2)
    runner.finished, runner.counts["complete"], runner.counts["pruned"] = 2, 1, 1
    text = _text(display)
    caption = " ".join(text.split())  # the caption wraps at the table's width
    assert "grid: 2 finished (1 complete, 1 pruned, 0 failed), 1 running, 2 queued" in caption
    assert "best score=0.75 (trial 2)" in caption and "ETA 45s" in caption
    assert len([line for line in text.splitlines() if "cpu0" in line]) == 1  # finished rows are gone

    # fold jobs of one trial are rows "grid fold k"; the trial's end removes all of them
    display.trial_started("grid fold 0", 4, "cpu0", params, 1)
    display.trial_started("grid fold 1", 4, "cpu1", params, 1)
    display.trial_finished("grid", 4, "COMPLETE", 0.95, 30.0, None, 4)
    assert ("grid fold 0", 4) not in display.rows and ("grid fold 1", 4) not in display.rows
    assert "best score=0.95 (trial 4)" in " ".join(_text(display).split())
    display.close()


class _Broken(io.StringIO):
    """A stream whose reader is gone (or whose terminal or disk is): every write fails."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, s: str) -> int:
        raise self.error

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_a_display_whose_output_fails_goes_quiet_instead_of_ending_the_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from orchestrator.live import PlainDisplay

    (spec,) = load_sweeps(write(tmp_path, "sweeps.yaml", SWEEP)).sweeps
    runner = SweepRunner(spec, st.get_storage(f"sqlite:///{tmp_path / 'db.sqlite'}"), LaunchOptions())
    for error in (BrokenPipeError(errno.EPIPE, "Broken pipe"), OSError(errno.EIO, "Input/output error")):
        monkeypatch.setattr(sys, "stdout", _Broken(error))
        plain = PlainDisplay()
        live = LiveDisplay()  # rich: a broken pipe went to its on_broken_pipe (exit 1); the rest raised
        for display in (plain, live):
            display.sweep_ready("grid", runner)
            display.trial_started("grid", 0, "cpu0", {"quality": 0.1}, 1)
            display.trial_metric("grid", 0, 1, "score", 0.5)
            display.trial_finished("grid", 0, "COMPLETE", 0.5, 1.0, None, 1)
            display.message("done")
            display.close()
            assert display.gone
        err = capsys.readouterr().err
        assert err.count("the output can no longer be written") == 2, err  # once per display
        assert f"({error.strerror})" in err
