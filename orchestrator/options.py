"""What a launch is asked to do (``LaunchOptions``) and what it did (``Outcome``)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import storage as st
from orchestrator.leases import DEFAULT_LEASE_S
from orchestrator.slots import Slot


@dataclass
class LaunchOptions:
    storage: str = st.DEFAULT_STORAGE
    runs_dir: Path = Path("runs")
    slots: list[Slot] = field(default_factory=list)
    max_trials: int | None = None
    wandb_mode: str = "offline"
    grace: float = 10.0
    cache_dir: Path | None = None
    executor: str = "local"
    workers: str = "warm"  # warm: fork trials from a pre-imported worker per slot; fresh: a new process each
    hosts: tuple[Any, ...] = ()  # HostSpec of the remote slots (orchestrator/hosts.py)
    # executor "slurm": sweep name → SlurmSpec ("" the defaults')
    slurm: dict[str, Any] = field(default_factory=dict)
    lease_s: float = DEFAULT_LEASE_S  # a controller silent for longer is dead to the others (leases.py)
    new: bool = (
        False  # a sweep changed since its study was made gets a fresh study (orchestrator/fingerprint.py)
    )


#: what stops a command, and a launch cleanly (its trials stopped and marked), exit 128 + the signal: Ctrl-C,
#: SIGTERM, and SIGHUP (the terminal closed: an SSH session dropped)
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@dataclass
class Outcome:
    """What a finished launch did, per sweep."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted: bool = False
    signal: int = 0  # the signal that interrupted it (one of STOP_SIGNALS): the exit code is 128 + it
    wall_s: float = 0.0
    busy_s: float = 0.0  # sum of trial durations
    slots: int = 0
    unrecorded: int = 0  # finished results the storage did not take before an interrupted launch ended
    # trials that ended FAILED with no retry left (or bad input, exit 2): {"sweep", "trial", "reason", "line"}
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def utilisation(self) -> float:
        return self.busy_s / (self.slots * self.wall_s) if self.wall_s > 0 and self.slots else 0.0
