"""The controller: one process, the only writer of the Optuna studies, event-driven.

It fills every free slot with a trial, and starts the next one the moment a slot frees: the executors' reader
threads put events on one queue and the controller blocks on it (no sleep-polling). On each metric line it
reports to Optuna and asks the pruner; a pruned child gets SIGTERM, a grace period, then SIGKILL. When a child
exits it tells Optuna the final state (COMPLETE with the value, PRUNED, FAIL with the reason and stderr tail).

Exact accounting: every trial carries the identity of its parameter point (``orchestrate.point``). On start,
the controller reads the study: points COMPLETE or PRUNED are done; points that FAILed are re-run with the
same parameters until ``retries`` is spent; trials left RUNNING by a controller that died are marked FAIL
(``interrupted``, not counted as an attempt) and re-run. A grid of N points runs each point exactly once.

Controllers sharing a study (``orchestrator/claims.py``, ``orchestrator/leases.py``): a controller that runs out
of work while other controllers still run or hold points of its sweeps waits for them, re-reading the study
now and then, and takes their points over when one dies (on another host: its heartbeat is older than its
lease).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import queue
import re
import signal
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import faults as fl
from orchestrator import protocol
from orchestrator import storage as st
from orchestrator.claims import open_claims
from orchestrator.errors import RunError
from orchestrator.executors import Job, get_executor
from orchestrator.leases import DEFAULT_LEASE_S, open_leases
from orchestrator.pruners import get_pruner
from orchestrator.rundir import PROJECT_ROOT, RunDir
from orchestrator.slots import Slot
from orchestrator.wandb_env import child_env, new_run_id

ATTR_REMOTE = st.A + "remote"  # where a remote job runs: {"host", "run_dir", "pid"} (per fold)
ATTR_RESUMED = st.A + "resumed_from_epoch"  # the job continued from a checkpoint of this epoch (per fold)


def point_key(flat_params: dict[str, Any]) -> str:
    """The identity of a parameter point: canonical JSON of the flat parameters."""
    return json.dumps(flat_params, sort_keys=True, separators=(",", ":"), default=str)


BAD_INPUT_RC = 2  # a child that exits 2 rejected its input (the house convention): retrying cannot help
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")


def _reads_only(pruner: Any) -> bool:
    """Pruners that only read trials (no study internals): they can run on the controller's in-memory view."""
    import optuna

    from orchestrator.wandb_hyperband import WandbHyperbandPruner

    kinds = (
        optuna.pruners.MedianPruner,  # a PercentilePruner
        optuna.pruners.PercentilePruner,
        optuna.pruners.ThresholdPruner,
        optuna.pruners.NopPruner,
        WandbHyperbandPruner,
    )
    return isinstance(pruner, kinds)


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
    lease_s: float = DEFAULT_LEASE_S  # a controller silent for longer is dead to the others (leases.py)


