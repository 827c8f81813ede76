"""How a finished trial ended, decided without I/O: ``decide(TrialEnd) -> Decision``, then ``follow_up``.

The controller gathers what its jobs did into a ``TrialEnd`` (``Controller._trial_end``: the parts' exit codes,
values and summaries, why it was stopped, and — for a failure — the culprit job's stderr tail and whether its
run directory could be written), ``decide`` says the Optuna state, the value, the failure reason and the
attributes to store, and ``follow_up`` what the point does next (counted, retried, re-queued, left for the next
launch). ``record.py`` writes the decision down.
"""

from __future__ import annotations

import math
import re
import signal
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import storage as st
from orchestrator.faults import DISK_TEXT
from orchestrator.states import EndState, FollowUp, PartState, Stop
from orchestrator.trial import protocol

BAD_INPUT_RC = 2  # a child that exits 2 rejected its input (the house convention): retrying cannot help
OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")
OOM_PREFIX = "CUDA out of memory"
INTERRUPTED_REASON = "interrupted (Ctrl-C): will be re-run by the next launch"


@dataclass(frozen=True)
class PartEnd:
    """What one job of the trial (the whole trial, or one fold) did."""

    fold: int | None
    state: str  # a PartState
    rc: int | None = None
    steps: int = 0
    duration: float = 0.0
    ready_s: float | None = None
    summary: Mapping[str, Any] | None = None
    last_value: float | None = None
    values: Mapping[int, float] = field(default_factory=dict)  # step → the sweep metric


@dataclass(frozen=True)
class TrialEnd:
    """Everything ``decide`` looks at. The failure details (``stderr`` …) are gathered only for the culprit
    job, and only when ``culprit`` names one."""

    parts: tuple[PartEnd, ...]
    duration: float  # wall time of the trial
    stopping: str | None = None  # a Stop: why the controller stopped it (None: it ended by itself)
    why: str | None = None  # the reason given with Stop.PROTOCOL / Stop.TIMEOUT
    failed_part: int | None = None  # index of the job whose failure stopped the others
    metric: str | None = None  # the sweep metric's name (None: a sweep without a metric)
    maximize: bool = False
    best_step: int | None = None
    last_value: float | None = None
    stderr: str = ""  # the culprit's stderr tail (its last 4000 characters)
    disk_now: str | None = None  # the culprit's run dir does not take a write now: the cause
    disk_before: str | None = None  # the runs dir failed while the trial ran: the cause


@dataclass(frozen=True)
class Decision:
    """How the trial ended: Optuna's state and value, the failure reason, the attributes to store."""

    state: EndState
    value: float | None
    reason: str | None
    attrs: dict[str, Any]
    summary: dict[str, Any]
    disk_fault: bool = False  # its run dir could not be written: not the trial's fault, runs again
    bad_input: bool = False  # exit code 2: the child rejected its input, not retried


def culprit(end: TrialEnd) -> int | None:
    """The index of the job a failed trial is blamed on (its exit code, stderr and run dir make the reason),
    or None when the reason does not come from a job (pruned, interrupted, non-finite, protocol, timeout,
    or every job exited 0)."""
    if end.stopping in (Stop.PRUNED, Stop.NONFINITE, Stop.PROTOCOL, Stop.TIMEOUT):
        return None
    if all(p.state == PartState.DONE for p in end.parts):
        return None
    if end.stopping == Stop.INTERRUPTED:
        return None
    if end.failed_part is not None:
        return end.failed_part
    return next(i for i, p in enumerate(end.parts) if p.state != PartState.DONE)


def decide(end: TrialEnd) -> Decision:
    """The state, value, reason and attributes of a finished trial (what ``Controller._finish`` records)."""
    parts = end.parts
    attrs: dict[str, Any] = {
        st.ATTR_EPOCHS: max((p.steps for p in parts), default=0),
        st.ATTR_DURATION: round(end.duration, 3),
        st.ATTR_GPU_S: round(sum(p.duration for p in parts), 3),
        st.ATTR_BEST_STEP: end.best_step,
        st.ATTR_LAST_VALUE: end.last_value,
        st.ATTR_STARTUP: max((p.ready_s for p in parts if p.ready_s is not None), default=None),
    }
    summary = merge_summaries([dict(p.summary) for p in parts if p.summary is not None])
    if summary:
        attrs[st.ATTR_SUMMARY] = summary
        attrs.update(st.key_metrics(summary))  # top-level: sortable columns in optuna-dashboard
    all_ok = all(p.state == PartState.DONE for p in parts)
    if end.stopping == Stop.PRUNED:
        return Decision(EndState.PRUNED, None, None, attrs, summary)
    if end.stopping == Stop.INTERRUPTED and not all_ok:
        attrs[st.ATTR_INTERRUPTED] = True
        return _failed(INTERRUPTED_REASON, attrs, summary)
    if end.stopping == Stop.NONFINITE:
        name = end.metric if end.metric is not None else "metric"
        return _failed(f"{name} became non-finite (NaN/inf)", attrs, summary)
    if end.stopping in (Stop.PROTOCOL, Stop.TIMEOUT):
        return _failed(end.why, attrs, summary)
    if not all_ok:
        return _job_failed(end, attrs, summary)
    if end.metric is None:
        attrs[st.ATTR_NO_METRIC] = True
        return Decision(EndState.COMPLETE, 0.0, None, attrs, summary)
    return _objective(end, attrs, summary)


def _failed(
    reason: str | None,
    attrs: dict[str, Any],
    summary: dict[str, Any],
    disk_fault: bool = False,
    bad_input: bool = False,
) -> Decision:
    attrs[st.ATTR_REASON] = reason
    return Decision(EndState.FAIL, None, reason, attrs, summary, disk_fault, bad_input)


