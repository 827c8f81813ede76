"""The validated sweep specification (what ``load_sweeps`` returns). Plain dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator.leases import DEFAULT_LEASE_S
from orchestrator.spec.params import ParamSpace

__all__ = [
    "Defaults",
    "HostSpec",
    "MetricSpec",
    "SlurmSpec",
    "PrunerSpec",
    "SweepFile",
    "SweepSpec",
    "PRUNER_TYPES",
    "WANDB_MODES",
]

WANDB_MODES = ("auto", "offline", "online", "disabled")
#: ``pruner: {type: …}`` values; options are the Optuna pruner's own keyword arguments
PRUNER_TYPES = ("none", "median", "percentile", "successive_halving", "hyperband", "threshold")


@dataclass(frozen=True)
class Defaults:
    """What the sweeps of a file share (``defaults:``); a sweep may override project/entity/retries/wandb."""

    project: str | None = None
    entity: str | None = None
    storage: str = "sqlite:///runs/orchestrate.db"
    runs_dir: str = "runs"
    slots: str = "auto"
    wandb: str = "auto"
    retries: int = 1
    data_root: str | None = None
    hosts: tuple[HostSpec, ...] = ()  # remote boxes (``defaults.hosts:``), reached with the system ssh
    slurm: SlurmSpec | None = None  # ``defaults.slurm:``: how trials are submitted with ``slots: slurm``
    lease: float = (
        DEFAULT_LEASE_S  # seconds: a controller whose heartbeat is older is dead to the others (leases.py)
    )


@dataclass(frozen=True)
class HostSpec:
    """One SSH host of ``defaults.hosts:`` (or of the hosts file it names). See orchestrator/hosts.py."""

    name: str
    ssh: str  # destination: user@host (or a Host alias of ~/.ssh/config)
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None  # a known_hosts file; host keys are always verified
    gpus: str | tuple[str, ...] = "auto"  # "auto", "cpu:N", or GPU indices
    per_gpu: int = 1  # trials per GPU
    workdir: str = "~/orchestrate"
    python: str = "python3"  # a command, an interpreter path, or a venv directory
    cost_per_hour: float | None = None
    labels: tuple[str, ...] = ()
    data_roots: tuple[str, ...] = ()  # dataset roots that must exist there (hosts check)
    line: int | None = None


@dataclass(frozen=True)
class SlurmSpec:
    """``slurm:`` (in ``defaults``, or per sweep over the defaults): what each trial asks Slurm for.

    One trial is one Slurm job started with ``srun`` (orchestrator/executors/slurm.py). ``None`` leaves a
    setting to the cluster's defaults. ``gres=None`` asks for no GPU (CPU-only trials)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # Slurm's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    gres: str | None = "gpu:1"  # per trial; None: no GPU
    cpus_per_trial: int | None = None
    mem_per_trial: str | None = None  # Slurm's --mem: 4G, 16000M, 500 (MB)
    max_concurrent: int = 4  # trials queued or running at once (the number of slurm slots)
    srun_flags: tuple[str, ...] = ()  # anything else, passed to srun as written
    line: int | None = None

    @property
    def gpus(self) -> bool:
        """Whether a trial gets GPUs (Slurm then sets CUDA_VISIBLE_DEVICES itself)."""
        return self.gres is not None and any(
            part.split(":")[0] == "gpu" for part in self.gres.split(",") if part
        )


@dataclass(frozen=True)
class MetricSpec:
    """The metric a sweep optimises. ``goal`` is 'minimize' or 'maximize' (W&B's default: minimize)."""

    name: str
    goal: Literal["minimize", "maximize"] = "minimize"
    target: float | None = None

    @property
    def direction(self) -> str:
        """Optuna's study direction."""
        return self.goal

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "goal": self.goal}
        if self.target is not None:
            out["target"] = self.target
        return out