@dataclass
class Outcome:
    """What a finished launch did, per sweep."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0
    busy_s: float = 0.0  # sum of trial durations
    slots: int = 0
    unrecorded: int = 0  # finished results the storage did not take before an interrupted launch ended
    # trials that ended FAILED with no retry left (or bad input, exit 2): {"sweep", "trial", "reason", "line"}
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def utilisation(self) -> float:
        return self.busy_s / (self.slots * self.wall_s) if self.wall_s > 0 and self.slots else 0.0


class _FixedSampler:
    """Wraps the sweep's sampler; while ``fixed`` is set, ``suggest_*`` returns those values.

    This is how a grid point or a retry is run with exactly its parameters without leaving WAITING trials
    in the storage (as ``enqueue_trial`` would if the controller died in between).
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.fixed: dict[str, Any] | None = None
        self.owner: str | None = None  # this controller's id, written on each new trial before anything else

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        if self.fixed is not None:
            return {}
        result: dict[str, Any] = self.base.infer_relative_search_space(study, trial)
        return result

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if self.fixed is not None:
            return {}
        result: dict[str, Any] = self.base.sample_relative(study, trial, search_space)
        return result

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        if self.fixed is not None and name in self.fixed:
            return self.fixed[name]
        return self.base.sample_independent(study, trial, name, distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        if (
            self.owner
        ):  # claim the new trial at once: another controller sharing the storage must not recover it
            study._storage.set_trial_user_attr(trial._trial_id, st.ATTR_CONTROLLER, self.owner)
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


@dataclass
class _Part:
    """One job of a trial: the whole trial, or one fold of it (``folds:``)."""

    fold: int | None
    run_dir: RunDir
    state: str = "pending"  # pending | running | done | failed | skipped
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
    stopping: str | None = None  # pruned | interrupted | nonfinite | failed
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
        return [p for p in self.parts if p.state == "pending"]

    def running(self) -> list[_Part]:
        return [p for p in self.parts if p.state == "running"]


class _PruneView:
    """The study as a pruner reads it, served from the controller's memory.

    Optuna's cached storage re-reads every RUNNING trial from the database whenever a pruner lists trials, so
    with 64 slots each metric line cost ~30 ms of controller CPU. The controller already holds its running
    trials (their intermediate values are updated in place by ``Trial.report``) and the finished ones; the
    finished list is refreshed from the storage at most every ``REFRESH_S`` so that controllers sharing a study
    still see each other's results. Used for the pruners that only read trials (median, percentile,
    threshold, none, W&B hyperband); Optuna's successive halving and hyperband keep the real study.
    """

    REFRESH_S = 5.0

    def __init__(self, runner: SweepRunner) -> None:
        self._runner = runner
        self._finished: list[Any] = []
        self._refreshed = 0.0

    def refresh(self) -> None:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        self._finished = list(self._runner.study.get_trials(deepcopy=False, states=done))
        self._refreshed = time.monotonic()

    def add_finished(self, frozen: Any) -> None:
        self._finished.append(frozen)

    @property
    def direction(self) -> Any:
        return self._runner.study.direction

    @property
    def directions(self) -> Any:
        return self._runner.study.directions

    def _is_multi_objective(self) -> bool:
        return False

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        if time.monotonic() - self._refreshed > self.REFRESH_S:
            self.refresh()
        running = [t._cached_frozen_trial for t in self._runner.live.values()]
        trials = self._finished + running
        return [t for t in trials if states is None or t.state in states]

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[Any]:
        return self.get_trials(deepcopy, states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner.study, name)


class SweepRunner:
    """One sweep's study and its queue of work in this launch."""

    def __init__(self, spec: Any, storage: Any, opts: LaunchOptions, leases: Any = None) -> None:
        import optuna

        self.spec = spec
        self.opts = opts
        self.metric = spec.metric
        direction = "maximize" if self.metric is not None and self.metric.goal == "maximize" else "minimize"
        method = spec.method
        base: optuna.samplers.BaseSampler
        if method == "bayes":
            base = optuna.samplers.TPESampler(n_startup_trials=5)
        else:
            base = optuna.samplers.RandomSampler()
        self.sampler = _FixedSampler(base)
        self.sampler.owner = st.controller_id()
        self.pruner = get_pruner(spec.pruner, where=str(spec.file) if getattr(spec, "file", None) else None)
        try:
            self.study = optuna.create_study(
                storage=storage,
                study_name=spec.name,
                direction=direction,  # type: ignore[arg-type]
                sampler=self.sampler,  # type: ignore[arg-type]
                pruner=self.pruner,
                load_if_exists=True,
            )
        except Exception as exc:
            raise RunError(
                f"storage {fl.mask_url(opts.storage)}: cannot create or load the study {spec.name!r}: {exc}"
            ) from exc
        if self.study.direction.name.lower() != direction:
            raise RunError(
                f"study {spec.name!r} in {opts.storage} has direction {self.study.direction.name.lower()}, "
                f"but the sweep's metric goal is {direction}",
                hint="rename the sweep or use another --storage",
            )
        self.study.set_user_attr(
            st.ATTR_METRIC, {"name": self.metric.name, "goal": self.metric.goal} if self.metric else None
        )
        self.study.set_user_attr(st.ATTR_SPEC, spec.describe())
        self.retries = int(spec.retries or 0)
        cap = spec.run_cap
        if opts.max_trials is not None:
            cap = opts.max_trials if cap is None else min(cap, opts.max_trials)
        self.cap: int | None = cap
        self.pending: deque[tuple[dict[str, Any], int]] = deque()  # (optuna params, attempt)
        self.finished = 0
        self.running = 0
        self.best: float | None = None
        self.counts = {"complete": 0, "pruned": 0, "failed": 0, "retried": 0, "recovered": 0, "imported": 0}
        self.exhausted = False
        self.live: dict[int, Any] = {}  # trial id → optuna.Trial of this sweep's running trials
        self.overrides: dict[str, dict[str, Any]] = {}  # point → parameters changed for its retry (OOM)
        self.prune_view: _PruneView | None = _PruneView(self) if _reads_only(self.pruner) else None
        self.parent: SweepRunner | None = None
        self.blocked: str | None = None  # why a dependent sweep cannot start (said once)
        self._storage = storage
        self._checkpoints: list[dict[int | None, str]] | None = None
        self.leases = leases  # heartbeats: judges controllers on other hosts (None: a journal storage)
        # shared storage: no point twice
        self.claims = open_claims(storage, spec.name, st.controller_id(), leases)
        self.orphans: list[dict[str, Any]] = []  # remote processes of trials a dead controller left
        self.elsewhere: set[str] = set()  # other live controllers running points of this sweep
        self.notes: list[str] = []  # what the controller should say (takeovers)
        self.resume_from: dict[str, Any] = {}  # point → its interrupted trial (a checkpoint may be left)
        self.abandoned: list[int] = []  # trial ids created while the storage failed: never run, to mark FAIL
        self.unrecorded: set[int] = set()  # ids of trials finished here whose record waits for the storage
        self._recover()

    # ----- start-up (and while waiting for other controllers): read the study, work out what is left -----
    def _recover(self) -> None:
        from optuna.trial import TrialState

        self.pending.clear()
        self.resume_from.clear()
        self.finished = 0
        self.elsewhere = set()
        if self.claims is not None:
            self.claims.blocked_by.clear()
        taken: dict[str, int] = {}
        points: dict[str, list[Any]] = {}
        for t in self.study.get_trials(deepcopy=False):
            if (
                t.state == TrialState.RUNNING
                and t._trial_id not in self.live
                and t._trial_id not in self.unrecorded
            ):
                owner = t.user_attrs.get(st.ATTR_CONTROLLER)
                if st.owner_alive(owner, self.leases) or self._just_asked(t):
                    self.elsewhere.add(str(owner))
                else:
                    # finished but never recorded (its controller was paused on the storage): record it from
                    # its result.json; else it is interrupted and runs again
                    if not self._import_result(t) and self._interrupt(t):
                        taken[str(owner)] = taken.get(str(owner), 0) + 1
                    t = self.study._storage.get_trial(t._trial_id)
            if t.state == TrialState.WAITING:
                continue
            if t.state == TrialState.FAIL and not self._has_point(t):
                continue  # asked for, then the controller died before its parameters were drawn: it never ran
            points.setdefault(self._key_of(t), []).append(t)
            if (
                t.state == TrialState.COMPLETE
                and t.value is not None
                and not t.user_attrs.get(st.ATTR_NO_METRIC)
            ):
                self._update_best(float(t.value))
        done: set[str] = set()
        for key, trials in points.items():
            states = {t.state for t in trials}
            if TrialState.COMPLETE in states or TrialState.PRUNED in states:
                done.add(key)
                self.finished += 1
                continue
            if TrialState.RUNNING in states:  # another live controller (or this one) runs it
                done.add(key)
                continue
            used = sum(1 for t in trials if not t.user_attrs.get(st.ATTR_INTERRUPTED))
            if used >= self.retries + 1:
                done.add(key)
                self.finished += 1
                continue
            latest = max(trials, key=lambda t: t.number)
            done.add(key)
            self.pending.append((dict(latest.params), used + 1))
            if latest.user_attrs.get(st.ATTR_INTERRUPTED):
                self.resume_from[key] = latest  # its re-run continues from its checkpoint, if it left one
        if self.spec.method == "grid":
            for flat in self.spec.parameters.grid():
                key = point_key(flat)
                if key not in done:
                    done.add(key)
                    self.pending.append((self._optuna_params(flat), 1))
        for owner, n in taken.items():
            self.notes.append(f"[{self.spec.name}] {self._describe(owner)}: taking over {n} trial(s)")

    def _interrupt(self, t: Any) -> bool:
        """Mark a trial its dead controller left RUNNING as interrupted (FAIL, not an attempt): it is re-run.
        False when another controller did so first."""
        import optuna

        storage = self.study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, st.ATTR_INTERRUPTED, True)
            storage.set_trial_user_attr(t._trial_id, st.ATTR_REASON, "controller died while it ran")
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        self.counts["recovered"] += 1
        self.orphans += [v for k, v in t.user_attrs.items() if k.startswith(ATTR_REMOTE)]
        return True

    def _describe(self, owner: str) -> str:
        """``controller host:pid last seen 41 s ago (lease 30 s)`` — why a controller counts as dead."""
        name = owner.rsplit(":", 1)[0] if owner.count(":") >= 2 else owner
        if self.leases is not None and owner.count(":") >= 2 and owner.rsplit(":", 2)[0] != st.host_id():
            return f"controller {name} {self.leases.verdict(owner).why}"
        return f"controller {name} is no longer running"

    def waiting_on(self) -> set[str]:
        """Other live controllers that run or hold points this sweep still needs (empty: nothing to wait for)."""
        if self.leases is None or self.target_reached() or self.blocked is not None:
            return set()  # a journal storage: no heartbeats to judge others by, so no waiting for them
        if self.cap is not None and self.finished >= self.cap:
            return set()
        return self.elsewhere | (self.claims.blocked_by if self.claims is not None else set())

    def _import_result(self, t: Any) -> bool:
        """Record a trial left RUNNING from its ``result.json``: its controller finished it but died before the
        storage took the result (it was paused: database locked or down). The point is not run again."""
        from optuna.trial import TrialState

        path = t.user_attrs.get(st.ATTR_RUN_DIR)
        run_dir = (
            RunDir(path) if path else RunDir.for_trial(self.opts.runs_dir.resolve(), self.spec.name, t.number)
        )
        result = run_dir.read_result()
        record = (result or {}).get("record")
        if not result or not isinstance(record, dict) or result.get("trial") != t.number:
            return False
        attrs = dict(record.get("attrs") or {})
        owner = t.user_attrs.get(st.ATTR_CONTROLLER)
        if result.get("sweep") != self.spec.name or attrs.get(st.ATTR_POINT) != self._key_of(t):
            return False  # another study's run dir under the same name
        if owner is not None and attrs.get(st.ATTR_CONTROLLER) != owner:
            return False
        state = {s.name: s for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}.get(
            str(result.get("state"))
        )
        if state is None:
            return False
        import optuna

        storage = self.study._storage
        curve = {int(k): float(v) for k, v in (record.get("intermediate") or {}).items()}
        values = None
        if state == TrialState.COMPLETE:
            values = [float(result["value"])]
        elif state == TrialState.PRUNED and curve and math.isfinite(curve[max(curve)]):
            values = [curve[max(curve)]]  # what Optuna's tell gives a pruned trial: its last reported value
        try:
            for step, v in sorted(curve.items()):
                if step not in t.intermediate_values:
                    storage.set_trial_intermediate_value(t._trial_id, step, v)
            for key, value in {**attrs, st.ATTR_IMPORTED: str(run_dir.result_json)}.items():
                storage.set_trial_user_attr(t._trial_id, key, value)
            storage.set_trial_state_values(t._trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # another controller recovered it first
        self.counts["imported"] += 1
        return True

    def _just_asked(self, t: Any) -> bool:
        """A RUNNING trial that a live controller sharing the storage created a moment ago (owner not yet written)."""
        if (
            t.user_attrs.get(st.ATTR_CONTROLLER) is not None
            or t.datetime_start is None
            or self.claims is None
        ):
            return False
        if (datetime.datetime.now() - t.datetime_start).total_seconds() > 5:
            return False
        return self.claims.others_alive()

    def _has_point(self, t: Any) -> bool:
        """Whether a stored trial got all its parameters (else no job of it can have started)."""
        if t.user_attrs.get(st.ATTR_POINT):
            return True
        try:
            decoded = self.spec.parameters.decode(t.params, grid=self.spec.method == "grid")
        except (KeyError, ValueError, TypeError):
            return bool(t.params)
        return all(name in decoded for name in self.spec.parameters.names())

    def _key_of(self, t: Any) -> str:
        """The point of a stored trial; a trial killed before its attributes were written is decoded."""
        key = t.user_attrs.get(st.ATTR_POINT)
        if key:
            return str(key)
        try:
            return point_key(self.spec.parameters.decode(t.params, grid=self.spec.method == "grid"))
        except (KeyError, ValueError, TypeError):
            return point_key(t.params)

    def _optuna_params(self, flat: dict[str, Any]) -> dict[str, Any]:
        """A grid point in Optuna's terms (what the fixed sampler hands to ``suggest_*``)."""
        result: dict[str, Any] = self.spec.parameters.encode(flat, grid=self.spec.method == "grid")
        return result

    def _update_best(self, value: float) -> None:
        if self.metric is None or not math.isfinite(value):
            return
        better = self.best is None or (
            value > self.best if self.metric.goal == "maximize" else value < self.best
        )
        if better:
            self.best = value

    # ----- two stages: depends_on / init_from -----
    def attach_parent(self, parent: SweepRunner | None, storage: Any) -> None:
        """The sweep this one waits for (None: not in this launch; its finished study is read)."""
        self.parent = parent
        self._storage = storage

    def _parent_checkpoints(self) -> list[dict[int | None, str]]:
        """Best checkpoints of the parent sweep's completed trials, best first: ``{None: path}`` for a trial
        run whole, ``{fold: path}`` for a trial run per fold (``folds:``; a trial lacking a fold this sweep
        needs is left out — its other folds' checkpoints trained on that fold's test subjects)."""
        import optuna
        from optuna.trial import TrialState

        name = self.spec.depends_on
        try:
            study = optuna.load_study(study_name=name, storage=self._storage)
        except KeyError:
            return []
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and not t.user_attrs.get(st.ATTR_NO_METRIC)
        ]
        trials.sort(key=lambda t: float(t.value or 0.0), reverse=study.direction.name == "MAXIMIZE")
        need = set(getattr(self.spec, "folds", None) or ())
        found: list[dict[int | None, str]] = []
        for t in trials:
            run_dir = Path(str(t.user_attrs.get(st.ATTR_RUN_DIR, "")))
            if (run_dir / "checkpoint_best.pt").is_file():
                found.append({None: str(run_dir / "checkpoint_best.pt")})
                continue
            folds: dict[int | None, str] = {
                int(c.parent.name[4:]): str(c)
                for c in run_dir.glob("fold*/checkpoint_best.pt")
                if c.parent.name[4:].isdigit()
            }
            if folds and need <= set(folds):
                found.append(folds)
        return found

    def dependency_ready(self) -> bool:
        if not getattr(self.spec, "depends_on", None):
            return True
        if self.parent is not None and not self.parent.done():
            return False
        if self._checkpoints is None and self.spec.init_from:
            self._checkpoints = self._parent_checkpoints()
            need = int(self.spec.init_from)
            if len(self._checkpoints) < need:
                folds = getattr(self.spec, "folds", None)
                every = f" for each of the folds {list(folds)}" if folds else ""
                self.blocked = (
                    f"depends on sweep {self.spec.depends_on!r}, which has {len(self._checkpoints)} finished "
                    f"trial(s) with a checkpoint{every}; init_from needs {need}"
                )
        return self.blocked is None

    def init_checkpoint(self, flat: dict[str, Any], fold: int | None = None) -> str | None:
        """The checkpoint a fine-tune job starts from (``init_rank`` picks among the top k).

        Leak-free folds: the job of fold k (``fold``, else the trial's ``fold`` parameter) starts from the
        parent's fold-k checkpoint — the parent that held out the same subjects (``spec/loader._check_chain``
        refuses chains where no such checkpoint can exist). A parent on another dataset gives its lowest fold."""
        if not getattr(self.spec, "init_from", None) or not self._checkpoints:
            return None
        rank = int(flat.get("init_rank", 1))
        ckpts = self._checkpoints[min(rank, len(self._checkpoints)) - 1]
        if None in ckpts:
            return ckpts[None]
        if fold is None:
            fold = next((int(v) for k, v in flat.items() if k.rpartition(".")[2] == "fold"), None)
        if fold in ckpts:
            return ckpts[fold]
        return ckpts[min(k for k in ckpts if k is not None)]

    # ----- what to run next -----
    def target_reached(self) -> bool:
        if self.metric is None or self.metric.target is None or self.best is None:
            return False
        t = float(self.metric.target)
        return self.best >= t if self.metric.goal == "maximize" else self.best <= t

    def can_start(self) -> bool:
        if self.target_reached() or not self.dependency_ready():
            return False
        if self.cap is not None and self.finished + self.running >= self.cap:
            return False
        if self.pending:
            return True
        return self.spec.method != "grid"

    def done(self) -> bool:
        return self.running == 0 and not self.can_start() and not self.waiting_on()

    def _claim(self, fixed: dict[str, Any], attempt: int) -> bool:
        return self.claims is None or self.claims.claim(point_key(fixed), attempt)

    def next_trial(self) -> tuple[Any, dict[str, Any], dict[str, Any], int] | None:
        """Ask Optuna for the next trial: (trial, optuna params, flat values, attempt)."""
        if not self.can_start():
            return None
        while self.pending and not self._claim(*self.pending[0]):
            self.pending.popleft()  # another controller sharing the storage runs this point
        if not self.can_start():
            return None
        fixed: dict[str, Any] | None = None
        if self.pending:
            fixed, attempt = self.pending.popleft()
            self.sampler.fixed = fixed
        else:
            attempt = 1
            self.sampler.fixed = None
        trial = None
        try:
            trial = self._ask()
            values = self.spec.parameters.sample(trial, grid=self.spec.method == "grid")
        except BaseException:  # the storage failed half-way: the point waits, a half-made trial is marked
            if fixed is not None:
                self.pending.appendleft((fixed, attempt))
            if trial is not None:
                self.abandoned.append(trial._trial_id)
            raise
        finally:
            self.sampler.fixed = None
        self.live[trial._trial_id] = trial
        return trial, dict(trial.params), values, attempt

    def _ask(self) -> Any:
        """``study.ask()`` minus its look for WAITING (enqueued) trials — the controller never enqueues, and
        that look re-reads every running trial from the storage."""
        import optuna

        study = self.study
        try:
            study._thread_local.cached_all_trials = None  # as ask() does: samplers see the latest trials
            trial_id = study._storage.create_new_trial(study._study_id)
        except AttributeError:  # another Optuna version: the public path
            return study.ask()
        try:
            return optuna.Trial(study, trial_id)
        except BaseException:
            self.abandoned.append(trial_id)  # created, but the storage failed before it got its owner
            raise


