"""Failures are not hidden as success (issue 13, item 9): ``launch`` exits 1 when a trial ended FAILED after
its retries and says why (the child's last stderr line, counted); a trial that exits 2 (bad input) is not
retried; what the built-in experiment can check without torch stops ``--dry-run`` and ``launch`` with exit 2
and file:line: key, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import load_trials, run_cli, write

pytestmark = pytest.mark.e2e

SOME_FAIL = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 1}
sweeps:
  - name: crashy
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.5, 0.6, 0.7]}
      fail: {values: [true, false]}
      epochs: {value: 2}
      sleep: {value: 0.01}
"""

BAD_INPUT = """
import sys
print("starting")
print("error: --lr must be > 0 (bad input)", file=sys.stderr)
sys.exit(2)
"""


def test_launch_exits_1_and_counts_the_reasons_when_trials_fail_after_their_retries(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", SOME_FAIL)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    trials = load_trials(tmp_path, "crashy")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 6  # 3 failing points × (1 run + 1 retry)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "3 trial(s) of 1 sweep(s) ended FAILED after their retries" in out
    # one line per distinct reason, with its count: the child's last stderr line
    assert "3× exit code 3: boom: simulated crash in epoch 1" in out
    assert "Traceback" not in proc.stderr


def test_a_trial_that_exits_2_is_not_retried(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(BAD_INPUT)
    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults: {slots: "cpu:1", wandb: disabled, retries: 3}
        sweeps:
          - name: bad
            program: bad.py
            method: grid
            metric: {name: score, goal: maximize}
            parameters:
              lr: {values: [0.1, 0.2]}
        """,
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    trials = load_trials(tmp_path, "bad")
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)  # no retry: 2 trials, not 8
    reasons = {t.user_attrs["orchestrate.reason"] for t in trials}
    assert reasons == {"exit code 2 (bad input: not retried)"}
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "2× exit code 2 (bad input: not retried): error: --lr must be > 0 (bad input)" in out


TOO_SMALL = """
defaults: {slots: "cpu:1", wandb: disabled}
sweeps:
  - name: lh
    experiment: train
    method: grid
    metric: {name: val/acc, goal: maximize}
    parameters:
      backbone: {value: levi_hassner}
      epochs: {value: 1}
      image_size: {values: [64, 32]}
"""


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        (TOO_SMALL, "sweeps[0].parameters.image_size", "levi_hassner needs image_size >= 35 px, got 32"),
        (
            TOO_SMALL.replace("levi_hassner}", "basic_cnn}\n      backbone_args: {value: {num_layers: 6}}"),
            "sweeps[0].parameters.image_size",
            "basic_cnn with num_layers 6 needs image_size >= 64 px, got 32",
        ),
        (
            TOO_SMALL.replace("image_size: {values: [64, 32]}", "pretrained: {value: /no/such/weights.pt}"),
            "sweeps[0].parameters.pretrained",
            "no such weights file: /no/such/weights.pt",
        ),
    ],
    ids=["levi-hassner-32px", "basic-cnn-too-deep", "missing-weights"],
)
def test_what_the_experiment_can_check_without_torch_stops_before_anything_starts(
    tmp_path: Path, text: str, key: str, needle: str
) -> None:
    spec = write(tmp_path, "sweeps.yaml", text)
    line = next(i for i, ln in enumerate(spec.read_text().splitlines(), 1) if key.rsplit(".", 1)[1] in ln)
    for args in (["--dry-run"], ["--plain"]):
        proc = run_cli(tmp_path, "launch", str(spec), *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{spec}:{line}: {key}: {needle}" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, no storage made