@dataclass(frozen=True)
class PrunerSpec:
    """Early termination.

    ``source='early_terminate'``: W&B's ``{type: hyperband, …}``; ``options`` keeps ``min_iter``, ``max_iter``,
    ``s``, ``eta``, ``strict`` as written, with W&B's defaults filled in (eta=3, strict=True).
    ``source='pruner'``: ours; ``type`` is median|percentile|successive_halving|hyperband and ``options`` are
    the keyword arguments of the matching ``optuna.pruners`` class (see ``orchestrator.pruners.get_pruner``).
    """

    type: str
    options: dict[str, Any] = field(default_factory=dict)
    source: Literal["early_terminate", "pruner"] = "pruner"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "source": self.source, **self.options}


@dataclass(frozen=True)
class SweepSpec:
    """One validated sweep. Exactly one of ``experiment`` / (``program`` and/or ``command``) is usually set;
    a W&B file with neither (run by W&B with ``wandb.agent(function=…)``) loads, with a notice, but cannot
    launch."""

    name: str
    method: Literal["grid", "random", "bayes"]
    metric: MetricSpec | None
    parameters: ParamSpace
    experiment: str | None = None
    program: str | None = None
    command: list[str] | None = None
    pruner: PrunerSpec | None = None
    run_cap: int | None = None
    retries: int = 1
    project: str | None = None
    entity: str | None = None
    description: str | None = None
    file: str | None = None
    line: int | None = None
    wandb: str = "auto"
    data_root: str | None = None
    folds: tuple[int, ...] | None = None  # run each configuration once per fold (value = mean over folds)
    depends_on: str | None = None  # a sweep of the same file that must finish first
    init_from: int | None = None  # start from the parent's best (1) or top-k checkpoints
    key: str | None = field(default=None, compare=False)  # its key path in the file, e.g. "sweeps[2]"
    on_oom: str = "retry"  # a CUDA out-of-memory crash: retry as is, or with half the batch_size
    slurm: SlurmSpec | None = None  # ``slurm:`` of the sweep over ``defaults.slurm`` (used with slots: slurm)
    timeout_s: float | None = None  # a trial running longer is stopped and FAILED (reason "timeout …")
    retry_on_timeout: bool = False  # … and not retried unless this is set

    @property
    def early_terminate(self) -> PrunerSpec | None:
        """Alias of ``pruner`` (the name docs/interfaces.md uses)."""
        return self.pruner

    @property
    def runnable(self) -> bool:
        """Whether orchestrate can start a trial of it (an experiment, a program or a command)."""
        return bool(self.experiment or self.program or self.command)

    def trials(self) -> int | None:
        """Planned trials: the grid size (capped by run_cap), else run_cap, else None (unbounded)."""
        if self.method == "grid":
            size = self.parameters.grid_size()
            return min(size, self.run_cap) if self.run_cap is not None else size
        return self.run_cap

    def describe(self) -> dict[str, Any]:
        """The dry-run plan entry: ``{"name", "method", "trials", "parameters", …}`` (JSON-friendly)."""
        out: dict[str, Any] = {
            "name": self.name,
            "method": self.method,
            "trials": self.trials(),
            "parameters": self.parameters.describe(),
        }
        if self.metric is not None:
            out["metric"] = self.metric.to_dict()
        if self.pruner is not None:
            out["pruner"] = self.pruner.to_dict()
        if self.experiment:
            out["experiment"] = self.experiment
        if self.program:
            out["program"] = self.program
        if self.command:
            out["command"] = list(self.command)
        if self.run_cap is not None:
            out["run_cap"] = self.run_cap
        if self.folds is not None:
            out["folds"] = list(self.folds)
            out["jobs"] = None if out["trials"] is None else out["trials"] * len(self.folds)
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.depends_on is not None:
            out["depends_on"] = self.depends_on
            out["init_from"] = "best" if self.init_from == 1 else {"top": self.init_from}
        return out


@dataclass
class SweepFile:
    """A loaded sweeps file: shared defaults, the sweeps in file order, and one-line notices."""

    path: Path
    defaults: Defaults
    sweeps: list[SweepSpec]
    notices: list[str] = field(default_factory=list)

    def get(self, name: str) -> SweepSpec:
        for sweep in self.sweeps:
            if sweep.name == name:
                return sweep
        raise KeyError(name)

    def describe(self) -> dict[str, Any]:
        """The ``--dry-run --format json`` plan: ``{"sweeps": [...]}``."""
        return {"sweeps": [s.describe() for s in self.sweeps]}
