"""End to end with the built-in experiment: synthetic Adience in the real layout, real training subprocesses,
real SQLite, and real offline W&B runs read back from their files."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import load_trials, run_cli, write
from tests.wandb_files import read_offline_run

pytestmark = pytest.mark.e2e

SWEEP = """
defaults: {slots: "cpu:2", wandb: offline, retries: 0, project: e2e}
sweeps:
  - name: tiny-gender
    experiment: train
    method: grid
    metric: {name: val/acc, goal: maximize}
    parameters:
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 2, base_features: 8, hidden: 16}}
      image_size: {value: 32}
      synthetic_limit: {value: 300}
      synthetic_size: {value: 48}
      epochs: {value: 2}
      lr: {values: [0.003, 0.001, 0.0003]}
"""


def test_experiment_sweep_logs_one_wandb_run_per_trial(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", SWEEP)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    trials = load_trials(tmp_path, "tiny-gender")
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    study = optuna.load_study(
        study_name="tiny-gender", storage=f"sqlite:///{tmp_path / 'runs/orchestrate.db'}"
    )
    sweep_id = study.user_attrs["orchestrate.wandb_sweep_id"]
    assert study.metric_names == ["val/acc"]  # optuna-dashboard labels the objective
    for t in trials:
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        (wandb_run,) = sorted((run_dir / "wandb").glob("offline-run-*"))
        assert list(wandb_run.glob("run-*.wandb")), "the offline run's transaction log exists"
        run = read_offline_run(wandb_run)
        assert run["run"]["run_id"] == t.user_attrs["orchestrate.wandb_run"]
        assert run["run"]["run_group"] == "tiny-gender"
        assert run["run"]["display_name"] == f"tiny-gender-{t.number}"
        assert run["run"]["project"] == "e2e"
        # the sweep's id (kept in the study) and the job type, as W&B groups and filters runs after a sync
        assert run["run"]["sweep_id"] == sweep_id
        assert len(run["run"]["sweep_id"]) == 8 and run["run"]["job_type"] == "train"
        assert run["exit_code"] == 0
        assert run["config"]["lr"] == t.params["lr"]
        epochs = [row for row in run["history"] if "val/acc" in row]
        assert len(epochs) == len(t.intermediate_values) == 2  # one history row per reported epoch
        # training accuracy per epoch: a fraction of the 2-class training labels seen (batches of 64)
        assert all(0 <= row["train/acc"] <= 1 for row in epochs)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["train/acc"] for m in metrics] == [row["train/acc"] for row in epochs]
        assert [row["val/acc"] for row in epochs] == [
            t.intermediate_values[s] for s in sorted(t.intermediate_values)
        ]
        # the study's value is the summary's best validation accuracy, as the W&B summary keeps it
        assert t.value == pytest.approx(max(row["val/acc"] for row in epochs))
        result = json.loads((run_dir / "result.json").read_text())
        assert result["state"] == "COMPLETE" and result["jobs"][0]["wandb_run_id"] == run["run"]["run_id"]
        assert run["summary"]["val/acc"] == pytest.approx(t.value)  # the W&B summary keeps the best
        assert (run_dir / "checkpoint_best.pt").exists() and (run_dir / "config.json").exists()
        confusion = json.loads((run_dir / "confusion.json").read_text())["test/gender"]
        assert confusion["classes"] == ["male", "female"]
        assert sum(map(sum, confusion["matrix"])) > 0
        correct = sum(confusion["matrix"][i][i] for i in range(2)) / sum(map(sum, confusion["matrix"]))
        assert correct == pytest.approx(run["summary"]["test/acc"])
        # the test metrics are user attributes of their own: sortable in optuna-dashboard
        assert t.user_attrs["test/acc"] == pytest.approx(correct)
        assert t.user_attrs["test/loss"] == pytest.approx(run["summary"]["test/loss"])


def test_pruned_experiment_trial_keeps_its_wandb_run(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "sweeps.yaml",
        SWEEP.replace("tiny-gender", "always-pruned")
        .replace("lr: {values: [0.003, 0.001, 0.0003]}", "lr: {value: 0.001}")
        .replace("epochs: {value: 2}", "epochs: {value: 6}")
        .replace("    parameters:", "    pruner: {type: threshold, lower: 1.01}\n    parameters:", 1),
    )
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    (t,) = load_trials(tmp_path, "always-pruned")
    assert t.state == TrialState.PRUNED and max(t.intermediate_values) == 1  # stopped at its first report
    run_dir = Path(t.user_attrs["orchestrate.run_dir"])
    (wandb_run,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    run = read_offline_run(wandb_run)
    epochs = [row for row in run["history"] if "val/acc" in row]
    assert 1 <= len(epochs) < 6  # the run was closed properly by the SIGTERM handler, with its history
    # a pruned run is a finished run (as W&B's own sweeps stop runs), tagged and marked pruned: not a crash
    assert run["exit_code"] == 0
    assert "pruned" in run["run"]["tags"] and run["summary"]["pruned"] is True
    assert run["summary"]["pruned_at_epoch"] == len(epochs)
    assert "stopped_by" not in run["summary"]


TWO_STAGE_CV = """
defaults: {slots: "cpu:2", wandb: offline, retries: 0}
sweeps:
  - name: pretrain
    experiment: train
    method: grid
    metric: {name: val/acc, goal: maximize}
    parameters:
      dataset: {value: celeba}
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 2, base_features: 8, hidden: 16}}
      image_size: {value: 32}
      synthetic_limit: {value: 300}
      synthetic_size: {value: 48}
      epochs: {value: 1}
  - name: finetune
    experiment: train
    method: grid
    depends_on: pretrain
    init_from: best
    folds: [0, 1, 2, 3, 4]
    metric: {name: val/acc, goal: maximize}
    parameters:
      dataset: {value: adience}
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 2, base_features: 8, hidden: 16}}
      image_size: {value: 32}
      synthetic_limit: {value: 300}
      synthetic_size: {value: 48}
      epochs: {value: 1}
      freeze: {value: backbone}
      lr: {value: 0.0003}
