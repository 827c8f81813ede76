"""The controller zygote's preload (orchestrator/front.py): a launch forked from it imports nothing more.

A hot launch is forked from a process that ran ``preload(CONTROLLER_PRELOAD)``; whatever the launch still
imports (or builds, like Optuna's migration scripts) is paid by every launch. Before this list was completed, a
hot launch still imported SQLAlchemy's ORM, the SQLite dialect, alembic's commands, Optuna's schema models,
pydantic (typer's parameter conversion), the leaderboard and the fingerprint check: ≈0.2 s of a quiet core
between the command and its first trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.orchestrator.conftest import CURVE, cli_env

ROOT = Path(__file__).resolve().parents[2]

SWEEP = f"""\
defaults: {{wandb: disabled}}
sweeps:
  - name: hot
    program: {CURVE}
    method: grid
    metric: {{name: score, goal: maximize}}
    early_terminate: {{type: hyperband, min_iter: 1, eta: 2}}
    parameters:
      quality: {{values: [1.0, 0.5]}}
      epochs: {{value: 2}}
"""

# what the zygote does, then what its forked launch does (os._exit, the launch's fast exit, becomes SystemExit)
PROBE = """
import json, os, sys
from orchestrator.front import CONTROLLER_PRELOAD
from orchestrator.zygote.preload import preload
preload(CONTROLLER_PRELOAD)
from alembic.script import ScriptDirectory
built = []
original = ScriptDirectory.from_config
ScriptDirectory.from_config = lambda *a, **k: built.append(1) or original(*a, **k)
before = set(sys.modules)
def _exit(code):
    raise SystemExit(code)
os._exit = _exit
sys.argv = ["orchestrate", "launch", "sweep.yaml", "--plain", "--slots", "cpu:2"]
from orchestrator.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"rc": code, "new": sorted(set(sys.modules) - before), "built": len(built)}), file=sys.stderr)
"""


def test_a_launch_forked_from_the_controller_zygote_imports_and_builds_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    env = cli_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["rc"] == 0, proc.stdout + proc.stderr
    assert "could not preload" not in proc.stderr  # every entry of the list exists (and its call succeeds)
    assert "2 complete" in proc.stdout
    assert result["new"] == []  # each module here would be imported again by every hot launch
    assert result["built"] == 0  # Optuna's migration scripts: read once in the zygote (warm_storage)
