"""Cross-validation folds (one Optuna trial, one job per fold, in parallel) and two-stage sweeps
(depends_on + init_from), through the real CLI with the stand-in program."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import load_trials, run_cli, write

pytestmark = pytest.mark.e2e

FOLDS = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
sweeps:
  - name: cv
    program: @CURVE@
    method: grid
    folds: [0, 1, 2]
    metric: {name: score, goal: maximize}
    pruner: {type: threshold, lower: 0.3}
    parameters:
      quality: {values: [0.9, 0.2, 0.8]}
      epochs: {value: 4}
      sleep: {value: 0.1}
"""


def test_folds_run_as_parallel_jobs_of_one_trial_and_average(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", FOLDS)
    plan = json.loads(
        run_cli(tmp_path, "launch", str(spec), "--dry-run", "--format", "json", check=True).stdout
    )
    assert plan["sweeps"][0]["trials"] == 3 and plan["sweeps"][0]["jobs"] == 9
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    trials = {t.params["quality"]: t for t in load_trials(tmp_path, "cv")}
    assert set(trials) == {0.9, 0.2, 0.8}  # one Optuna trial per configuration
    best = trials[0.9]
    assert best.state == TrialState.COMPLETE
    fold_values = best.user_attrs["orchestrate.fold_values"]
    assert set(fold_values) == {"0", "1", "2"}
    expected = [0.9 * (1 + 0.01 * (f - 1)) * (1 - 0.5**4) for f in (0, 1, 2)]
    assert sorted(fold_values.values()) == pytest.approx(sorted(expected))
    assert best.value == pytest.approx(statistics.fmean(expected))  # the trial's value is the mean over folds
    assert best.user_attrs["orchestrate.fold_std"] == pytest.approx(statistics.stdev(expected))
    run_dir = Path(best.user_attrs["orchestrate.run_dir"])
    for f in (0, 1, 2):
        trial_json = json.loads((run_dir / f"fold{f}" / "trial.json").read_text())
        assert trial_json["params"]["fold"] == f
        assert (run_dir / f"fold{f}" / "metrics.jsonl").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert [j["fold"] for j in result["jobs"]] == [0, 1, 2] and all(
        j["state"] == "done" for j in result["jobs"]
    )
    # the bad configuration was pruned at its first report, which waits for ALL its folds (2 slots, 3 folds:
    # never a mean over the folds that happened to start first)
    bad = trials[0.2]
    assert bad.state == TrialState.PRUNED
    assert max(bad.intermediate_values) == 0
    assert bad.intermediate_values[0] == pytest.approx(
        statistics.fmean(0.2 * (1 + 0.01 * (f - 1)) * 0.5 for f in (0, 1, 2))
    )


TWO_STAGE = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
sweeps:
  - name: pretrain
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.5, 0.7, 0.6]}
      epochs: {value: 2}
  - name: finetune
    program: @CURVE@
    method: grid
    depends_on: pretrain
    init_from: {top: 2}
    metric: {name: score, goal: maximize}
    parameters:
      epochs: {values: [2, 3]}
"""


def test_two_stage_starts_from_the_parents_best_checkpoints(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", TWO_STAGE)
    plan = json.loads(
        run_cli(tmp_path, "launch", str(spec), "--dry-run", "--format", "json", check=True).stdout
    )
    finetune = plan["sweeps"][1]
    assert finetune["trials"] == 4 and finetune["init_from"] == {"top": 2}  # 2 epochs values × top 2
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    parents = sorted(load_trials(tmp_path, "pretrain"), key=lambda t: -t.value)
    children = load_trials(tmp_path, "finetune")
    assert len(children) == 4 and all(t.state == TrialState.COMPLETE for t in children)
    # every child started after every parent finished
    assert min(c.datetime_start for c in children) >= max(p.datetime_complete for p in parents)
    expected = {
        1: str(Path(parents[0].user_attrs["orchestrate.run_dir"]) / "checkpoint_best.pt"),
        2: str(Path(parents[1].user_attrs["orchestrate.run_dir"]) / "checkpoint_best.pt"),
    }
    for child in children:
        rank = child.params["init_rank"]
        params = child.user_attrs["orchestrate.params"]
        assert params["init_checkpoint"] == expected[rank]
        assert "init_rank" not in params
    assert max(c.value for c in children) > parents[0].value  # fine-tuning the best parent helped


def test_dependent_sweep_without_finished_parent_is_not_started(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", TWO_STAGE)
    proc = run_cli(tmp_path, "launch", str(spec), "--sweep", "finetune", "--plain", check=True)
    assert "not started" in proc.stdout and "pretrain" in proc.stdout


def test_report_of_a_cross_validated_comparison_uses_the_fold_std(tmp_path: Path) -> None:
    """The architecture chart of a `folds:` sweep: bar = a configuration's mean over folds, error bar = its
    std over folds (not the spread over other configurations)."""
    spec = write(
        tmp_path,
        "sweeps.yaml",
        FOLDS.replace(
            "quality: {values: [0.9, 0.2, 0.8]}", "quality: {value: 0.9}\n      backbone: {values: [a, b]}"
        )
        .replace("pruner: {type: threshold, lower: 0.3}", "pruner: {type: none}")
        .replace("sleep: {value: 0.1}", "sleep: {value: 0.01}"),
    )
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    run_cli(tmp_path, "report", "--out", str(tmp_path / "report"), check=True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "error bar: its std over folds" in md
    trials = load_trials(tmp_path, "cv")
    std = trials[0].user_attrs["orchestrate.fold_std"]
    assert std > 0 and f"{std:.4g}" in md  # the bar's error is the trial's own fold std
