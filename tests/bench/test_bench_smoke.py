"""Smoke tests of the benchmarks: each runs at its ``--quick`` size and ends with its JSON result line.

No timing is asserted (the numbers depend on the machine); only that the script runs the real CLI end to
end, that its last line is one JSON object with the expected keys, and the accounting it checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

pytestmark = pytest.mark.e2e


def run_bench(script: str, tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    env = dict(os.environ)
    env.update(
        {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "ORCHESTRATE_CACHE_DIR": str(tmp_path / "cache")}
    )
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--workdir", str(tmp_path / "work"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    return result


def test_utilisation_quick(tmp_path: Path) -> None:
    r = run_bench("utilisation.py", tmp_path)
    assert r["benchmark"] == "utilisation" and r["quick"] is True
    assert {"orchestrate", "xargs", "steady_ratio_vs_xargs", "targets", "met", "load"} <= set(r)
    for runner in ("orchestrate", "xargs"):
        assert {"steady", "whole", "median_gap_s", "accounting", "busy_s", "whole_s"} <= set(r[runner])
        assert r[runner]["accounting"] == {"runs": 8, "duplicated": 0, "missing": 0, "exact": True}
    assert r["orchestrate"]["study"]["complete"] == 8
    assert set(r["targets"]) == {"steady_vs_xargs", "whole", "exact_accounting"}
    assert r["targets"]["exact_accounting"]["met"] is True


def test_vs_alternatives_quick(tmp_path: Path) -> None:
    r = run_bench("vs_alternatives.py", tmp_path)
    assert r["benchmark"] == "vs_alternatives"
    assert {"summary", "runners", "targets", "met"} <= set(r)
    assert set(r["runners"]) == {
        "orchestrate",
        "optuna_threads",
        "optuna_threads_sqlite",
        "optuna_processes",
        "optuna_processes_journal",
        "ray_tune",
    }
    for name in (
        "orchestrate",
        "optuna_threads",
        "optuna_threads_sqlite",
        "optuna_processes",
        "optuna_processes_journal",
    ):
        assert {"whole_s", "steady", "whole", "median_gap_s", "accounting"} <= set(r["runners"][name])
        assert r["runners"][name]["accounting"]["runs"] >= 1
    assert r["runners"]["orchestrate"]["accounting"]["exact"] is True
    assert "status" in r["runners"]["ray_tune"]  # "not installed" unless ray is importable
    assert {"as_fast_as_optuna_threads", "as_fast_as_optuna_processes", "exact_accounting"} <= set(
        r["targets"]
    )


def test_pruning_quick(tmp_path: Path) -> None:
    r = run_bench("pruning.py", tmp_path)
    assert r["benchmark"] == "pruning"
    assert {"pruners", "exhaustive_best", "exhaustive_best_configs", "met", "met_by"} <= set(r)
    assert set(r["pruners"]) == {"none", "median", "wandb_hyperband"}
    none = r["pruners"]["none"]
    assert none["per_order"][0]["epochs"] == 6 * 3  # every trial ran to the end
    assert none["per_order"][0]["pruned"] == 0 and none["per_order"][0]["failed"] == 0
    for res in r["pruners"].values():
        assert {
            "epochs_ratio",
            "wall_ratio",
            "steady_ratio",
            "best_within_1_point",
            "exhaustive_best_survived",
        } <= set(res)
        assert {"epochs_ratio<=0.33", "wall_ratio<=0.4", "best_within_1_point"} == set(res["targets"])
        assert res["per_order"][0]["failed"] == 0
    assert 0 < r["exhaustive_best"] <= 100  # val_acc in percent, real data
