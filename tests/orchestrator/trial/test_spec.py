"""TrialSpec, the typed trial.json: the controller's file byte for byte, strict reading, path mapping; and a bad
trial.json fails the built-in experiment with exit code 2 and one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.trial.errors import UsageError
from orchestrator.trial.rundir import RunDir, atomic_write_json
from orchestrator.trial.spec import TrialMetric, TrialSpec, TrialSpecError

ROOT = Path(__file__).resolve().parents[3]

#: what scheduler._start_part wrote before TrialSpec (the same keys, in its order)
WRITTEN = {
    "sweep": "hp-grid",
    "trial": 42,
    "attempt": 1,
    "fold": None,
    "experiment": "train",
    "params": {"lr": 0.01, "model": {"backbone": "levi_hassner", "dropout": 0.5}, "data_root": "/data/x"},
    "metric": {"name": "val/acc", "goal": "maximize"},
    "project": "faces",
    "data_root": "/data",
    "seed": 42,
    "slot": "gpu0",
}


def test_to_json_is_the_file_the_controller_always_wrote(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "before.json", WRITTEN, durable=False)  # RunDir.write_trial's old body
    spec = TrialSpec.from_dict(WRITTEN)
    assert spec.to_json() == (tmp_path / "before.json").read_text(encoding="utf-8")
    rd = RunDir(tmp_path / "run").create()
    rd.write_trial(spec)
    assert rd.trial_json.read_bytes() == (tmp_path / "before.json").read_bytes()
    assert rd.read_trial() == spec
    assert list(spec.to_dict()) == list(WRITTEN)  # the writer's key order


def test_params_are_canonical_json_with_sorted_keys() -> None:
    spec = TrialSpec(sweep="s", trial=1, attempt=1, params={"z": 1, "a": {"y": (1, 2), "b": Path("/p")}})
    assert spec.params == {"a": {"b": "/p", "y": [1, 2]}, "z": 1}
    assert list(spec.params) == ["a", "z"] and list(spec.params["a"]) == ["b", "y"]
    assert TrialSpec.from_json(spec.to_json()) == spec


def test_a_hand_written_trial_json_needs_only_sweep_trial_attempt_and_params() -> None:
    spec = TrialSpec.from_dict({"sweep": "t", "trial": 1, "attempt": 1, "params": {}})
    assert (spec.seed, spec.fold, spec.metric, spec.slot, spec.experiment) == (42, None, None, None, None)
    assert TrialSpec.from_dict({**WRITTEN, "metric": {"name": "val/mae"}}).metric == TrialMetric(
        "val/mae", None
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key 'extra'"),
        ({"seed": "7"}, "seed: expected an integer, got a string '7'"),
        ({"seed": 7.0}, "seed: expected an integer, got a number 7.0"),
        ({"seed": True}, "seed: expected an integer, got a boolean True"),
        ({"seed": None}, "seed: expected an integer, got null None"),
        ({"trial": "1"}, "trial: expected an integer"),
        ({"params": None}, "params: expected an object, got null"),
        ({"params": [1]}, "params: expected an object, got an array"),
        ({"fold": "0"}, "fold: expected an integer or null"),
        ({"data_root": 3}, "data_root: expected a string or null"),
        ({"metric": {"name": "val/acc", "direction": "max"}}, "metric: unknown key 'direction'"),
        ({"metric": {"name": 1}}, "metric.name: expected a string or null"),
        ({"metric": "val/acc"}, "metric: expected an object or null"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TrialSpecError) as err:
        TrialSpec.from_dict({**WRITTEN, **change}, "run/trial.json")
    assert err.value.render().startswith(f"run/trial.json: {message}")
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2
    assert "\n" not in err.value.render()


def test_missing_keys_and_non_objects_are_refused() -> None:
    for key in ("sweep", "trial", "attempt", "params"):
        with pytest.raises(TrialSpecError, match=f"missing key '{key}'"):
            TrialSpec.from_dict({k: v for k, v in WRITTEN.items() if k != key})
    with pytest.raises(TrialSpecError, match="expected a JSON object, got an array"):
        TrialSpec.from_json("[]")
    with pytest.raises(ValueError):
        TrialSpec.from_json("{not json")


def test_map_paths_names_each_field_and_leaves_the_original_alone() -> None:
    spec = TrialSpec.from_dict({**WRITTEN, "params": {**WRITTEN["params"], "files": ["/data/a", 3]}})
    seen: list[tuple[str, str]] = []

    def fn(field: str, value: str) -> str:
        seen.append((field, value))
        return value.replace("/data", "@@W@@/d")

    out = spec.map_paths(fn)
    assert out.data_root == "@@W@@/d" and out.params["data_root"] == "@@W@@/d/x"
    assert out.params["files"] == ["@@W@@/d/a", 3] and out.params["lr"] == 0.01
    assert spec.data_root == "/data" and spec.params["data_root"] == "/data/x"
    assert sorted(f for f, _ in seen) == [
        "data_root",
        "params.data_root",
        "params.files.0",
        "params.model.backbone",
    ]
    assert (out.sweep, out.project, out.slot) == (spec.sweep, spec.project, spec.slot)  # no paths there


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
opt_text = st.none() | st.text(max_size=10)
specs = st.builds(
    TrialSpec,
    sweep=st.text(max_size=10),
    trial=st.integers(0, 10**6),
    attempt=st.integers(1, 10),
    params=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    fold=st.none() | st.integers(0, 20),
    experiment=opt_text,
    metric=st.none() | st.builds(TrialMetric, name=opt_text, goal=opt_text),
    project=opt_text,
    data_root=opt_text,
    seed=st.integers(-(2**62), 2**62),
    slot=opt_text,
)


@settings(max_examples=200, deadline=None)
@given(specs)
def test_round_trip(spec: TrialSpec) -> None:
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    text = spec.to_json()
    again = TrialSpec.from_json(text)
    assert again == spec and again.to_json() == text
    assert spec.map_paths(lambda _f, v: v) == spec


# ----- the built-in experiment refuses a bad trial.json with exit code 2 and one line -----
def _run_train(tmp_path: Path, trial: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    rd = RunDir(tmp_path / "run").create()
    rd.trial_json.write_text(json.dumps(trial), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", str(rd.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


GOOD = {
    "sweep": "t",
    "trial": 1,
    "attempt": 1,
    "experiment": "train",
    "params": {"epochs": 1},
    "metric": {"name": "val/acc", "goal": "maximize"},
    "project": None,
    "data_root": None,
    "seed": 3,
}


@pytest.mark.parametrize(
    "trial, message",
    [
        ({**GOOD, "learning_rate": 0.1}, "unknown key 'learning_rate'"),
        ({**GOOD, "seed": "3"}, "seed: expected an integer, got a string '3'"),
        ({k: v for k, v in GOOD.items() if k != "params"}, "missing key 'params'"),
    ],
)
def test_a_bad_trial_json_fails_the_experiment_with_exit_2(
    tmp_path: Path, trial: dict[str, Any], message: str
) -> None:
    p = _run_train(tmp_path, trial)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"error: {tmp_path / 'run' / 'trial.json'}: {message}")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "config.json").exists()  # refused before anything was resolved


def test_an_unreadable_trial_json_still_says_cannot_read(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run").create()
    rd.trial_json.write_text("{", encoding="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "experiments.train", str(rd.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and p.stderr.startswith(f"error: cannot read {rd.trial_json}: ")