def _job_failed(end: TrialEnd, attrs: dict[str, Any], summary: dict[str, Any]) -> Decision:
    """A job exited non-zero: its exit code (or signal), fold, CUDA OOM, and whether its disk was to blame."""
    index = culprit(end)
    assert index is not None
    bad = end.parts[index]
    rc = bad.rc if bad.rc is not None else -1
    where = "" if bad.fold is None else f" in fold {bad.fold}"
    reason = (f"exit code {rc}" if rc >= 0 else f"killed by signal {signal.Signals(-rc).name}") + where
    bad_input = False
    if rc == BAD_INPUT_RC and end.stopping == Stop.FAILED:  # the child rejected its input: same next time
        reason += " (bad input: not retried)"
        bad_input = True
    attrs[st.ATTR_STDERR] = end.stderr
    if OOM.search(end.stderr):
        reason = f"{OOM_PREFIX}: " + reason
    disk = end.disk_now
    if disk is None and end.stopping == Stop.FAILED:  # the disk was full while it ran (may have space now)
        seen = DISK_TEXT.search(end.stderr)
        disk = end.disk_before or (seen.group(0) if seen else None)
    if disk is None:
        return _failed(reason, attrs, summary, bad_input=bad_input)
    # it could not write (checkpoint, logs): not the trial's fault, run it again
    reason += f" while its run dir was unwritable ({disk}): runs again, not counted as an attempt"
    attrs[st.ATTR_INTERRUPTED] = True
    return _failed(reason, attrs, summary, disk_fault=True)


def _objective(end: TrialEnd, attrs: dict[str, Any], summary: dict[str, Any]) -> Decision:
    """Every job exited 0: the value is the mean over the folds of each one's metric (its summary's, else
    its last reported value); a fold without a finite one fails the trial."""
    assert end.metric is not None
    parts = end.parts
    per_part = []
    for p in parts:
        v = protocol.as_float((p.summary or {}).get(end.metric))
        per_part.append(v if v is not None else p.last_value)
    if any(v is None or not math.isfinite(v) for v in per_part):
        return _failed(f"finished without reporting a finite {end.metric!r}", attrs, summary)
    finite = [float(v) for v in per_part if v is not None]
    value = statistics.fmean(finite)
    if len(parts) > 1:
        attrs[st.ATTR_FOLDS] = {str(p.fold): v for p, v in zip(parts, finite, strict=True)}
        attrs[st.ATTR_FOLD_STD] = statistics.stdev(finite)
        best, last = fold_best_last([dict(p.values) for p in parts], finite, end.maximize)
        attrs[st.ATTR_BEST_VALUE], attrs[st.ATTR_LAST_VALUE] = best, last
    return Decision(EndState.COMPLETE, value, None, attrs, summary)


def follow_up(
    decision: Decision,
    *,
    attempt: int,
    retries: int,
    stopping_launch: bool,
    stop: str | None,
    retry_on_timeout: bool,
) -> FollowUp:
    """What the point does next: counted complete or pruned, re-queued (its disk failed), left to the next
    launch (interrupted), retried as the next attempt, or given up (no retry left, bad input, a timeout that
    is not retried, or the launch is stopping)."""
    if decision.state == EndState.COMPLETE:
        return FollowUp.COMPLETE
    if decision.state == EndState.PRUNED:
        return FollowUp.PRUNED
    if decision.disk_fault and not stopping_launch:
        return FollowUp.REQUEUE
    if decision.attrs.get(st.ATTR_INTERRUPTED):
        return FollowUp.LEAVE
    if (
        attempt < retries + 1
        and not stopping_launch
        and not decision.bad_input
        and (stop != Stop.TIMEOUT or retry_on_timeout)
    ):
        return FollowUp.RETRY
    return FollowUp.GIVE_UP


def retry_override(decision: Decision, batch_size: Any, on_oom: str | None) -> dict[str, Any] | None:
    """The parameters a retry changes: half the batch size after a CUDA OOM (``on_oom: halve_batch_size``)."""
    oom = decision.reason is not None and decision.reason.startswith(OOM_PREFIX)
    if oom and on_oom == "halve_batch_size" and isinstance(batch_size, int) and batch_size > 1:
        return {"batch_size": batch_size // 2}
    return None


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for a trial: the fold summaries' means (and ``<key>_std``) for numeric keys."""
    if not summaries:
        return {}
    if len(summaries) == 1:
        return summaries[0]
    out: dict[str, Any] = {}
    for key in summaries[0]:
        nums = [protocol.as_float(s.get(key)) for s in summaries]
        if all(v is not None and math.isfinite(v) for v in nums):
            vals = [float(v) for v in nums if v is not None]
            out[key] = statistics.fmean(vals)
            out[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def fold_best_last(
    curves: list[dict[int, float]], objectives: list[float], maximize: bool
) -> tuple[float, float]:
    """``best`` and ``last`` of a trial run per fold, computed like its value (the mean of the folds'
    objectives): the mean over folds of each fold's best value — the best of its reported values and its own
    objective — and of each fold's last reported value (its objective when it reported none). So
    ``best >= value`` for maximize (``<=`` for minimize), fold by fold and hence on the means."""
    pick = max if maximize else min
    bests, lasts = [], []
    for curve, objective in zip(curves, objectives, strict=True):
        seen = [v for v in curve.values() if math.isfinite(v)]
        bests.append(pick([*seen, objective]))
        lasts.append(curve[max(curve)] if curve else objective)
    return statistics.fmean(bests), statistics.fmean(lasts)