"""


def test_celeba_pretrain_then_adience_5_fold_finetune(tmp_path: Path) -> None:
    """The CelebA → Adience recipe end to end: the fine-tune waits for the pretrain sweep, starts every fold
    from its best checkpoint with a frozen backbone, and its value is the mean over the 5 Adience folds."""
    spec = write(tmp_path, "sweeps.yaml", TWO_STAGE_CV)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    (parent,) = load_trials(tmp_path, "pretrain")
    (child,) = load_trials(tmp_path, "finetune")
    assert parent.state == child.state == TrialState.COMPLETE
    assert child.datetime_start >= parent.datetime_complete
    checkpoint = str(Path(parent.user_attrs["orchestrate.run_dir"]) / "checkpoint_best.pt")
    run_dir = Path(child.user_attrs["orchestrate.run_dir"])
    folds = child.user_attrs["orchestrate.fold_values"]
    assert sorted(folds) == ["0", "1", "2", "3", "4"]
    assert child.value == pytest.approx(sum(folds.values()) / 5)
    for f in range(5):
        config = json.loads((run_dir / f"fold{f}" / "config.json").read_text())
        assert config["fold"] == f and config["dataset"] == "adience"
        assert config["pretrained"] == checkpoint and config["freeze"] == "backbone"
        summary = json.loads((run_dir / f"fold{f}" / "metrics.jsonl").read_text().splitlines()[-1])
        assert summary["val/acc"] == pytest.approx(folds[str(f)])
        # its W&B run: a fine-tune's fold, the fold index in its config and tags, in the sweep's group
        (wandb_run,) = (run_dir / f"fold{f}" / "wandb").glob("offline-run-*")
        run = read_offline_run(wandb_run)
        assert run["run"]["job_type"] == "finetune" and run["config"]["fold"] == f
        assert f"fold:{f}" in run["run"]["tags"] and run["run"]["display_name"] == f"finetune-0-fold{f}"
    (wandb_run,) = (Path(parent.user_attrs["orchestrate.run_dir"]) / "wandb").glob("offline-run-*")
    assert read_offline_run(wandb_run)["run"]["job_type"] == "pretrain"
