"""The controller: one process, the only writer of the Optuna studies, event-driven.

It fills every free slot with a trial, and starts the next one the moment a slot frees: the executors' reader
threads put events on one queue and the controller blocks on it (no sleep-polling). On each metric line it
reports to Optuna and asks the pruner; a pruned child gets SIGTERM, a grace period, then SIGKILL. When a child
exits it tells Optuna the final state (COMPLETE with the value, PRUNED, FAIL with the reason and stderr tail).

Exact accounting: every trial carries the identity of its parameter point (``orchestrate.point``). On start,
the controller reads the study: points COMPLETE or PRUNED are done; points that FAILed are re-run with the
same parameters until ``retries`` is spent; trials left RUNNING by a controller that died are marked FAIL
(``interrupted``, not counted as an attempt) and re-run. A grid of N points runs each point exactly once.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import protocol
from orchestrator import storage as st
from orchestrator.errors import RunError
from orchestrator.executors import Job, get_executor
from orchestrator.pruners import get_pruner
from orchestrator.rundir import RunDir
from orchestrator.slots import Slot
from orchestrator.wandb_env import child_env, new_run_id

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def point_key(flat_params: dict[str, Any]) -> str:
    """The identity of a parameter point: canonical JSON of the flat parameters."""
    return json.dumps(flat_params, sort_keys=True, separators=(",", ":"), default=str)


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


@dataclass
class Outcome:
    """What a finished launch did, per sweep."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0
    busy_s: float = 0.0  # sum of trial durations
    slots: int = 0

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
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


@dataclass
class _Running:
    """Controller-side state of one running trial."""

    sweep: SweepRunner
    trial: Any  # optuna.Trial
    point: str
    params: dict[str, Any]  # flat, optuna's view (what a retry re-uses)
    attempt: int
    job: Job
    steps: int = 0
    last_value: float | None = None
    best_value: float | None = None
    best_step: int | None = None
    summary: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    wandb_id: str = ""
    nested: dict[str, Any] = field(default_factory=dict)


class SweepRunner:
    """One sweep's study and its queue of work in this launch."""

    def __init__(self, spec: Any, storage: Any, opts: LaunchOptions) -> None:
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
                f"storage {opts.storage}: cannot create or load the study {spec.name!r}: {exc}"
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
        self.counts = {"complete": 0, "pruned": 0, "failed": 0, "retried": 0, "recovered": 0}
        self.exhausted = False
        self._recover()

    # ----- start-up: read the study, work out what is left -----
    def _recover(self) -> None:
        import optuna
        from optuna.trial import TrialState

        points: dict[str, list[Any]] = {}
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING and not st.owner_alive(t.user_attrs.get(st.ATTR_CONTROLLER)):
                storage = self.study._storage
                storage.set_trial_user_attr(t._trial_id, st.ATTR_INTERRUPTED, True)
                storage.set_trial_user_attr(t._trial_id, st.ATTR_REASON, "controller died while it ran")
                storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
                self.counts["recovered"] += 1
                t = self.study._storage.get_trial(t._trial_id)
            if t.state == TrialState.WAITING:
                continue
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
            if TrialState.RUNNING in states:  # another live controller runs it
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
        if self.spec.method == "grid":
            for flat in self.spec.parameters.grid():
                key = point_key(flat)
                if key not in done:
                    done.add(key)
                    self.pending.append((self._optuna_params(flat), 1))

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

    # ----- what to run next -----
    def target_reached(self) -> bool:
        if self.metric is None or self.metric.target is None or self.best is None:
            return False
        t = float(self.metric.target)
        return self.best >= t if self.metric.goal == "maximize" else self.best <= t

    def can_start(self) -> bool:
        if self.target_reached():
            return False
        if self.cap is not None and self.finished + self.running >= self.cap:
            return False
        if self.pending:
            return True
        return self.spec.method != "grid"

    def done(self) -> bool:
        return self.running == 0 and not self.can_start()

    def next_trial(self) -> tuple[Any, dict[str, Any], dict[str, Any], int] | None:
        """Ask Optuna for the next trial: (trial, optuna params, flat values, attempt)."""
        if not self.can_start():
            return None
        if self.pending:
            fixed, attempt = self.pending.popleft()
            self.sampler.fixed = fixed
        else:
            attempt = 1
            self.sampler.fixed = None
        try:
            trial = self.study.ask()
            values = self.spec.parameters.sample(trial, grid=self.spec.method == "grid")
        finally:
            self.sampler.fixed = None
        return trial, dict(trial.params), values, attempt


