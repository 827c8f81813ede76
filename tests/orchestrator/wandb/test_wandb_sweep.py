"""W&B sweep files with unmodified W&B scripts, launched through the real CLI (subprocesses, SQLite, wandb
offline): the agent's environment, the wandb.log bridge, W&B's hyperband brackets, run_cap and metric.target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import CURVE, load_trials, run_cli, write

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).resolve().parent / "scripts"
WANDB = Path(sys.executable).with_name("wandb")


def _inspect(run_dir: Path) -> dict:
    """The offline W&B run under a trial's run dir, read back with ``wandb leet inspect``."""
    found = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(found) == 1, f"expected one offline run in {run_dir}: {found}"
    out = subprocess.run(
        [str(WANDB), "leet", "inspect", "--json", str(found[0])], capture_output=True, text=True, check=True
    ).stdout
    run: dict = {}
    history: list[dict] = []
    summary: dict = {}
    exit_code = None
    for line in out.splitlines():
        rec = json.loads(line)
        if rec["type"] == "run":
            run = rec["run"]
        elif rec["type"] == "history":
            history.append(rec["history"]["item"])
        elif rec["type"] == "summary":
            summary.update(rec["summary"].get("update", {}))
        elif rec["type"] == "exit":
            exit_code = rec["exit"].get("exit_code", 0)
    return {"run": run, "history": history, "summary": summary, "exit_code": exit_code}


def test_unmodified_wandb_script_is_pruned_at_wandb_brackets(tmp_path: Path) -> None:
    # one slot, so the grid runs in W&B's order and the thresholds are known:
    # val_acc = q * (1 - 0.5 ** (epoch + 1)); min_iter 2, eta 3 → brackets at the 2nd, 6th, 18th val_acc.
    #   q=1.00 alone → completes 8 epochs
    #   q=0.60 at bracket 2: accs [0.75, 0.45] → threshold index int(2/3)=0 → 0.75 → 0.45 worse → stop after 2
    #   q=0.95 at bracket 2: [0.75, 0.7125, 0.45][1] = 0.7125 → passes; bracket 6: [0.984, 0.935][0] → stop at 6
    #   q=0.30 at bracket 2: [0.75, 0.7125, 0.45, 0.225][int(4/3)=1] = 0.7125 → stop after 2
    sweep = write(
        tmp_path,
        "sweep.yaml",
        f"""\
        program: {SCRIPTS / "train_wandb.py"}
        method: grid
        metric:
          name: val_acc
          goal: maximize
        early_terminate:
          type: hyperband
          min_iter: 2
        parameters:
          quality:
            values: [1.0, 0.6, 0.95, 0.3]
          epochs:
            value: 8
          sleep:
            value: 0.15
        """,
    )
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:1", "--plain", check=True)
    trials = {t.params["quality"]: t for t in load_trials(tmp_path, "sweep")}
    assert sorted(trials) == [0.3, 0.6, 0.95, 1.0]
    expected = {
        1.0: (TrialState.COMPLETE, 8),
        0.6: (TrialState.PRUNED, 2),
        0.95: (TrialState.PRUNED, 6),
        0.3: (TrialState.PRUNED, 2),
    }
    for q, (state, iterations) in expected.items():
        t = trials[q]
        assert t.state == state, (q, t.state)
        # one intermediate value per logged val_acc (train/loss logs are not iterations); steps = the epoch key
        assert sorted(t.intermediate_values) == list(range(iterations)), (q, t.intermediate_values)
    assert trials[1.0].value == pytest.approx(1.0 * (1 - 0.5**8))  # the W&B summary's val_acc

    for q, t in trials.items():
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        wb = _inspect(run_dir)
        run = wb["run"]
        config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
        assert config == {"quality": q, "epochs": 8, "sleep": 0.15}, config
        assert run["display_name"] == f"sweep-{t.number}" and run["run_group"] == "sweep"
        assert run["run_id"] == t.user_attrs["orchestrate.wandb_run"]
        assert run["project"] != "not-this-project"  # under a sweep, W&B ignores the script's project
        assert run["sweep_id"] and len(run["sweep_id"]) == 8
        accs = [h["val_acc"] for h in wb["history"] if "val_acc" in h]
        # the pruned children were really stopped right after the bracket (SIGTERM, run kept by the bridge)
        assert len(accs) == (8 if q == 1.0 else expected[q][1]), (q, accs)
        # pruned: a finished run (exit code 0) with the tag and summary field "pruned", not a crash (143)
        assert wb["exit_code"] == 0, (q, wb["exit_code"])
        assert ("pruned" in run["tags"]) == (q != 1.0) and wb["summary"].get("pruned", False) == (q != 1.0)
        assert run["job_type"] == "train"
    sweep_ids = {
        _inspect(Path(t.user_attrs["orchestrate.run_dir"]))["run"]["sweep_id"] for t in trials.values()
    }
    assert len(sweep_ids) == 1  # one W&B sweep id per sweep


