"""The controller's bookkeeping of running trials: one ``_Running`` per Optuna trial, one ``_Part`` per job
(the whole trial, or one of its folds), a re-run carrying over its predecessor's checkpoint, and what a finished
trial did as ``outcome.TrialEnd`` (``gather``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import faults as fl
from orchestrator import storage as st
from orchestrator.executors import Job
from orchestrator.outcome import PartEnd, TrialEnd, culprit
from orchestrator.states import PartState, Stop
from orchestrator.sweep import SweepRunner
from orchestrator.trial.rundir import RunDir


@dataclass
class _Part:
    """One job of a trial: the whole trial, or one fold of it (``folds:``)."""

    fold: int | None
    run_dir: RunDir
    state: PartState = PartState.PENDING
    job: Job | None = None
    values: dict[int, float] = field(default_factory=dict)  # step → sweep metric
    steps: int = 0
    last_value: float | None = None
    summary: dict[str, Any] | None = None
    rc: int | None = None
    duration: float = 0.0
    wandb_id: str = ""
    ready_s: float | None = None  # from the job's start to its first info/metric line (start-up cost)
    logged: set[int] = field(default_factory=set)  # steps in metrics.jsonl (a resumed job re-reports them)
    unwritten: list[str] = field(default_factory=list)  # metrics.jsonl lines a full disk did not take yet


#: the seed of every trial of a sweep that does not set ``seed`` (the 400-models study's): grid points then
#: differ only in their swept values; ``seed`` as a parameter (or ``seeds: [..]``) sets it per trial
DEFAULT_SEED = 42


def trial_seed(params: dict[str, Any]) -> int:
    """trial.json's ``seed``: the trial's ``seed`` parameter when it has one, else :data:`DEFAULT_SEED`."""
    seed = params.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else DEFAULT_SEED


@dataclass
class _Running:
    """Controller-side state of one running trial (one Optuna trial, one or more jobs)."""

    sweep: SweepRunner
    trial: Any  # optuna.Trial
    point: str
    params: dict[str, Any]  # optuna's view (what a retry re-uses)
    attempt: int
    nested: dict[str, Any]
    flat: dict[str, Any]
    run_dir: RunDir
    parts: list[_Part]
    started: float = field(default_factory=time.time)
    stopping: Stop | None = None  # why the controller stops it (None: it runs on)
    why: str | None = None  # the failure reason when stopping is "protocol" (the bad line) or "timeout"
    reported: set[int] = field(default_factory=set)
    best_value: float | None = None
    best_step: int | None = None
    last_value: float | None = None
    failed_part: _Part | None = None
    start_attrs: dict[str, Any] = field(default_factory=dict)
    start_recorded: bool = False  # the start attributes are in the storage (else the finish writes them too)
    # step → the trial's value reported to the pruner (or kept for the storage while it is paused)
    curve: dict[int, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.sweep.spec.name}#{self.trial.number}"

    def pending(self) -> list[_Part]:
        return [p for p in self.parts if p.state == PartState.PENDING]

    def running(self) -> list[_Part]:
        return [p for p in self.parts if p.state == PartState.RUNNING]

    def label(self, part: _Part) -> str:
        """The sweep's name, with the part's fold: how the live view names a job."""
        name = str(self.sweep.spec.name)
        return name if part.fold is None else f"{name} fold {part.fold}"


def carry_over(prior: Any, parts: list[_Part], label: str, say: Callable[[str], None]) -> None:
    """A re-run of a trial the controller was stopped in (died, Ctrl-C) starts from that trial's checkpoint
    (moved into its own run directory) and continues its W&B run (same run id)."""
    old_dir = prior.user_attrs.get(st.ATTR_RUN_DIR)
    ids = prior.user_attrs.get(st.ATTR_WANDB)
    ids = ids if isinstance(ids, list) else [ids]
    if not old_dir:
        return
    for i, part in enumerate(parts):
        old = RunDir(Path(old_dir) if part.fold is None else Path(old_dir) / f"fold{part.fold}")
        try:
            carried = part.run_dir.carry_over(old)
        except OSError as exc:
            say(f"{label}: cannot take the checkpoint of trial {prior.number}: {exc}")
            continue
        if carried and i < len(ids) and ids[i]:
            part.wandb_id = str(ids[i])
        if carried:
            where = "" if part.fold is None else f" (fold {part.fold})"
            say(
                f"{label}{where} continues from the checkpoint of trial {prior.number} (moved here, with its "
                "W&B run)"
            )


def gather(rt: _Running, duration: float, pause: fl.Pause) -> TrialEnd:
    """What a finished trial did. For a failed job (``outcome.culprit``) also its stderr tail and whether its
    run dir takes a write now (else whether the runs dir failed while it ran); a run dir failing now pauses the
    controller (``pause``)."""
    metric = rt.sweep.metric
    end = TrialEnd(
        parts=tuple(
            PartEnd(
                fold=p.fold,
                state=p.state,
                rc=p.rc,
                steps=p.steps,
                duration=p.duration,
                ready_s=p.ready_s,
                summary=p.summary,
                last_value=p.last_value,
                values=p.values,
            )
            for p in rt.parts
        ),
        duration=duration,
        stopping=rt.stopping,
        why=rt.why,
        failed_part=next((i for i, p in enumerate(rt.parts) if p is rt.failed_part), None),
        metric=metric.name if metric is not None else None,
        maximize=metric is not None and metric.goal == "maximize",
        best_step=rt.best_step,
        last_value=rt.last_value,
    )
    index = culprit(end)
    if index is None:
        return end
    bad = rt.parts[index]
    stderr = bad.run_dir.tail("stderr", 30)[-4000:]
    disk_now = fl.probe_dir(bad.run_dir.path) if rt.stopping == Stop.FAILED else None
    disk_before = None
    if disk_now is not None:
        pause.trip(fl.RUNS_DIR, disk_now, f"run trial {rt.trial.number} of {rt.sweep.spec.name}")
    elif rt.stopping == Stop.FAILED:  # the disk was full while it ran (and may have space again by now)
        started = min((p.job.started for p in rt.parts if p.job is not None), default=rt.started)
        disk_before = pause.failed_since(fl.RUNS_DIR, started)
    return dataclasses.replace(end, stderr=stderr, disk_now=disk_now, disk_before=disk_before)