class Controller:
    """Runs the sweeps of one launch on a set of slots."""

    def __init__(self, sweeps: list[Any], opts: LaunchOptions, display: Any) -> None:
        self.specs = sweeps
        self.opts = opts
        self.display = display
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.executor = get_executor(opts.executor, self.events)
        self.free: list[Slot] = list(opts.slots)
        self.running: dict[str, _Running] = {}
        self.controller_id = st.controller_id()
        self.cache_dir = opts.cache_dir or Path(
            os.environ.get("ORCHESTRATE_CACHE_DIR", Path.home() / ".cache" / "orchestrate")
        )
        self.stopping = False
        self.outcome = Outcome(slots=len(opts.slots))
        self.runners: list[SweepRunner] = []

    # ----- main loop -----
    def run(self) -> Outcome:
        t0 = time.time()
        storage = st.get_storage(self.opts.storage)
        self.runners = [SweepRunner(spec, storage, self.opts) for spec in self.specs]
        for r in self.runners:
            self.display.sweep_ready(r.spec.name, r)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        stop_sent = False
        try:
            while True:
                if self.stopping and not stop_sent:
                    stop_sent = True
                    self._stop_all()
                if not self.stopping:
                    self._fill_slots()
                if not self.running:
                    break
                try:
                    # blocks until a child reports or exits; the timeout only refreshes the live view and
                    # notices Ctrl-C (a signal handler must not touch the queue's lock)
                    kind, job, payload = self.events.get(timeout=0.5)
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
        self.outcome.wall_s = time.time() - t0
        self.outcome.interrupted = self.stopping
        for r in self.runners:
            self.outcome.counts[r.spec.name] = dict(r.counts, finished=r.finished)
        return self.outcome

    def _on_signal(self, signum: int, frame: Any) -> None:
        # runs in the main thread between bytecodes: only set a flag, the loop does the rest
        self.stopping = True

    def _stop_all(self) -> None:
        self.display.message(f"stopping {len(self.running)} running trial(s) …")
        for rt in self.running.values():
            if rt.job.stopping is None:
                rt.job.stopping = "interrupted"
            self.executor.stop(rt.job, grace=min(self.opts.grace, 5.0))

    def _fill_slots(self) -> None:
        while self.free:
            runner = next((r for r in self.runners if r.can_start()), None)
            if runner is None:
                return
            slot = self.free.pop(0)
            try:
                self._start(runner, slot)
            except Exception:
                self.free.insert(0, slot)
                raise

    # ----- one trial -----
    def _start(self, runner: SweepRunner, slot: Slot) -> None:
        nxt = runner.next_trial()
        if nxt is None:
            self.free.insert(0, slot)
            return
        trial, optuna_params, flat, attempt = nxt
        spec = runner.spec
        nested = spec.parameters.nest(flat)
        run_dir = RunDir.for_trial(self.opts.runs_dir.resolve(), spec.name, trial.number).create()
        wandb_id = new_run_id()
        key = point_key(flat)
        for k, v in {
            st.ATTR_POINT: key,
            st.ATTR_PARAMS: nested,
            st.ATTR_ATTEMPT: attempt,
            st.ATTR_CONTROLLER: self.controller_id,
            st.ATTR_RUN_DIR: str(run_dir.path),
            st.ATTR_SLOT: slot.id,
            st.ATTR_HOST: slot.host,
            st.ATTR_WANDB: wandb_id,
        }.items():
            trial.set_user_attr(k, v)
        trial_doc = {
            "sweep": spec.name,
            "trial": trial.number,
            "attempt": attempt,
            "experiment": spec.experiment,
            "params": nested,
            "metric": {"name": spec.metric.name, "goal": spec.metric.goal} if spec.metric else None,
            "project": spec.project,
            "data_root": getattr(spec, "data_root", None),
            "seed": trial.number,
            "slot": slot.id,
        }
        run_dir.write_trial(trial_doc)
        argv = self._argv(spec, run_dir, nested)
        env = self._env(spec, slot, run_dir, trial.number, wandb_id)
        job = Job(key=f"{spec.name}#{trial.number}", slot=slot, run_dir=run_dir, argv=argv)
        rt = _Running(
            sweep=runner,
            trial=trial,
            point=key,
            params=optuna_params,
            attempt=attempt,
            job=job,
            wandb_id=wandb_id,
            nested=nested,
        )
        self.running[job.key] = rt
        runner.running += 1
        self.display.trial_started(spec.name, trial.number, slot.id, flat, attempt)
        self.executor.submit(job, env, PROJECT_ROOT if spec.experiment else Path.cwd())

    def _argv(self, spec: Any, run_dir: RunDir, nested: dict[str, Any]) -> list[str]:
        if spec.experiment:
            return [sys.executable, "-u", "-m", f"experiments.{spec.experiment}", str(run_dir.path)]
        from orchestrator.command import build_command

        # like a W&B agent: a relative program is found from the directory `launch` runs in
        return build_command(
            spec, nested, program_path_root=Path.cwd(), args_json_file=run_dir.args_json, run_dir=run_dir.path
        )

    def _env(self, spec: Any, slot: Slot, run_dir: RunDir, number: int, wandb_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(slot.env())
        pythonpath = [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "ORCHESTRATE_RUN_DIR": str(run_dir.path.resolve()),
                "ORCHESTRATE_SWEEP": spec.name,
                "ORCHESTRATE_TRIAL": str(number),
                "ORCHESTRATE_CACHE_DIR": str(self.cache_dir),
            }
        )
        tags = [f"sweep:{spec.name}", f"slot:{slot.id}"]
        env.update(
            child_env(
                mode=self.opts.wandb_mode,
                run_dir=run_dir.path.resolve(),
                project=spec.project,
                entity=spec.entity,
                group=spec.name,
                name=f"{spec.name}-{number}",
                run_id=wandb_id,
                tags=tags,
                cache_dir=self.cache_dir,
            )
        )
        return env

    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        rt = self.running.get(job.key)
        if rt is None:
            return
        kind = event.get("event")
        if kind == protocol.EVENT_SUMMARY:
            rt.summary = dict(event.get("metrics") or {})
            return
        if kind == protocol.EVENT_INFO:
            rt.info.update({k: v for k, v in event.items() if k != "event"})
            return
        if kind != protocol.EVENT_METRICS:
            return
        metrics = dict(event.get("metrics") or {})
        step = event.get("step")
        step = int(step) if isinstance(step, (int, float)) else rt.steps
        rt.steps += 1
        rt.last_metrics = metrics
        with open(job.run_dir.metrics_jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        metric = rt.sweep.metric
        value = protocol.as_float(metrics.get(metric.name)) if metric is not None else None
        self.display.trial_metric(
            rt.sweep.spec.name, rt.trial.number, step, metric.name if metric else None, value
        )
        if metric is None or value is None or job.stopping is not None:
            return
        if not math.isfinite(value):
            job.stopping = "nonfinite"
            self.executor.stop(job, grace=self.opts.grace)
            return
        rt.last_value = value
        if rt.best_value is None or (
            value > rt.best_value if metric.goal == "maximize" else value < rt.best_value
        ):
            rt.best_value, rt.best_step = value, step
        rt.trial.report(value, step)
        if rt.trial.should_prune():
            job.stopping = "pruned"
            self.display.trial_pruning(rt.sweep.spec.name, rt.trial.number, step)
            self.executor.stop(job, grace=self.opts.grace)

    def _on_exit(self, job: Job, rc: int) -> None:
        from optuna.trial import TrialState

        rt = self.running.pop(job.key, None)
        if rt is None:
            return
        runner = rt.sweep
        runner.running -= 1
        self.free.append(job.slot)
        duration = (job.ended or time.time()) - job.started
        self.outcome.busy_s += duration
        trial = rt.trial
        metric = runner.metric
        attrs: dict[str, Any] = {
            st.ATTR_EPOCHS: rt.steps,
            st.ATTR_DURATION: round(duration, 3),
            st.ATTR_BEST_STEP: rt.best_step,
            st.ATTR_LAST_VALUE: rt.last_value,
        }
        if rt.summary is not None:
            attrs[st.ATTR_SUMMARY] = rt.summary
        state: Any
        value: float | None = None
        reason: str | None = None
        if job.stopping == "pruned":
            state = TrialState.PRUNED
        elif job.stopping == "interrupted" and rc != 0:
            state = TrialState.FAIL
            reason = "interrupted (Ctrl-C): will be re-run by the next launch"
            attrs[st.ATTR_INTERRUPTED] = True
        elif job.stopping == "nonfinite":
            state = TrialState.FAIL
            reason = f"{metric.name if metric else 'metric'} became non-finite (NaN/inf)"
        elif rc != 0:
            state = TrialState.FAIL
            reason = f"exit code {rc}" if rc > 0 else f"killed by signal {signal.Signals(-rc).name}"
        elif metric is None:
            state, value = TrialState.COMPLETE, 0.0
            attrs[st.ATTR_NO_METRIC] = True
        else:
            summary_value = protocol.as_float((rt.summary or {}).get(metric.name))
            value = summary_value if summary_value is not None else rt.last_value
            if value is None or not math.isfinite(value):
                state = TrialState.FAIL
                reason = f"finished without reporting a finite {metric.name!r}"
                value = None
            else:
                state = TrialState.COMPLETE
        if state == TrialState.FAIL:
            attrs[st.ATTR_REASON] = reason
            attrs[st.ATTR_STDERR] = job.run_dir.tail("stderr", 30)[-4000:]
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        try:
            if state == TrialState.COMPLETE:
                runner.study.tell(trial, value)
            else:
                runner.study.tell(trial, state=state)
        except Exception as exc:  # the storage went away: keep the result on disk, say so
            self.display.message(f"could not record trial {trial.number} in the storage: {exc}")
        result = {
            "sweep": runner.spec.name,
            "trial": trial.number,
            "attempt": rt.attempt,
            "state": state.name,
            "value": value,
            "reason": reason,
            "returncode": rc,
            "epochs": rt.steps,
            "best_step": rt.best_step,
            "duration_s": round(duration, 3),
            "summary": rt.summary,
            "params": rt.nested,
            "slot": job.slot.id,
            "wandb_run_id": rt.wandb_id,
        }
        job.run_dir.write_result(result)
        # bookkeeping: finished points, retries
        if state == TrialState.COMPLETE:
            runner.counts["complete"] += 1
            runner.finished += 1
            if value is not None:
                runner._update_best(value)
        elif state == TrialState.PRUNED:
            runner.counts["pruned"] += 1
            runner.finished += 1
        elif attrs.get(st.ATTR_INTERRUPTED):
            pass  # the next launch re-runs it (same parameters, same attempt number)
        else:
            runner.counts["failed"] += 1
            if rt.attempt < runner.retries + 1 and not self.stopping:
                runner.pending.appendleft((rt.params, rt.attempt + 1))
                runner.counts["retried"] += 1
            else:
                runner.finished += 1
        self.display.trial_finished(
            runner.spec.name, trial.number, state.name, value, duration, reason, rt.steps
        )