def test_config_only_script_gets_nested_params_from_the_sweep_param_file(tmp_path: Path) -> None:
    sweep = write(
        tmp_path,
        "cfg.yaml",
        f"""\
        program: {SCRIPTS / "config_only.py"}
        command:
          - ${{env}}
          - ${{interpreter}}
          - ${{program}}
        method: grid
        metric: {{name: score, goal: maximize}}
        parameters:
          optim:
            parameters:
              lr: {{values: [0.5]}}
              name: {{value: adam}}
        """,
    )
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:1", "--plain", check=True)
    (t,) = load_trials(tmp_path, "cfg")
    assert t.state == TrialState.COMPLETE
    assert t.value == 123.0  # the script's explicit run.summary["score"], W&B's objective
    assert t.intermediate_values == {0: 6.0, 1: 12.0, 2: 18.0}  # 0.5 * 10 + 1, times step + 1
    run_dir = Path(t.user_attrs["orchestrate.run_dir"])
    (param_file,) = (run_dir / "wandb").glob("sweep-*/config-*.yaml")
    assert param_file.read_text().startswith("wandb_version: 1")
    config = _inspect(run_dir)["run"]["config"]["update"]
    assert config["optim"] == {"lr": 0.5, "name": "adam"}


def test_run_cap_is_exact_on_two_slots_and_across_restarts(tmp_path: Path) -> None:
    sweep = write(
        tmp_path,
        "cap.yaml",
        """\
        program: @CURVE@
        method: random
        metric: {name: score, goal: maximize}
        run_cap: 5
        parameters:
          quality: {min: 0.1, max: 0.5}
          epochs: {value: 3}
          sleep: {value: 0.02}
        """,
    )
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:2", "--plain", check=True)
    trials = load_trials(tmp_path, "cap")
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(list((tmp_path / "runs" / "cap").iterdir())) == 5  # no sixth child was ever started
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:2", "--plain", check=True)
    assert len(load_trials(tmp_path, "cap")) == 5  # the cap holds on resume


def test_metric_target_stops_creating_runs(tmp_path: Path) -> None:
    # final score = q * (1 - 0.5**3) = 0.875 q; target 0.7 is first reached by q=0.9 (the 2nd point)
    sweep = write(
        tmp_path,
        "target.yaml",
        """\
        program: @CURVE@
        method: grid
        metric: {name: score, goal: maximize, target: 0.7}
        parameters:
          quality: {values: [0.2, 0.9, 0.3, 0.95, 0.4]}
          epochs: {value: 3}
          sleep: {value: 0.02}
        """,
    )
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:1", "--plain", check=True)
    trials = load_trials(tmp_path, "target")
    assert [t.params["quality"] for t in trials] == [0.2, 0.9]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    run_cli(tmp_path, "launch", str(sweep), "--slots", "cpu:1", "--plain", check=True)
    assert len(load_trials(tmp_path, "target")) == 2  # reached stays reached on resume
    assert CURVE.exists()
