"""The controller's string constants as enums: a job's state, why a trial is stopped, how a trial ended.

Each is a ``StrEnum`` whose values are the exact strings stored before they were enums (``result.json``'s
``jobs[].state``, ``Job.stopping`` as the executors read it, Optuna's state names): a member compares equal to
its string and JSON writes it as that string, so storage contents and run-directory files do not change.
"""

from __future__ import annotations

from enum import StrEnum


class PartState(StrEnum):
    """One job of a trial (the whole trial, or one of its folds): ``result.json``'s ``jobs[].state``."""

    PENDING = "pending"  # waits for a slot (or went back to the queue: its host was lost)
    RUNNING = "running"
    DONE = "done"  # exited 0
    FAILED = "failed"  # exited non-zero (or was stopped)
    SKIPPED = "skipped"  # never started: its trial was stopped first


class Stop(StrEnum):
    """Why the controller stops a trial (``_Running.stopping``, and ``Job.stopping`` of its jobs)."""

    PRUNED = "pruned"  # the pruner said so
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM of the controller
    NONFINITE = "nonfinite"  # the metric became NaN/inf
    FAILED = "failed"  # one of its jobs exited non-zero: the others are stopped
    PROTOCOL = "protocol"  # a job printed a bad protocol line
    TIMEOUT = "timeout"  # a job ran longer than the sweep's ``timeout:``


class EndState(StrEnum):
    """How a trial ended: the names of Optuna's ``TrialState`` (``result.json``'s ``state``)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


class FollowUp(StrEnum):
    """What a finished trial's point does next (the sweep's counts and queue)."""

    COMPLETE = "complete"  # counted complete, the point is finished
    PRUNED = "pruned"  # counted pruned, the point is finished
    REQUEUE = "requeue"  # the run dir failed, not the trial: the same attempt runs again now
    LEAVE = "leave"  # interrupted: the next launch re-runs it (same attempt)
    RETRY = "retry"  # counted failed, and runs again as the next attempt
    GIVE_UP = "give_up"  # counted failed, no retry left: the point is finished


class QueueKind(StrEnum):
    """The first element of an executor's event tuple (``executors/_base.py``)."""

    EVENT = "event"  # a protocol line
    EXIT = "exit"  # the process ended
