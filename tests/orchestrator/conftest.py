"""Helpers for the controller tests: write sweep files, run the real CLI in a subprocess, read the study."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CURVE = ROOT / "tests" / "orchestrator" / "programs" / "curve.py"


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1",
            "ORCHESTRATE_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.pop("WANDB_API_KEY", None)
    return env


def run_cli(
    tmp_path: Path, *args: str, check: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_launch(tmp_path: Path, spec: Path) -> subprocess.Popen[str]:
    """``orchestrate launch SPEC --plain`` started in ``tmp_path``, its stdout and stderr on pipes (for tests that
    act while it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("@CURVE@", str(CURVE)))
    return path


def load_trials(tmp_path: Path, sweep: str, db: str = "runs/orchestrate.db") -> list:
    import optuna

    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{tmp_path / db}")
    return study.get_trials(deepcopy=False)


@pytest.fixture
def cli(tmp_path: Path):
    def _run(*args: str, **kw):
        return run_cli(tmp_path, *args, **kw)

    return _run
