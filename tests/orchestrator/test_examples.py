"""Every protocol file in examples/ (docs/protocols.md) is a valid sweep file: `orchestrate launch FILE
--dry-run` accepts it (exit 0) and plans the grid the study ran, counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.orchestrator.conftest import run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# sweep -> trials (grid points; folds run inside a trial), counted from the files by hand
PLANS = {
    "levi-hassner-adience.yaml": {"lh-adience": 2, "lh-celeba-pretrain": 1, "lh-celeba-to-adience": 1},
    "mobilenetv2-celeba-adience.yaml": {
        "mnv2-celeba-grid": 2 * 2 * 4,
        "mnv2-celeba": 1,
        "mnv2-celeba-to-adience": 4,
    },
    "keras-multi-output-utkface.yaml": {"keras-model-a": 2, "keras-model-b": 1},
    "utkface-coral.yaml": {"utk-multi-output": 1, "utk-coral": 3},
    "utkface-400-models.yaml": {"utk-age-groups": 2},
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(PLANS)
    protocols = (EXAMPLES.parent / "docs" / "protocols.md").read_text()
    assert all(f"examples/{name}" in protocols for name in PLANS)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_example_passes_dry_run(tmp_path: Path, name: str) -> None:
    proc = run_cli(tmp_path, "launch", str(EXAMPLES / name), "--dry-run", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert {s["name"]: s["trials"] for s in plan["sweeps"]} == PLANS[name]
    assert not (tmp_path / "runs").exists()  # a dry run starts nothing