class _TakenOver(RunError):
    """Another controller took this one's trials over (it was silent for longer than its lease)."""


class Controller:
    """Runs the sweeps of one launch on a set of slots."""

    def __init__(self, sweeps: list[Any], opts: LaunchOptions, display: Any) -> None:
        self.specs = sweeps
        self.opts = opts
        self.display = display
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.executor = get_executor(
            opts.executor, self.events, hosts=opts.hosts, warm=opts.workers == "warm"
        )
        self._resting: dict[str, list[Slot]] = {}  # lost host → its slots, until it answers again
        self._prices = {
            h.name: h.cost_per_hour for h in opts.hosts if getattr(h, "cost_per_hour", None) is not None
        }
        self.free: list[Slot] = list(opts.slots)
        self.trials: dict[str, _Running] = {}  # trial key → state
        self.jobs: dict[str, tuple[_Running, _Part]] = {}  # job key → (trial, part)
        self.controller_id = st.controller_id()
        self.cache_dir = opts.cache_dir or Path(
            os.environ.get("ORCHESTRATE_CACHE_DIR", Path.home() / ".cache" / "orchestrate")
        )
        self._warm_up()  # first: the zygote's imports overlap everything the controller does before a trial
        self.stopping = False
        self.outcome = Outcome(slots=len(opts.slots))
        self.runners: list[SweepRunner] = []
        self.leases: Any = None  # this controller's heartbeat (orchestrator/leases.py); None: journal storage
        # monotonic times of the next look at other controllers, and of the next re-read of the studies
        self._next_watch = 0.0
        self._next_rescan = 0.0
        self._said_waiting = False
        # storage or runs dir failing mid-sweep: running trials go on, nothing new starts, what failed is retried
        from optuna.exceptions import UpdateFinishedTrialError

        self.pause = fl.Pause(
            {fl.STORAGE: fl.mask_url(opts.storage), fl.RUNS_DIR: str(opts.runs_dir.resolve())},
            say=display.message,
            status=getattr(display, "pause_status", None),
            fatal=(UpdateFinishedTrialError,),  # another controller took a trial over: run() stops (leases)
        )

    # ----- main loop -----
    def run(self) -> Outcome:
        import optuna

        try:
            return self._run()
        except (_TakenOver, optuna.exceptions.UpdateFinishedTrialError) as exc:
            # another controller took this one's trials over: stop what still runs here, say so, no traceback
            for _, part in list(self.jobs.values()):
                if part.job is not None:
                    self.executor.stop(part.job, grace=2.0)
            if isinstance(exc, _TakenOver):
                raise
            raise self._taken_over(f"a trial it ran ({exc})") from exc
        finally:
            if self.leases is not None:
                self.leases.stop()  # marked finished: others may take over what this one leaves at once

    def _run(self) -> Outcome:
        import optuna

        optuna.logging.set_verbosity(
            optuna.logging.WARNING
        )  # the display says what happens, not Optuna's log
        t0 = time.time()
        storage = st.get_storage(self.opts.storage)
        try:
            self.leases = open_leases(storage, self.controller_id, self.opts.lease_s)
            if self.leases is not None:
                self.leases.start()  # the first heartbeat is written before any claim
            self.runners = [SweepRunner(spec, storage, self.opts, self.leases) for spec in self.specs]
        except Exception as exc:
            cause = fl.transient(exc)
            if cause is None:
                raise
            raise RunError(
                f"storage {fl.mask_url(self.opts.storage)} failed while reading the studies: {cause}",
                hint="nothing was started; run the same command again once the storage answers",
            ) from exc
        by_name = {r.spec.name: r for r in self.runners}
        for r in self.runners:
            if getattr(r.spec, "depends_on", None):
                r.attach_parent(by_name.get(r.spec.depends_on), storage)
        for r in self.runners:
            self.display.sweep_ready(r.spec.name, r)
        self._say_notes()
        orphans = [o for r in self.runners for o in r.orphans]
        if orphans and hasattr(self.executor, "cleanup"):
            for note in self.executor.cleanup(orphans):
                self.display.message(note)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        stop_sent = False
        try:
            while True:
                if self.stopping and not stop_sent:
                    stop_sent = True
                    self._stop_all()
                if self.pause.due():
                    self.pause.retry()  # the storage or runs dir failed: retry what waits (back-off)
                if not self.stopping:
                    self._watch_others_unless_paused()
                    self._fill_slots()
                if (
                    not self.jobs
                    and not self._waiting_for_hosts()
                    and not self._waiting_for_others()
                    and not self._waiting_for_storage()
                ):
                    break
                wait = self.pause.seconds_to_retry()
                try:
                    # blocks until a child reports or exits; the timeout only refreshes the live view,
                    # notices Ctrl-C (a signal handler must not touch the queue's lock) and paces retries
                    kind, job, payload = self.events.get(
                        timeout=0.5 if wait is None else min(0.5, wait + 0.01)
                    )
                except queue.Empty:
                    self.display.tick()
                    continue
                if kind == "event":
                    self._on_event(job, payload)
                elif kind == "exit":
                    self._on_exit(job, int(payload))
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            getattr(self.executor, "close", lambda: None)()
        self.outcome.wall_s = time.time() - t0
        self.outcome.interrupted = self.stopping
        self.outcome.unrecorded = self.pause.waiting_results()
        if self.outcome.unrecorded:
            causes = "; ".join(f"{f.resource} {f.where}: {f.cause}" for f in self.pause.faults.values())
            self.display.message(
                f"{self.outcome.unrecorded} finished result(s) could not be recorded ({causes}): they are kept "
                f"in their run directories (result.json) and the next `orchestrate launch` imports them"
            )
        if self.pause.status is not None:
            self.pause.status(None)
        for r in self.runners:
            if r.blocked:
                self.display.message(f"[{r.spec.name}] not started: {r.blocked}")
            self.outcome.counts[r.spec.name] = dict(r.counts, finished=r.finished)
        return self.outcome

    def _waiting_for_storage(self) -> bool:
        """Nothing runs, but results wait for the storage (never leave them), or a pause holds work back."""
        if self.pause.ops:
            return not self.stopping  # Ctrl-C: leave; the next launch imports the results from the run dirs
        if self.stopping or not self.pause.blocking():
            return False
        if self.trials:
            return True
        try:
            return any(r.can_start() for r in self.runners)
        except Exception as exc:
            if fl.transient(exc) is None:
                raise
            return True

    # ----- other controllers sharing the studies -----
    def _watch_others_unless_paused(self) -> None:
        """``_watch_others`` while the storage answers; a storage fault half-way pauses the controller and
        puts back the queues ``_recover`` was rebuilding (the next watch after the pause reads them again)."""
        if self.pause.blocking(fl.STORAGE):
            return
        saved = [
            (r, deque(r.pending), dict(r.resume_from), r.finished, set(r.elsewhere)) for r in self.runners
        ]
        blocked = [set(r.claims.blocked_by) if r.claims is not None else set() for r in self.runners]
        try:
            self._watch_others()
        except Exception as exc:
            cause = fl.transient(exc)
            if cause is None:
                raise
            for (r, pending, resume, finished, elsewhere), by in zip(saved, blocked, strict=True):
                r.pending, r.resume_from, r.finished, r.elsewhere = pending, resume, finished, elsewhere
                if r.claims is not None:
                    r.claims.blocked_by = by
            self.pause.trip(fl.STORAGE, cause, "read the studies for other controllers' points")

    def _watch_others(self) -> None:
        """Take over the points of another controller that died; notice if this one was silent past its lease.

        At most every second a few cheap reads (the heartbeat table); the studies are re-read when a controller
        this one waits for died, or every lease/3 (1-10 s) while slots are free (to see its points finish).
        """
        if self.leases is None:
            return
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + min(1.0, self.opts.lease_s / 5)
        if self.leases.lapsed is not None:
            self._check_lapse()
        owners = {o for r in self.runners for o in r.waiting_on()}
        if not owners:
            return
        dead = any(not st.owner_alive(o, self.leases) for o in owners)
        if not dead and (now < self._next_rescan or not self.free):
            return
        self._next_rescan = now + min(max(self.opts.lease_s / 3, 1.0), 10.0)
        orphans: list[dict[str, Any]] = []
        for r in self.runners:
            if r.waiting_on():
                before = len(r.orphans)
                r._recover()
                orphans += r.orphans[before:]
        self._say_notes()
        if orphans and hasattr(self.executor, "cleanup"):
            for note in self.executor.cleanup(orphans):
                self.display.message(note)

    def _waiting_for_others(self) -> bool:
        """Nothing of ours runs, but other live controllers run or hold points these sweeps need: wait (and
        ``_watch_others`` takes their points over if one dies)."""
        if self.stopping or self.leases is None:
            return False
        owners = sorted({o for r in self.runners for o in r.waiting_on()})
        if owners and not self._said_waiting:
            self._said_waiting = True
            names = ", ".join(o.rsplit(":", 1)[0] for o in owners)
            self.display.message(
                f"waiting for other controller(s) running points of these sweeps ({names}); "
                f"a controller whose heartbeat stops for longer than its lease has its points taken over"
            )
        return bool(owners)

    def _check_lapse(self) -> None:
        """This controller could not write its heartbeat for longer than its lease (suspended, database away):
        another may have judged it dead and taken its trials over. If so, stop (it re-runs them)."""
        from optuna.trial import TrialState

        try:
            gone = [
                rt
                for rt in self.trials.values()
                if rt.sweep.study._storage.get_trial(rt.trial._trial_id).state != TrialState.RUNNING
            ]
        except Exception:  # the database is away again: look at the next watch
            return
        if gone:
            raise self._taken_over(f"{len(gone)} of its trial(s)")
        self.display.message(
            f"this controller's heartbeat stopped for {self.leases.lapsed:.0f} s (longer than its lease, "
            f"{self.opts.lease_s:g} s); none of its trials was taken over"
        )
        self.leases.lapsed = None

    def _taken_over(self, what: str) -> _TakenOver:
        lapsed = self.leases.lapsed if self.leases is not None else None
        why = (
            f"this controller's heartbeat stopped for {lapsed:.0f} s, longer than its lease "
            f"({self.opts.lease_s:g} s), and another controller sharing the storage took over {what}"
            if lapsed is not None
            else f"another controller sharing the storage took over {what}"
        )
        return _TakenOver(
            why + ": stopping",
            hint="it re-runs what it took over; run `orchestrate launch` again to help with the rest "
            "(a longer --lease / defaults.lease suits machines that sleep)",
        )

    def _say_notes(self) -> None:
        for r in self.runners:
            for note in r.notes:
                self.display.message(note)
            r.notes.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # runs in the main thread between bytecodes: only set a flag, the loop does the rest
        self.stopping = True

    def _stop_all(self) -> None:
        self.display.message(f"stopping {len(self.jobs)} running job(s) …")
        for rt in list(self.trials.values()):
            if rt.stopping is None:
                rt.stopping = "interrupted"
            self._stop_trial(rt, grace=min(self.opts.grace, 5.0))
            if not rt.running():  # none of its jobs had started: nothing will exit, record it now
                self._finish(rt)

    def _stop_trial(self, rt: _Running, grace: float | None = None) -> None:
        """Stop every running job of a trial; its jobs not yet started never start."""
        for part in rt.parts:
            if part.state == "pending":
                part.state = "skipped"
            elif part.state == "running" and part.job is not None:
                if part.job.stopping is None:
                    part.job.stopping = rt.stopping
                self.executor.stop(part.job, grace=self.opts.grace if grace is None else grace)

    def _fill_slots(self) -> None:
        for host in self.executor.hosts_back() if hasattr(self.executor, "hosts_back") else []:
            self.free.extend(self._resting.pop(host, []))
            self.display.message(f"host {host} answers again: its slots are back")
        while self.free and not self.pause.blocking():  # paused: nothing new starts until the retry
            # first the folds still waiting of trials already started (a configuration finishes sooner),
            # then new trials, in sweep order
            rt = next((t for t in self.trials.values() if t.stopping is None and t.pending()), None)
            if rt is not None:
                self._start_part(rt, rt.pending()[0], self.free.pop(0))
                continue
            runner = None
            try:
                runner = next((r for r in self.runners if r.can_start()), None)
                if runner is None:
                    return
                rt = self._new_trial(runner)
            except Exception as exc:
                cause = fl.transient(exc)
                if cause is None:
                    raise
                self.pause.trip(
                    fl.STORAGE, cause, f"start a trial of {runner.spec.name if runner else 'a sweep'}"
                )
                # trials the storage half-made: marked failed (never ran, not an attempt) once it is back
                for r in self.runners:
                    for trial_id in r.abandoned:
                        self.pause.defer(
                            fl.STORAGE, f"mark trial id {trial_id} as never run", _never_ran(r, trial_id)
                        )
                    r.abandoned.clear()
                return
            if rt is None:
                continue
            self._start_part(rt, rt.pending()[0], self.free.pop(0))

    # ----- one trial -----
    def _new_trial(self, runner: SweepRunner) -> _Running | None:
        nxt = runner.next_trial()
        if nxt is None:
            return None
        trial, optuna_params, flat, attempt = nxt
        spec = runner.spec
        nested = spec.parameters.nest(flat)
        folds = getattr(spec, "folds", None)
        init = runner.init_checkpoint(flat)
        if init is not None:
            # the built-in experiment loads a trunk from `pretrained: <checkpoint>` (heads replaced); a user
            # program gets --init_checkpoint=<path>; with folds, each job gets its fold's (_start_part) and the
            # trial records which parent run the folds start from
            nested.pop("init_rank", None)
            if folds and Path(init).parent.name.startswith("fold"):
                init = str(Path(init).parent.parent / "fold{fold}" / Path(init).name)
            nested["pretrained" if spec.experiment else "init_checkpoint"] = init
        # created by _start_part, where a full or read-only disk pauses the controller
        run_dir = RunDir.for_trial(self.opts.runs_dir.resolve(), spec.name, trial.number)
        parts = (
            [_Part(fold=None, run_dir=run_dir)]
            if not folds
            else [_Part(fold=f, run_dir=RunDir(run_dir.path / f"fold{f}")) for f in folds]
        )
        for part in parts:
            part.wandb_id = new_run_id()
        key = point_key(flat)
        override = runner.overrides.get(key)
        if override:  # e.g. a CUDA OOM retry with half the batch size: same point, smaller batch
            nested.update(override)
        prior = runner.resume_from.pop(key, None)
        if prior is not None:
            self._carry_over(prior, parts, f"trial {trial.number} of {spec.name}")
        start_attrs = {  # written with the first job's slot, in one transaction (see _start_part)
            st.ATTR_POINT: key,
            st.ATTR_PARAMS: nested,
            st.ATTR_ATTEMPT: attempt,
            st.ATTR_CONTROLLER: self.controller_id,
            st.ATTR_RUN_DIR: str(run_dir.path),
            st.ATTR_WANDB: parts[0].wandb_id if len(parts) == 1 else [p.wandb_id for p in parts],
            **({st.ATTR_OVERRIDE: override} if override else {}),
        }
        rt = _Running(
            sweep=runner,
            trial=trial,
            point=key,
            params=optuna_params,
            attempt=attempt,
            nested=nested,
            flat=flat,
            run_dir=run_dir,
            parts=parts,
            start_attrs=start_attrs,
        )
        self.trials[rt.key] = rt
        runner.running += 1
        return rt

    def _carry_over(self, prior: Any, parts: list[_Part], label: str) -> None:
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
                self.display.message(f"{label}: cannot take the checkpoint of trial {prior.number}: {exc}")
                continue
            if carried and i < len(ids) and ids[i]:
                part.wandb_id = str(ids[i])
            if carried:
                where = "" if part.fold is None else f" (fold {part.fold})"
                self.display.message(
                    f"{label}{where} continues from the checkpoint of trial {prior.number} (moved here, with its "
                    "W&B run)"
                )

    def _start_part(self, rt: _Running, part: _Part, slot: Slot) -> bool:
        """Start one job of a trial on ``slot``. False when the runs dir or the storage failed before the job
        started: the slot is free again, the job stays pending (no attempt spent) and the controller pauses."""
        spec = rt.sweep.spec
        number = rt.trial.number
        nested = dict(rt.nested)
        if part.fold is not None:
            nested["fold"] = part.fold
            init = rt.sweep.init_checkpoint(rt.flat, part.fold)
            if init is not None:  # stage 2 fold k starts from stage 1 fold k (no test subject seen)
                nested["pretrained" if spec.experiment else "init_checkpoint"] = init
        suffix = "" if part.fold is None else f"-fold{part.fold}"
        try:
            part.run_dir.create()
            part.run_dir.write_trial(
                {
                    "sweep": spec.name,
                    "trial": number,
                    "attempt": rt.attempt,
                    "fold": part.fold,
                    "experiment": spec.experiment,
                    "params": nested,
                    "metric": {"name": spec.metric.name, "goal": spec.metric.goal} if spec.metric else None,
                    "project": spec.project,
                    "data_root": getattr(spec, "data_root", None),
                    "seed": number,
                    "slot": slot.id,
                }
            )
            job = Job(key=f"{rt.key}{suffix}", slot=slot, run_dir=part.run_dir, argv=[])
            job.argv = self._argv(spec, part.run_dir, nested)
            env = self._env(spec, slot, part.run_dir, number, part.wandb_id, part.fold)
            self.executor.submit(job, env, PROJECT_ROOT if spec.experiment else Path.cwd())
        except Exception as exc:
            fault = fl.fault_of(exc)
            if fault is None:
                raise
            self.free.insert(0, slot)
            self.pause.trip(*fault, f"start trial {number} of {spec.name} in {part.run_dir.path}")
            return False
        part.job, part.state = job, "running"
        self.jobs[job.key] = (rt, part)
        # the child is starting: record who runs it where (a controller that dies in between leaves a trial
        # whose owner attribute, written when it was asked for, still lets the next launch recover it)
        if part is rt.parts[0]:
            attrs = {**rt.start_attrs, st.ATTR_SLOT: slot.id, st.ATTR_HOST: slot.host}
            price = self._prices.get(slot.host)
            if price is not None:  # the host inventory's price: the leaderboard's cost column
                attrs[st.ATTR_COST] = price
            rt.start_attrs = attrs
            rt.start_recorded = self.pause.run(
                fl.STORAGE,
                f"record the start of trial {number} of {spec.name}",
                lambda: st.set_user_attrs(rt.trial, attrs),
            )
        label = spec.name if part.fold is None else f"{spec.name} fold {part.fold}"
        self.display.trial_started(label, number, slot.id, rt.flat, rt.attempt)
        return True

    def _argv(self, spec: Any, run_dir: RunDir, nested: dict[str, Any]) -> list[str]:
        if spec.experiment:
            return [sys.executable, "-u", "-m", f"experiments.{spec.experiment}", str(run_dir.path)]
        from orchestrator.command import build_command

        # like a W&B agent: a relative program is found from the directory `launch` runs in
        return build_command(
            spec, nested, program_path_root=Path.cwd(), args_json_file=run_dir.args_json, run_dir=run_dir.path
        )

    def _process_env(self, spec: Any, slot: Slot) -> dict[str, str]:
        """The environment every trial of ``spec`` on ``slot`` starts with (what a warm zygote needs too)."""
        env = dict(os.environ)
        env.update(slot.env())
        pythonpath = [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "ORCHESTRATE_SWEEP": spec.name,
                "ORCHESTRATE_CACHE_DIR": str(self.cache_dir),
            }
        )
        if not spec.experiment:
            # a user's W&B program: the bridge that turns its wandb.log calls into protocol reports
            # (wandb_bridge/sitecustomize.py)
            from orchestrator.wandb_bridge import BRIDGE_DIR, ENV_ENABLE, ENV_METRIC

            env["PYTHONPATH"] = os.pathsep.join([str(BRIDGE_DIR), *pythonpath])
            env[ENV_ENABLE] = "1"
            env[ENV_METRIC] = spec.metric.name if spec.metric is not None else ""
        return env

    def _warm_up(self) -> None:
        """Start the warm zygote the first local trials need now: its imports overlap opening the storage."""
        slot = next((s for s in self.opts.slots if s.host == "local"), None)
        if slot is None:
            return
        for spec in self.specs:
            if spec.experiment:
                argv = [sys.executable, "-u", "-m", f"experiments.{spec.experiment}"]
            elif spec.command and str(spec.command[0]) == "${interpreter}":
                argv = [sys.executable]
                for word in spec.command[1:]:
                    if str(word).startswith("${"):
                        break
                    argv.append(str(word))
            else:
                continue
            cwd = PROJECT_ROOT if spec.experiment else Path.cwd()
            # only a head start: the first trial's start meets (and reports) the same fault
            with contextlib.suppress(Exception):
                self.executor.warm_up(argv, self._process_env(spec, slot), cwd)
            return

    def _env(
        self, spec: Any, slot: Slot, run_dir: RunDir, number: int, wandb_id: str, fold: int | None = None
    ) -> dict[str, str]:
        env = self._process_env(spec, slot)
        env.update({"ORCHESTRATE_RUN_DIR": str(run_dir.path.resolve()), "ORCHESTRATE_TRIAL": str(number)})
        tags = [f"sweep:{spec.name}", f"slot:{slot.id}"] + ([f"fold:{fold}"] if fold is not None else [])
        sweep_id: str | None = None
        param_path: Path | None = None
        if not spec.experiment:
            # a user's W&B program: the environment a W&B agent gives (wandb_env.py)
            from orchestrator.wandb_env import (
                SWEEP_ID_ATTR,
                new_sweep_id,
                sweep_param_path,
                write_sweep_params,
            )

            ids: dict[str, str] = self.__dict__.setdefault("_wandb_sweep_ids", {})
            if spec.name not in ids:
                study = next(r.study for r in self.runners if r.spec is spec)
                stored = study.user_attrs.get(SWEEP_ID_ATTR)
                if not stored:
                    stored = new_sweep_id()
                    study.set_user_attr(SWEEP_ID_ATTR, stored)
                ids[spec.name] = str(stored)
            sweep_id = ids[spec.name]
            param_path = sweep_param_path(run_dir.path.resolve(), sweep_id, wandb_id)
            write_sweep_params(param_path, run_dir.read_trial().get("params") or {})
        env.update(
            child_env(
                mode=self.opts.wandb_mode,
                run_dir=run_dir.path.resolve(),
                project=spec.project,
                entity=spec.entity,
                group=spec.name,
                name=f"{spec.name}-{number}" + ("" if fold is None else f"-fold{fold}"),
                run_id=wandb_id,
                tags=tags,
                cache_dir=self.cache_dir,
                sweep_id=sweep_id,
                param_path=param_path,
            )
        )
        return env

    # ----- what the children say -----
    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        found = self.jobs.get(job.key)
        if found is None:
            return
        rt, part = found
        kind = event.get("event")
        if kind == protocol.EVENT_INFO and "remote_pid" in event:  # a remote launcher started the job
            where = {
                "host": job.slot.host,
                "run_dir": event.get("remote_run_dir"),
                "pid": event["remote_pid"],
            }
            key = ATTR_REMOTE + ("" if part.fold is None else f".fold{part.fold}")
            self.pause.run(
                fl.STORAGE,
                f"record where trial {rt.trial.number} of {rt.sweep.spec.name} runs",
                lambda: rt.trial.set_user_attr(key, where),
            )
            return
        if kind == protocol.EVENT_INFO and "resumed_from_epoch" in event:  # it continued from a checkpoint
            fold = "" if part.fold is None else f" fold {part.fold}"
            self.display.message(
                f"trial {rt.trial.number} of {rt.sweep.spec.name}{fold} resumed from its checkpoint "
                f"after epoch {event['resumed_from_epoch']}"
            )
            resumed = ATTR_RESUMED + ("" if part.fold is None else f".fold{part.fold}")
            self.pause.run(
                fl.STORAGE,
                f"record that trial {rt.trial.number} of {rt.sweep.spec.name} resumed",
                lambda: rt.trial.set_user_attr(resumed, event["resumed_from_epoch"]),
            )
        if part.ready_s is None and kind in (protocol.EVENT_INFO, protocol.EVENT_METRICS):
            part.ready_s = time.time() - job.started  # slot given → the child is set up and training
        if kind == protocol.EVENT_SUMMARY:
            part.summary = dict(event.get("metrics") or {})
            return
        if kind != protocol.EVENT_METRICS:
            return
        metrics = dict(event.get("metrics") or {})
        step = event.get("step")
        step = int(step) if isinstance(step, (int, float)) else part.steps
        part.steps += 1
        if step not in part.logged:  # a job resumed after its host was lost re-reports the steps before
            part.logged.add(step)
            part.unwritten.append(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if part.unwritten and not self.pause.blocking(fl.RUNS_DIR):  # a full disk: the lines wait in memory
            try:
                _write_metrics(part)
            except OSError as exc:
                cause = fl.transient(exc)
                if cause is None:
                    raise
                self.pause.trip(fl.RUNS_DIR, cause, f"write {part.run_dir.metrics_jsonl}")
            else:
                self.pause.ok(fl.RUNS_DIR)
        metric = rt.sweep.metric
        value = protocol.as_float(metrics.get(metric.name)) if metric is not None else None
        label = rt.sweep.spec.name if part.fold is None else f"{rt.sweep.spec.name} fold {part.fold}"
        self.display.trial_metric(label, rt.trial.number, step, metric.name if metric else None, value)
        if metric is None or value is None or rt.stopping is not None:
            return
        if not math.isfinite(value):
            rt.stopping = "nonfinite"
            self._stop_trial(rt)
            return
        part.values[step] = value
        part.last_value = value
        self._report(rt, step)

    def _report(self, rt: _Running, step: int) -> None:
        """Report the trial's value at ``step``: with folds, the mean over ALL its folds, once every fold has
        reached the step. With fewer slots than folds a fold still waiting for a slot holds the step back, so
        the stored curve, the pruner and the leaderboard never see a mean over a subset of the folds (a 1-fold
        mean is never compared with a 5-fold mean); a step some fold never reaches (it stopped early) is not
        reported."""
        if step in rt.reported:
            return
        values = [p.values[step] for p in rt.parts if step in p.values]
        if len(values) < len(rt.parts):
            return
        metric = rt.sweep.metric
        assert metric is not None
        value = statistics.fmean(values)
        rt.reported.add(step)
        rt.curve[step] = value
        rt.last_value = value
        if rt.best_value is None or (
            value > rt.best_value if metric.goal == "maximize" else value < rt.best_value
        ):
            rt.best_value, rt.best_step = value, step
        if self.pause.blocking(fl.STORAGE):
            return  # pruning waits for the storage; the curve is stored once it is back
        runner = rt.sweep
        try:
            stored = rt.trial._cached_frozen_trial.intermediate_values
            missed = [step] if len(stored) + 1 == len(rt.curve) else sorted(set(rt.curve) - set(stored))
            for s in missed:  # steps the storage missed while it was paused come first
                rt.trial.report(rt.curve[s], s)
            if runner.prune_view is not None:
                prune = bool(runner.pruner.prune(runner.prune_view, rt.trial._cached_frozen_trial))
            else:
                prune = rt.trial.should_prune()
        except Exception as exc:
            cause = fl.transient(exc)
            if cause is None:
                raise
            self.pause.trip(
                fl.STORAGE, cause, f"report step {step} of trial {rt.trial.number} of {runner.spec.name}"
            )
            return
        self.pause.ok(fl.STORAGE)
        if prune:
            rt.stopping = "pruned"
            self.display.trial_pruning(rt.sweep.spec.name, rt.trial.number, step)
            self._stop_trial(rt)

    def _on_exit(self, job: Job, rc: int) -> None:
        if job.lost is not None and job.key in self.jobs and self.jobs[job.key][0].stopping is None:
            self._host_lost(job)
            return
        found = self.jobs.pop(job.key, None)
        if found is None:
            return
        rt, part = found
        self.free.append(job.slot)
        part.rc = rc
        part.duration = (job.ended or time.time()) - job.started
        self.outcome.busy_s += part.duration
        part.state = "done" if rc == 0 else "failed"
        if rc != 0 and rt.stopping is None:
            # one fold failing fails the configuration: stop its other folds
            rt.stopping = "failed"
            rt.failed_part = part
            self._stop_trial(rt)
        elif rc == 0 and rt.stopping is None and rt.sweep.metric is not None and len(rt.parts) > 1:
            # a finished fold may complete steps the others are waiting on (early stopping ends folds early)
            for step in sorted({s for p in rt.parts for s in p.values} - rt.reported):
                self._report(rt, step)
        if rt.running() or (rt.pending() and rt.stopping is None):
            return
        metric = rt.sweep.metric
        if (
            not self.stopping
            and rt.sweep.spec.method != "bayes"
            and (metric is None or metric.target is None)
        ):
            # the freed slot gets its next trial before this one is written down (a grid or random sampler
            # does not need the result; a bayes sampler does, and so does a metric target, so there the
            # result is recorded first)
            self._fill_slots()
        self._finish(rt)

    def _host_lost(self, job: Job) -> None:
        """The job's host went away (not the trial's fault): the job goes back to the queue — same trial, same
        parameters, no attempt counted — and the host's slots rest until ``ssh HOST true`` answers again
        (the executor probes with exponential back-off; ``_fill_slots`` takes the slots back)."""
        rt, part = self.jobs.pop(job.key)
        host = job.slot.host
        resting = self._resting.setdefault(host, [])
        resting += [job.slot, *(s for s in self.free if s.host == host)]
        self.free = [s for s in self.free if s.host != host]
        part.state, part.job, part.steps, part.last_value, part.summary = "pending", None, 0, None, None
        part.values.clear()
        self.outcome.busy_s += (job.ended or time.time()) - job.started
        # the trial itself says which epoch it resumed from (the copy may hold a newer one than announced)
        resumes = "; it resumes from its checkpoint copied back" if job.checkpoint_epoch is not None else ""
        self.display.message(
            f"{job.lost}: trial {rt.trial.number} of {rt.sweep.spec.name} goes back to the queue "
            f"(not a failure{resumes})"
        )
        if hasattr(self.executor, "host_lost"):
            self.executor.host_lost(host)

    def _waiting_for_hosts(self) -> bool:
        """Nothing runs, work is left, and only resting hosts' slots could do it: wait for them."""
        if self.stopping or not self._resting or self.free:
            return False
        return any(t.pending() for t in self.trials.values()) or any(r.can_start() for r in self.runners)

    def _finish(self, rt: _Running) -> None:
        from optuna.trial import TrialState

        self.trials.pop(rt.key, None)
        runner = rt.sweep
        runner.running -= 1
        trial = rt.trial
        metric = runner.metric
        parts = rt.parts
        duration = time.time() - rt.started
        attrs: dict[str, Any] = {
            st.ATTR_EPOCHS: max((p.steps for p in parts), default=0),
            st.ATTR_DURATION: round(duration, 3),
            st.ATTR_GPU_S: round(sum(p.duration for p in parts), 3),
            st.ATTR_BEST_STEP: rt.best_step,
            st.ATTR_LAST_VALUE: rt.last_value,
            st.ATTR_STARTUP: max((p.ready_s for p in parts if p.ready_s is not None), default=None),
        }
        summary = _merge_summaries([p.summary for p in parts if p.summary is not None])
        if summary:
            attrs[st.ATTR_SUMMARY] = summary
        state: Any
        value: float | None = None
        reason: str | None = None
        disk_fault = False
        bad_input = False
        all_ok = all(p.state == "done" for p in parts)
        if rt.stopping == "pruned":
            state = TrialState.PRUNED
        elif rt.stopping == "interrupted" and not all_ok:
            state = TrialState.FAIL
            reason = "interrupted (Ctrl-C): will be re-run by the next launch"
            attrs[st.ATTR_INTERRUPTED] = True
        elif rt.stopping == "nonfinite":
            state = TrialState.FAIL
            reason = f"{metric.name if metric else 'metric'} became non-finite (NaN/inf)"
        elif not all_ok:
            state = TrialState.FAIL
            bad = rt.failed_part or next(p for p in parts if p.state != "done")
            rc = bad.rc if bad.rc is not None else -1
            where = "" if bad.fold is None else f" in fold {bad.fold}"
            reason = (
                f"exit code {rc}" if rc >= 0 else f"killed by signal {signal.Signals(-rc).name}"
            ) + where
            if rc == BAD_INPUT_RC and rt.stopping == "failed":  # the child rejected its input: same next time
                reason += " (bad input: not retried)"
                bad_input = True
            attrs[st.ATTR_STDERR] = bad.run_dir.tail("stderr", 30)[-4000:]
            if _OOM.search(attrs[st.ATTR_STDERR]):
                reason = "CUDA out of memory: " + reason
            disk = fl.probe_dir(bad.run_dir.path) if rt.stopping == "failed" else None
            if disk is not None:
                self.pause.trip(fl.RUNS_DIR, disk, f"run trial {trial.number} of {runner.spec.name}")
            elif rt.stopping == "failed":  # the disk was full while it ran (and may have space again by now)
                started = min((p.job.started for p in parts if p.job is not None), default=rt.started)
                seen = fl.DISK_TEXT.search(attrs[st.ATTR_STDERR])
                disk = self.pause.failed_since(fl.RUNS_DIR, started) or (seen.group(0) if seen else None)
            if disk is not None:  # it could not write (checkpoint, logs): not the trial's fault, run it again
                disk_fault, bad_input = True, False
                reason += f" while its run dir was unwritable ({disk}): runs again, not counted as an attempt"
                attrs[st.ATTR_INTERRUPTED] = True
        elif metric is None:
            state, value = TrialState.COMPLETE, 0.0
            attrs[st.ATTR_NO_METRIC] = True
        else:
            per_part = []
            for p in parts:
                v = protocol.as_float((p.summary or {}).get(metric.name))
                per_part.append(v if v is not None else p.last_value)
            if any(v is None or not math.isfinite(v) for v in per_part):
                state = TrialState.FAIL
                reason = f"finished without reporting a finite {metric.name!r}"
            else:
                state = TrialState.COMPLETE
                finite = [float(v) for v in per_part if v is not None]
                value = statistics.fmean(finite)
                if len(parts) > 1:
                    attrs[st.ATTR_FOLDS] = {str(p.fold): v for p, v in zip(parts, finite, strict=True)}
                    attrs[st.ATTR_FOLD_STD] = statistics.stdev(finite)
                    best, last = fold_best_last([p.values for p in parts], finite, metric.goal == "maximize")
                    attrs[st.ATTR_BEST_VALUE], attrs[st.ATTR_LAST_VALUE] = best, last
        if state == TrialState.FAIL:
            attrs[st.ATTR_REASON] = reason
        runner.live.pop(trial._trial_id, None)
        # the result goes to its run dir first (atomically: a relaunch imports it if the storage never takes
        # it), then to the storage; either one failing pauses the controller and is retried, never dropped
        result = {
            "sweep": runner.spec.name,
            "trial": trial.number,
            "attempt": rt.attempt,
            "state": state.name,
            "value": value,
            "reason": reason,
            "epochs": attrs[st.ATTR_EPOCHS],
            "best_step": rt.best_step,
            "duration_s": round(duration, 3),
            "summary": summary or None,
            "params": rt.nested,
            "folds": attrs.get(st.ATTR_FOLDS),
            "jobs": [
                {
                    "fold": p.fold,
                    "state": p.state,
                    "returncode": p.rc,
                    "slot": p.job.slot.id if p.job else None,
                    "duration_s": round(p.duration, 3),
                    "wandb_run_id": p.wandb_id,
                }
                for p in parts
            ],
            # what the storage gets, so that a relaunch can record it from here (SweepRunner._import_result)
            "record": {
                "attrs": {**rt.start_attrs, **attrs},
                "intermediate": {str(k): v for k, v in sorted(rt.curve.items())},
            },
        }

        def write_files() -> None:
            for p in parts:
                _write_metrics(p)
            rt.run_dir.write_result(result)

        written = self.pause.run(fl.RUNS_DIR, f"write {rt.run_dir.result_json}", write_files)
        runner.unrecorded.add(trial._trial_id)  # until the storage has it: _recover must not take it over
        recorded = self.pause.run(
            fl.STORAGE,
            f"record trial {trial.number} of {runner.spec.name} ({state.name})",
            _recorder(
                runner,
                trial,
                attrs if rt.start_recorded else {**rt.start_attrs, **attrs},
                state,
                value,
                rt.curve,
            ),
            result=True,
        )
        # bookkeeping: finished points, retries
        if state == TrialState.COMPLETE:
            runner.counts["complete"] += 1
            runner.finished += 1
            if value is not None:
                runner._update_best(value)
        elif state == TrialState.PRUNED:
            runner.counts["pruned"] += 1
            runner.finished += 1
        elif disk_fault and not self.stopping:
            runner.pending.appendleft((rt.params, rt.attempt))  # same attempt: the disk failed, not the trial
        elif attrs.get(st.ATTR_INTERRUPTED):
            pass  # the next launch re-runs it (same parameters, same attempt number)
        else:
            runner.counts["failed"] += 1
            if rt.attempt < runner.retries + 1 and not self.stopping and not bad_input:
                runner.pending.appendleft((rt.params, rt.attempt + 1))
                runner.counts["retried"] += 1
                batch = rt.nested.get("batch_size")
                oom = reason is not None and reason.startswith("CUDA out of memory")
                if oom and runner.spec.on_oom == "halve_batch_size" and isinstance(batch, int) and batch > 1:
                    runner.overrides[rt.point] = {"batch_size": batch // 2}
            else:
                runner.finished += 1
                if not self.stopping:  # no retry left: the launch ends with exit code 1 and says why
                    self.outcome.failures.append(
                        {
                            "sweep": runner.spec.name,
                            "trial": trial.number,
                            "reason": reason,
                            "line": _last_line(attrs.get(st.ATTR_STDERR) or ""),
                        }
                    )
        self.display.trial_finished(
            runner.spec.name, trial.number, state.name, value, duration, reason, attrs[st.ATTR_EPOCHS]
        )
        if not recorded and self.pause.blocking(fl.STORAGE):
            where = f"in {rt.run_dir.result_json}" if written else "in memory only (the runs dir fails too)"
            self.display.message(
                f"[{runner.spec.name}] trial {trial.number}: its result waits for the storage, kept {where}"
            )


def _last_line(text: str) -> str:
    """The child's last non-empty stderr line (a traceback's last line names the error), shortened."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def failure_summary(failures: list[dict[str, Any]]) -> list[str]:
    """One line per distinct failure (reason and the child's last stderr line), most frequent first:
    ``3× exit code 3: boom: simulated crash in epoch 1 [crashy: trial(s) 3, 4, 5]``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in failures:
        reason = re.sub(r" in fold \d+", "", str(f.get("reason") or "failed"))
        groups.setdefault((reason, str(f.get("line") or "")), []).append(f)
    lines = []
    for (reason, line), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        where = "; ".join(
            f"{sweep}: trial(s) {', '.join(str(m['trial']) for m in members if m['sweep'] == sweep)}"
            for sweep in dict.fromkeys(m["sweep"] for m in members)
        )
        lines.append(f"{len(members)}× {reason}" + (f": {line}" if line else "") + f" [{where}]")
    return lines


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


def _write_metrics(part: _Part) -> None:
    """Append the metric lines a job reported and its run dir has not taken yet (a full disk keeps them)."""
    if part.unwritten:
        with open(part.run_dir.metrics_jsonl, "a", encoding="utf-8") as fh:
            fh.write("".join(part.unwritten))
        part.unwritten.clear()


def _recorder(
    runner: SweepRunner,
    trial: Any,
    attrs: dict[str, Any],
    state: Any,
    value: float | None,
    curve: dict[int, float],
) -> Any:
    """The operation that records a finished trial in the storage; retried by the pause until it succeeds."""
    import optuna
    from optuna.trial import TrialState

    tries = [0]

    def record() -> None:
        storage = runner.study._storage
        stored = trial._cached_frozen_trial.intermediate_values
        tries[0] += 1
        if tries[0] > 1:  # a retry: the storage may have taken it before the connection dropped
            frozen = storage.get_trial(trial._trial_id)
            if frozen.state.is_finished():
                runner.unrecorded.discard(trial._trial_id)
                if frozen.state == state and (state != TrialState.COMPLETE or frozen.value == value):
                    return  # ours
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {trial.number} was finished by another controller ({frozen.state.name})"
                )
            stored = frozen.intermediate_values
        for step in sorted(set(curve) - set(stored)):  # what it missed while paused
            storage.set_trial_intermediate_value(trial._trial_id, step, curve[step])
            trial._cached_frozen_trial.intermediate_values[step] = curve[step]
        st.set_user_attrs(trial, attrs)
        if state == TrialState.COMPLETE:
            runner.study.tell(trial, value)
        else:
            runner.study.tell(trial, state=state)
        runner.unrecorded.discard(trial._trial_id)
        if runner.prune_view is not None:
            with contextlib.suppress(Exception):  # the view refreshes from the storage anyway
                runner.prune_view.add_finished(storage.get_trial(trial._trial_id))

    return record


def _never_ran(runner: SweepRunner, trial_id: int) -> Any:
    """Mark a trial the storage half-made (it failed while the trial was asked for) as failed, not an attempt."""

    def mark() -> None:
        from optuna.trial import TrialState

        storage = runner.study._storage
        if storage.get_trial(trial_id).state.is_finished():
            return
        storage.set_trial_user_attr(trial_id, st.ATTR_INTERRUPTED, True)
        storage.set_trial_user_attr(
            trial_id, st.ATTR_REASON, "never ran: the storage failed while it was created"
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)

    return mark


def _merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
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
