"""build_command: W&B's macros and the W&B agent's argument formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestrator.command import build_command, format_args
from orchestrator.spec import load_sweeps
from orchestrator.trial.errors import SpecError

FILES = Path(__file__).resolve().parent / "files"
CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "wandb_sweeps"  # tests/fixtures (see its README)
PARAMS = {
    "lr": 0.001,
    "epochs": 3.0,
    "amp": True,
    "ema": False,
    "net": [32, 32],
    "model": {"depth": 2},
    "x": None,
}


def test_format_args_like_the_agent() -> None:
    f = format_args(PARAMS)
    assert f["args"] == [
        "--amp=True",
        "--ema=False",
        "--epochs=3",
        "--lr=0.001",
        "--model={'depth': 2}",
        "--net=[32, 32]",
        "--x=None",
    ]
    assert f["args_no_hyphens"][0] == "amp=True"
    assert f["args_no_boolean_flags"][:2] == ["--amp", "--epochs=3"]
    assert f["args_no_equals"][:4] == ["--amp", "True", "--ema", "False"]
    assert json.loads(f["args_json"][0]) == {**PARAMS, "epochs": 3}


def test_default_command_and_program_root(tmp_path: Path) -> None:
    sweep = load_sweeps(CORPUS / "01_HobbitLong_SupContrast_sweep.yaml").sweeps[0]
    argv = build_command(
        sweep, {"b": 1, "a": 0.5}, program_path_root=tmp_path, args_json_file=tmp_path / "a.json"
    )
    assert argv[:3] == ["/usr/bin/env", sys.executable, str(tmp_path / sweep.program)]  # type: ignore[operator]
    assert argv[3:] == ["--a=0.5", "--b=1"]


def test_real_commands(tmp_path: Path) -> None:
    s29 = load_sweeps(CORPUS / "29_wandb_examples_wandb_sweep.yaml").sweeps[0]
    argv = build_command(s29, {"k": 2}, program_path_root=".", args_json_file=tmp_path / "a.json")
    assert argv[-1] == "k=2" and argv[0] == "/usr/bin/env"
    s24 = load_sweeps(CORPUS / "24_Awannaphasch2016_COVID19TrendPrediction_sweep.yaml").sweeps[0]
    argv = build_command(s24, {"k": 2}, program_path_root=".", args_json_file=tmp_path / "a.json")
    assert "14" in argv and "--save_wandb" in argv and "--k=2" not in argv  # no args macro
    s13 = load_sweeps(CORPUS / "13_OpenBioML_bio-chem-lm_sweep.yaml").sweeps[0]
    argv = build_command(
        s13, {"f": False, "t": True}, program_path_root=".", args_json_file=tmp_path / "a.json"
    )
    assert argv[:2] == ["accelerate", "launch"] and argv[-1] == "--t" and "--f" not in " ".join(argv)


def test_json_file_and_envvar(tmp_path: Path) -> None:
    sweep = load_sweeps(FILES / "ours.yaml", experiments_dir=FILES / "experiments").sweeps[1]
    target = tmp_path / "run" / "args.json"
    argv = build_command(
        sweep, PARAMS, program_path_root=tmp_path, args_json_file=target, environ={"ORCH_TEST_VAR": "hi"}
    )
    assert argv[:4] == ["bash", "-c", "echo hi", str(target)]
    assert json.loads(target.read_text()) == {**PARAMS, "epochs": 3}
    with pytest.raises(SpecError, match="ORCH_TEST_VAR"):
        build_command(sweep, PARAMS, program_path_root=tmp_path, args_json_file=target, environ={})


def test_experiment_and_unrunnable(tmp_path: Path) -> None:
    sweep = load_sweeps(FILES / "ours.yaml", experiments_dir=FILES / "experiments").sweeps[0]
    argv = build_command(sweep, {}, program_path_root=".", args_json_file="x.json", run_dir=tmp_path)
    assert argv == [sys.executable, "-m", "experiments.train", str(tmp_path)]
    s21 = load_sweeps(CORPUS / "21_0Miquel_Pytorch-training-toolkit_sweep_classification.yaml").sweeps[0]
    with pytest.raises(SpecError, match="nothing to run"):
        build_command(s21, {}, program_path_root=".", args_json_file="x.json")
