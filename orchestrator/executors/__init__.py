"""Executors: where a trial's process runs. ``get_executor(name)`` like Optuna's ``get_storage``."""

from __future__ import annotations

import queue
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor

__all__ = ["Executor", "Job", "LocalExecutor", "get_executor"]


def get_executor(name: str, events: queue.Queue[tuple[str, Job, Any]]) -> Executor:
    if name == "local":
        return LocalExecutor(events)
    raise UsageError(f"unknown executor {name!r}", hint="use 'local'")
