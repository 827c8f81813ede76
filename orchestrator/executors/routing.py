"""The routed executor: local slots run here (a LocalExecutor, or a WarmExecutor with ``--workers warm``),
remote ones (``slot.host != "local"``) over ssh (orchestrator/executors/ssh.py)."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.executors.ssh import SSHExecutor
from orchestrator.spec.model import HostSpec


class RoutingExecutor(Executor):
    """Local slots to a LocalExecutor, remote ones (``slot.host != "local"``) to an SSHExecutor."""

    def __init__(
        self, events: queue.Queue[tuple[str, Job, Any]], hosts: Sequence[HostSpec], warm: bool = False
    ) -> None:
        super().__init__(events)
        self.local: Executor = LocalExecutor(events)
        if warm:
            from orchestrator.executors.warm import WarmExecutor

            self.local = WarmExecutor(events)
        self.remote = SSHExecutor(events, hosts, warm=warm)

    def warm_up(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.local.warm_up(argv, env, cwd)

    def _for(self, job: Job) -> Executor:
        return self.local if job.slot.host == "local" else self.remote

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        self._for(job).submit(job, env, cwd)

    def stop(self, job: Job, grace: float = 10.0) -> None:
        self._for(job).stop(job, grace)

    def host_lost(self, name: str) -> None:
        self.remote.host_lost(name)

    def hosts_back(self) -> list[str]:
        return self.remote.hosts_back()

    def cleanup(self, orphans: Sequence[dict[str, Any]]) -> list[str]:
        return self.remote.cleanup(orphans)

    def close(self) -> None:
        self.remote.close()
        self.local.close()
