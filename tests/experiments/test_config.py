"""experiments.config: defaults, flat/nested params, type and key errors (SpecError with key and hint)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments.config import TrainConfig, default_goal, metric_names, reported_metrics, resolve, validate
from orchestrator.trial.errors import SpecError


def test_defaults_resolve() -> None:
    cfg = validate("train", {})
    assert cfg == {**TrainConfig().__dict__}
    assert cfg["task"] == "gender" and cfg["optimizer"] == "adam" and cfg["backbone"] == "basic_cnn"


def test_params_override_and_convert() -> None:
    cfg = validate(
        "train", {"lr": 1, "batch_size": 16.0, "backbone_args": {"neurons": 512}, "pretrained": "/w.pth"}
    )
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["batch_size"] == 16 and isinstance(cfg["batch_size"], int)
    assert cfg["backbone_args"] == {"neurons": 512}
    assert cfg["pretrained"] == "/w.pth"
    assert validate("train", {"lr": "1e-3"})["lr"] == 1e-3  # YAML 1.1 reads 1e-3 as a string


def test_nested_groups_and_dotted_names() -> None:
    cfg = validate("train", {"model": {"backbone": "levi_hassner"}, "optim.lr": 0.01})
    assert cfg["backbone"] == "levi_hassner" and cfg["lr"] == 0.01


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(SpecError) as e:
        validate("train", {"learning_rate": 0.1, "lr": 0.1}, file="sweeps.yaml", line=7)
    assert e.value.key == "learning_rate"
    with pytest.raises(SpecError) as e:
        validate("train", {"batchsize": 8})
    assert e.value.key == "batchsize" and "batch_size" in (e.value.hint or "")
    assert "sweeps.yaml" not in str(e.value)


def test_file_and_line_in_message() -> None:
    with pytest.raises(SpecError) as e:
        validate("train", {"epochz": 3}, file="sweeps.yaml", line=7)
    assert str(e.value).startswith("sweeps.yaml:7: epochz:") and "epochs" in (e.value.hint or "")


@pytest.mark.parametrize(
    "params, key",
    [
        ({"lr": "fast"}, "lr"),
        ({"batch_size": 8.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"flip": 1}, "flip"),
        ({"age_bins": [20, "x"]}, "age_bins"),
        ({"loss_weights": {"gender": "a"}}, "loss_weights"),
        ({"optimizer": "adamm"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"task": "age_groups"}, "task"),
        ({"lr": -1.0}, "lr"),
        ({"dropout": 1.5}, "dropout"),
        ({"task": "multitask"}, "tasks"),
        ({"task": "multitask", "tasks": ["gender", "agegroup"]}, "tasks"),
        ({"task": "multitask", "tasks": ["age_group", "coral"]}, "tasks"),
        ({"tasks": ["gender", "age"]}, "tasks"),
        ({"loss_weights": {"age_group": 1.0}}, "loss_weights"),
        ({"schedule": "multistep"}, "milestones"),
        ({"nesterov": True, "optimizer": "adam"}, "nesterov"),
        ({"freeze": "layer3"}, "freeze"),
        ({"swa_start": 10, "epochs": 5}, "swa_start"),
        ({"age_bins": [40, 20]}, "age_bins"),
        ({"dataset": "celeba", "task": "age_group"}, "task"),
        ({"dataset": "adience", "task": "ethnicity"}, "task"),
        ({"task": "age", "weighted_sampler": True}, "weighted_sampler"),
        ({"fold": 5}, "fold"),
    ],
)
def test_bad_values(params: dict, key: str) -> None:
    with pytest.raises(SpecError) as e:
        resolve(params)
    assert e.value.key == key, str(e.value)


def test_choice_error_has_hint() -> None:
    with pytest.raises(SpecError) as e:
        validate("train", {"optimizer": "adamm"})
    assert "adam" in (e.value.hint or "")


def test_multitask_ok() -> None:
    cfg = validate(
        "train",
        {
            "task": "multitask",
            "tasks": ["gender", "age_group"],
            "loss_weights": {"age_group": 1, "gender": 100},
        },
    )
    assert cfg["loss_weights"] == {"age_group": 1.0, "gender": 100.0}


def test_unknown_experiment() -> None:
    with pytest.raises(SpecError) as e:
        validate("trian", {})
    assert e.value.key == "experiment" and "train" in (e.value.hint or "")


def test_config_imports_no_torch() -> None:
    code = "import sys, experiments, experiments.config, experiments.check; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metric_names_and_goals() -> None:
    assert metric_names(resolve({"task": "age_group"})) == [
        "val/loss",
        "val/acc",
        "val/f1",
        "val/one_off",
        "train/loss",
        "train/acc",
        "lr",
    ]
    assert metric_names(resolve({"task": "age"}))[:2] == ["val/loss", "val/mae"]
    multi = reported_metrics("train", {"task": "multitask", "tasks": ["gender", "age"]})
    assert multi == [
        "val/loss",
        "val/gender_acc",
        "val/gender_f1",
        "val/age_mae",
        "val/acc",
        "val/mae",
        "train/loss",
        "train/gender_acc",
        "train/acc",
        "lr",
    ]
    assert default_goal("val/mae") == "minimize" and default_goal("val/loss") == "minimize"
    assert default_goal("val/acc") == "maximize"
