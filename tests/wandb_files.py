"""Read an offline W&B run back from its real files (``run-<id>.wandb``), with W&B's own reader.

``wandb leet inspect --json RUN_DIR`` prints every record of the transaction log as one JSON object per line
(ENVIRONMENT.md); nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

WANDB = [sys.executable, "-m", "wandb"]


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """``{"run": {...}, "config": {...}, "history": [rows], "summary": {...}, "exit_code": N}`` of one offline run
    folder (``run``: the last run record, tags and all; ``exit_code``: None when the run was never finished)."""
    out = subprocess.run(
        [*WANDB, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    run: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    exit_code: int | None = None
    for line in out.splitlines():
        rec = json.loads(line)
        if rec.get("type") == "run":
            run = rec["run"]
        elif rec.get("type") == "history":
            history.append(rec["history"]["item"])
        elif rec.get("type") == "exit":
            exit_code = int(rec["exit"].get("exit_code", 0))
    summary = json.loads(
        subprocess.run(
            [*WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    return {
        "run": run,
        "config": summary.get("config", {}),
        "summary": summary.get("summary", {}),
        "history": history,
        "exit_code": exit_code,
    }
