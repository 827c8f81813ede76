"""Executors: where a trial's process runs. ``get_executor(name)`` like Optuna's ``get_storage``."""

from __future__ import annotations

import queue
from typing import Any

from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.trial.errors import UsageError

__all__ = ["Executor", "Job", "LocalExecutor", "get_executor"]


def get_executor(
    name: str,
    events: queue.Queue[tuple[str, Job, Any]],
    hosts: Any = (),
    warm: bool = False,
    slurm: Any = None,
) -> Executor:
    """``local``; ``ssh`` (remote hosts only) or ``routed`` (local slots here, remote ones over ssh); ``slurm``
    (one Slurm job per trial; ``slurm``: ``{sweep name: SlurmSpec}``, the launch's default under ``""``).

    ``warm``: local trials of ``python -m module`` commands fork from a pre-imported worker per slot (warm.py),
    with ``routed`` too; remote ones from a zygote daemon per host (orchestrator/remote.py).
    """
    if name == "local" and not hosts:
        if warm:
            from orchestrator.executors.warm import WarmExecutor

            return WarmExecutor(events)
        return LocalExecutor(events)
    if name == "slurm":  # no warm start: each trial is a new job, on whichever node the queue gives
        from orchestrator.executors.slurm import SlurmExecutor

        specs = dict(slurm or {})
        return SlurmExecutor(events, specs, specs.get(""))
    if name in ("local", "routed", "ssh"):
        from orchestrator.executors.routing import RoutingExecutor
        from orchestrator.executors.ssh import SSHExecutor

        if name == "ssh":
            return SSHExecutor(events, hosts, warm=warm)
        return RoutingExecutor(events, hosts, warm=warm)
    raise UsageError(f"unknown executor {name!r}", hint="use 'local', 'ssh', 'routed' or 'slurm'")
