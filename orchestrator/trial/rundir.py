"""One class owns every path of a trial's run directory (``runs/<sweep>/<trial number>/``).

Both sides use it: the controller creates the directory and writes ``trial.json``; the child (an experiment,
run as ``python -m experiments.train RUN_DIR``) reads ``trial.json`` and writes checkpoints there. Results are
written atomically (temp file + rename), so a reader never sees half a file and a crash never loses a finished
result. No heavy imports here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.trial.spec import TrialSpec

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# the checkout: experiments/, backbones/ and datasets/ are run from here, not installed as packages
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def with_project_on_path() -> None:
    """Make ``experiments``/``datasets``/``backbones`` importable in the controller (children run from the root)."""
    root = str(PROJECT_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def safe_name(name: str) -> str:
    """A sweep name made safe as a folder name (``a/b c`` → ``a_b_c``)."""
    return _SAFE.sub("_", name).strip("._") or "sweep"


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Write via a temp file and rename: readers never see half a file. ``durable`` also fsyncs (results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", durable)


#: what the controller writes into a run directory (the rest is the trial's own: checkpoints, its W&B run …)
CONTROLLER_FILES = frozenset(
    {"trial.json", "stdout.log", "stderr.log", "metrics.jsonl", "result.json", "remote.pid", "params.json"}
)


class RunDir:
    """The paths of one trial's run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def for_trial(cls, runs_dir: str | os.PathLike[str], sweep: str, number: int) -> RunDir:
        return cls(Path(runs_dir) / safe_name(sweep) / f"{number:05d}")

    # what to run / what was resolved
    @property
    def trial_json(self) -> Path:
        return self.path / "trial.json"

    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    # what the child produced
    @property
    def stdout_log(self) -> Path:
        return self.path / "stdout.log"

    @property
    def stderr_log(self) -> Path:
        return self.path / "stderr.log"

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_last(self) -> Path:
        return self.path / "checkpoint_last.pt"

    @property
    def checkpoint_best(self) -> Path:
        return self.path / "checkpoint_best.pt"

    @property
    def result_json(self) -> Path:
        return self.path / "result.json"

    @property
    def stop_json(self) -> Path:
        """Why the controller stopped the trial (protocol.STOP_FILE), written just before it sends SIGTERM."""
        return self.path / "stop.json"

    @property
    def wandb_dir(self) -> Path:
        """Parent of W&B's own ``wandb/`` folder (W&B writes ``<WANDB_DIR>/wandb/offline-run-…``)."""
        return self.path

    @property
    def args_json(self) -> Path:
        """The parameters as JSON, for ``${args_json_file}`` and ``WANDB_SWEEP_PARAM_PATH``."""
        return self.path / "params.json"

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def read_trial(self) -> TrialSpec:
        """``trial.json`` (OSError / ValueError: unreadable; TrialSpecError: not a trial spec)."""
        return TrialSpec.read(self.trial_json)

    def write_trial(self, spec: TrialSpec) -> None:
        # no fsync: a trial.json lost in a crash only means the trial is run again (it is on the hot path
        # between one trial ending and the next starting)
        atomic_write_text(self.trial_json, spec.to_json(), durable=False)

    def write_result(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.result_json, data)

    def read_result(self) -> dict[str, Any] | None:
        try:
            with open(self.result_json, encoding="utf-8") as fh:
                data: dict[str, Any] = json.load(fh)
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def carry_over(self, old: RunDir) -> bool:
        """Move the trial's own files (checkpoints, W&B run, …) from the run directory of an earlier trial of the
        same parameters that was stopped midway into this one, so that this trial resumes from its
        ``checkpoint_last.pt`` and continues its W&B run; False (nothing moved) when it has no checkpoint.

        Moved, not copied: the earlier trial's W&B run now lives on here only (``orchestrate sync`` must not
        upload it twice), and a checkpoint of several GB is not duplicated."""
        if not old.checkpoint_last.is_file() or old.path.resolve() == self.path.resolve():
            return False
        self.create()
        for item in sorted(old.path.iterdir(), key=lambda p: p.name == self.checkpoint_last.name):
            if item.name in CONTROLLER_FILES or item.name.endswith(".tmp") or item.name.startswith("."):
                continue
            if (self.path / item.name).is_dir() and not (self.path / item.name).is_symlink():
                shutil.rmtree(self.path / item.name)
            # the checkpoint goes last: its presence means the move is complete
            shutil.move(str(item), str(self.path / item.name))
        return True

    def wandb_runs(self) -> list[Path]:
        """The W&B run folders (``offline-run-*`` or ``run-*``) written under this run directory."""
        root = self.path / "wandb"
        if not root.is_dir():
            return []
        return sorted(
            p for p in root.iterdir() if p.is_dir() and (p.name.startswith(("offline-run-", "run-")))
        )

    def tail(self, which: str = "stderr", lines: int = 20) -> str:
        """The last lines of stdout.log or stderr.log (what a FAIL message carries)."""
        path = self.stderr_log if which == "stderr" else self.stdout_log
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                data = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(data.splitlines()[-lines:])
