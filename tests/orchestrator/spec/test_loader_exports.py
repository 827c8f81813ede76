"""``orchestrator.spec.loader`` is split into one module per block; every name it offered before the split is
still importable from it (other modules and tests import ENVVAR, SLURM_KEYS, parse_duration … from there)."""

from __future__ import annotations

import importlib

import pytest

NAMES = (
    "COMMAND_MACROS",
    "DEFAULT_KEYS",
    "ENVVAR",
    "EXPERIMENTS_DIR",
    "FILE_KEYS",
    "HOST_KEYS",
    "HYPERBAND_KEYS",
    "MAX_NAME",
    "METHODS",
    "METRIC_KEYS",
    "OUR_SWEEP_KEYS",
    "PARAM_KEYS",
    "SLURM_KEYS",
    "SPLIT_PARAMS",
    "SWEEP_KEYS",
    "WANDB_ONLY_KEYS",
    "WANDB_SWEEP_KEYS",
    "load_sweeps",
    "optuna_pruner_class",
    "parse_duration",
)


@pytest.mark.parametrize("name", NAMES)
def test_loader_still_offers(name: str) -> None:
    loader = importlib.import_module("orchestrator.spec.loader")
    assert hasattr(loader, name)


def test_loader_all_is_unchanged() -> None:
    from orchestrator.spec import loader

    assert loader.__all__ == ["load_sweeps", "EXPERIMENTS_DIR", "COMMAND_MACROS", "optuna_pruner_class"]
    assert loader.EXPERIMENTS_DIR.name == "experiments" and loader.EXPERIMENTS_DIR.parent.name != "spec"
