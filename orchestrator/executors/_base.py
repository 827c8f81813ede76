"""What an executor is: it starts a trial's command on a slot and reports lines and the exit as events.

Executors never touch the Optuna study: they put events on the controller's queue, and the controller (one
thread) decides. Events are tuples ``(kind, job, payload)``:

- ``("event", job, dict)`` — a protocol line (see orchestrator.trial.protocol)
- ``("exit", job, returncode)`` — the process ended (after its stdout was fully read); ``job.lost`` is set
  when the host went away (SSH: connection dropped, exit 255) rather than the trial ending
"""

from __future__ import annotations

import abc
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.slots import Slot
from orchestrator.trial.rundir import RunDir
from orchestrator.trial.spec import TrialSpec


@dataclass
class Job:
    """One running trial process."""

    key: str  # unique per launch, e.g. "hp-grid#12"
    slot: Slot
    run_dir: RunDir
    argv: list[str]
    started: float = field(default_factory=time.time)
    pid: int | None = None
    stopping: str | None = None  # why the controller is stopping it: "pruned", "interrupted", "nonfinite"
    ended: float | None = None
    handle: Any = None  # executor-specific (Popen)
    lost: str | None = None  # set (with the reason) when its host was lost: re-queue it, not a trial failure
    #: a remote job: a checkpoint was copied back to its run dir, of this announced epoch at least
    checkpoint_epoch: int | None = None
    #: what it runs (written to its run dir as trial.json); None for a job built without one (tests, bench)
    spec: TrialSpec | None = None


class Executor(abc.ABC):
    """Starts jobs and stops them; reports through the event queue.

    ``submit`` and ``stop`` are required; the other methods the controller calls are hooks with documented
    defaults (tests/orchestrator/executors/test_base.py checks that the controller calls nothing else)."""

    def __init__(self, events: queue.Queue[tuple[str, Job, Any]]) -> None:
        self.events = events

    @abc.abstractmethod
    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        """Start ``job.argv`` on ``job.slot`` (non-blocking)."""

    @abc.abstractmethod
    def stop(self, job: Job, grace: float = 10.0) -> None:
        """Ask the job to stop (SIGTERM), and kill it (SIGKILL) after ``grace`` seconds."""

    # ----- optional hooks: the defaults do nothing (an executor without hosts, zygotes or a queue) -----
    def warm_up(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:  # noqa: B027 - optional hook
        """Get ready for jobs like ``argv`` (a prefix of one) with ``env`` in ``cwd``, without waiting (optional).

        Default: nothing (every job starts from scratch)."""

    def host_lost(self, name: str) -> None:  # noqa: B027 - optional hook
        """A job of host ``name`` ended with ``job.lost`` set: its slots rest until the host answers again, which
        ``hosts_back`` then says (SSH probes it under back-off; Slurm gives it back at once).

        Default: nothing (a host here is never lost, so nothing rests)."""

    def hosts_back(self) -> list[str]:
        """The lost hosts that answer again since the last call: the controller uses their slots again.

        Default: none."""
        return []

    def cleanup(self, orphans: Sequence[dict[str, Any]]) -> list[str]:
        """Stop the jobs a dead controller left (``[{"host", "run_dir", "pid"}]``, its trials this controller
        takes over), so that a re-run never shares a run directory with them; returns what to say.

        Default: nothing to do (a local orphan dies with its controller's process group), nothing to say."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """The launch is over: release what the executor holds (workers, zygotes, SSH masters, queued jobs).

        Default: nothing held."""
