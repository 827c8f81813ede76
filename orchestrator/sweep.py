"""One sweep's study and its queue of work in a launch: ``SweepRunner``.

It reads the study at start-up (and while waiting for other controllers) and works out what is left: points
COMPLETE or PRUNED are done, FAILed points are re-run with the same parameters until ``retries`` is spent,
trials a dead controller left RUNNING are interrupted and re-run, a grid runs each point exactly once. It hands
the controller the next trial (grid points and retries through ``_FixedSampler``), serves the pruners that
only read trials from memory (``_PruneView``), and resolves a dependent sweep's parent checkpoints.
"""

from __future__ import annotations

import datetime
import json
import math
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

from orchestrator import faults as fl
from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.claims import open_claims
from orchestrator.options import LaunchOptions
from orchestrator.pruners import get_pruner
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import RunDir

ATTR_REMOTE = st.A + "remote"  # where a remote job runs: {"host", "run_dir", "pid"} (per fold)
ATTR_RESUMED = st.A + "resumed_from_epoch"  # the job continued from a checkpoint of this epoch (per fold)


def point_key(flat_params: dict[str, Any]) -> str:
    """The identity of a parameter point: canonical JSON of the flat parameters."""
    return json.dumps(flat_params, sort_keys=True, separators=(",", ":"), default=str)


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
            oc.storage(study).set_trial_user_attr(oc.trial_id(trial), st.ATTR_CONTROLLER, self.owner)
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


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
        running = [oc.frozen(t) for t in self._runner.live.values()]
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
        if self.metric is not None and self.study.metric_names != [self.metric.name]:
            with warnings.catch_warnings():  # experimental in Optuna: optuna-dashboard labels the objective
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([self.metric.name])
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

        self.pending.clear()
        self.resume_from.clear()
        self.finished = 0
        self.elsewhere = set()
        if self.claims is not None:
            self.claims.blocked_by.clear()
        points, taken = self._scan_trials()
        done = self._plan_points(points)
        if self.spec.method == "grid":
            for flat in self.spec.parameters.grid():
                key = point_key(flat)
                if key not in done:
                    done.add(key)
                    self.pending.append((self._optuna_params(flat), 1))
        for owner, n in taken.items():
            self.notes.append(f"[{self.spec.name}] {self._describe(owner)}: taking over {n} trial(s)")

    def _scan_trials(self) -> tuple[dict[str, list[Any]], dict[str, int]]:
        """The study's trials by point (trials a dead controller left RUNNING taken over or recorded first),
        and how many were taken from each dead owner."""
        from optuna.trial import TrialState

        taken: dict[str, int] = {}
        points: dict[str, list[Any]] = {}
        for t in self.study.get_trials(deepcopy=False):
            if (
                t.state == TrialState.RUNNING
                and oc.trial_id(t) not in self.live
                and oc.trial_id(t) not in self.unrecorded
            ):
                owner = t.user_attrs.get(st.ATTR_CONTROLLER)
                if st.owner_alive(owner, self.leases) or self._just_asked(t):
                    self.elsewhere.add(str(owner))
                else:
                    # finished but never recorded (its controller was paused on the storage): record it from
                    # its result.json; else it is interrupted and runs again
                    if not self._import_result(t) and self._interrupt(t):
                        taken[str(owner)] = taken.get(str(owner), 0) + 1
                    t = oc.storage(self.study).get_trial(oc.trial_id(t))
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
        return points, taken

    def _plan_points(self, points: dict[str, list[Any]]) -> set[str]:
        """Count the finished points, queue the ones to (re-)run; the keys of every point seen."""
        from optuna.trial import TrialState

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
        return done

    def _interrupt(self, t: Any) -> bool:
        """Mark a trial its dead controller left RUNNING as interrupted (FAIL, not an attempt): it is re-run.
        False when another controller did so first."""
        import optuna

        storage = oc.storage(self.study)
        try:
            storage.set_trial_user_attr(oc.trial_id(t), st.ATTR_INTERRUPTED, True)
            storage.set_trial_user_attr(oc.trial_id(t), st.ATTR_REASON, "controller died while it ran")
            storage.set_trial_state_values(oc.trial_id(t), optuna.trial.TrialState.FAIL)
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

        storage = oc.storage(self.study)
        curve = {int(k): float(v) for k, v in (record.get("intermediate") or {}).items()}
        values = None
        if state == TrialState.COMPLETE:
            values = [float(result["value"])]
        elif state == TrialState.PRUNED and curve and math.isfinite(curve[max(curve)]):
            values = [curve[max(curve)]]  # what Optuna's tell gives a pruned trial: its last reported value
        try:
            for step, v in sorted(curve.items()):
                if step not in t.intermediate_values:
                    storage.set_trial_intermediate_value(oc.trial_id(t), step, v)
            for key, value in {**attrs, st.ATTR_IMPORTED: str(run_dir.result_json)}.items():
                storage.set_trial_user_attr(oc.trial_id(t), key, value)
            storage.set_trial_state_values(oc.trial_id(t), state, values)
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
        parent's fold-k checkpoint — the parent that held out the same subjects (``spec/chains.check_chain``
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
                self.abandoned.append(oc.trial_id(trial))
            raise
        finally:
            self.sampler.fixed = None
        self.live[oc.trial_id(trial)] = trial
        return trial, dict(trial.params), values, attempt

    def _ask(self) -> Any:
        """``study.ask()`` minus its look for WAITING (enqueued) trials — the controller never enqueues, and
        that look re-reads every running trial from the storage."""
        import optuna

        study = self.study
        try:
            oc.forget_cached_trials(study)  # as ask() does: samplers see the latest trials
            trial_id = oc.storage(study).create_new_trial(oc.study_id(study))
        except AttributeError:  # another Optuna version: the public path
            return study.ask()
        try:
            return optuna.Trial(study, trial_id)
        except BaseException:
            self.abandoned.append(trial_id)  # created, but the storage failed before it got its owner
            raise
