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

Where the parts live: ``sweep.py`` (one sweep's study and queue of work: ``SweepRunner``), ``coordination.py``
(other controllers), ``record.py`` (writing a finished trial down), ``options.py`` (``LaunchOptions``,
``Outcome``); this module is the event loop and the life of one trial.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import faults as fl
from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.coordination import Coordination, _TakenOver
from orchestrator.executors import Job, get_executor
from orchestrator.leases import open_leases
from orchestrator.options import LaunchOptions, Outcome
from orchestrator.record import _merge_summaries, _never_ran, _recorder, _write_metrics
from orchestrator.slots import Slot
from orchestrator.sweep import ATTR_REMOTE, ATTR_RESUMED, SweepRunner, point_key
from orchestrator.trial import protocol
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import PROJECT_ROOT, RunDir, atomic_write_json
from orchestrator.trial.spec import TrialMetric, TrialSpec
from orchestrator.wandb_env import child_env, new_run_id

__all__ = ["Controller", "LaunchOptions", "Outcome", "SweepRunner", "point_key"]

#: seconds after Ctrl-C/SIGTERM after which jobs that never reported their end are left (recorded interrupted)
STOP_LIMIT_S = 30.0

BAD_INPUT_RC = 2  # a child that exits 2 rejected its input (the house convention): retrying cannot help
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")


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
    stopping: str | None = None  # pruned | interrupted | nonfinite | failed | protocol | timeout
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
        return [p for p in self.parts if p.state == "pending"]

    def running(self) -> list[_Part]:
        return [p for p in self.parts if p.state == "running"]


class Controller(Coordination):
    """Runs the sweeps of one launch on a set of slots."""

    def __init__(self, sweeps: list[Any], opts: LaunchOptions, display: Any) -> None:
        self.specs = sweeps
        self.opts = opts
        self.display = display
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.executor = get_executor(
            opts.executor, self.events, hosts=opts.hosts, warm=opts.workers == "warm", slurm=opts.slurm
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
        self.signum = 0
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
        from orchestrator.fingerprint import check as check_fingerprints

        # a sweep changed since its study was made: exit 2 (or a fresh study with --new), before anything starts
        self.specs = check_fingerprints(storage, self.specs, self.opts.new, say=self.display.message)
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
        stop_sent, stop_at = False, 0.0
        try:
            while True:
                if self.stopping and not stop_sent:
                    stop_sent = True
                    stop_at = time.monotonic()
                    self._stop_all()
                if stop_sent and self.jobs and time.monotonic() - stop_at > STOP_LIMIT_S:
                    self._give_up_on_jobs()
                if self.pause.due():
                    self.pause.retry()  # the storage or runs dir failed: retry what waits (back-off)
                if not self.stopping:
                    self._watch_others_unless_paused()
                    self._fill_slots()
                    self._check_timeouts()
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
        self.outcome.signal = self.signum
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

    def _on_signal(self, signum: int, frame: Any) -> None:
        # runs in the main thread between bytecodes: only set a flag, the loop does the rest
        self.stopping = True
        self.signum = self.signum or signum

    def _check_timeouts(self) -> None:
        """A job running longer than its sweep's ``timeout:`` stops its trial, which FAILs with reason timeout."""
        now = time.time()
        for rt, part in list(self.jobs.values()):
            limit = getattr(rt.sweep.spec, "timeout_s", None)
            if (
                limit is None
                or rt.stopping is not None
                or part.job is None
                or now - part.job.started <= limit
            ):
                continue
            rt.stopping = "timeout"
            where = "" if part.fold is None else f" (fold {part.fold})"
            rt.why = f"timeout: ran longer than {_duration(limit)}{where}"
            self.display.message(f"[{rt.sweep.spec.name}] trial {rt.trial.number}: {rt.why}: stopping it")
            self._stop_trial(rt)

    def _give_up_on_jobs(self) -> None:
        """Stopping, and some jobs have not reported their exit long after SIGKILL: they are recorded as
        interrupted (re-run by the next launch), so that Ctrl-C and SIGTERM always end in bounded time."""
        for _, part in list(self.jobs.values()):
            if part.job is not None:
                self.display.message(f"job {part.job.key} did not report its end after SIGKILL: leaving it")
                self._on_exit(part.job, -signal.SIGKILL)

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
                if rt.stopping == "pruned":  # the trial closes its W&B run as finished, tagged pruned
                    with contextlib.suppress(OSError):
                        why = {"reason": "pruned", "step": max(rt.curve, default=None)}
                        atomic_write_json(part.run_dir.stop_json, why, durable=False)
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
            trial_spec = TrialSpec(
                sweep=spec.name,
                trial=number,
                attempt=rt.attempt,
                fold=part.fold,
                experiment=spec.experiment,
                params=nested,
                metric=TrialMetric(spec.metric.name, spec.metric.goal) if spec.metric else None,
                project=spec.project,
                data_root=getattr(spec, "data_root", None),
                seed=trial_seed(nested),
                slot=slot.id,
            )
            part.run_dir.create()
            part.run_dir.write_trial(trial_spec)
            job = Job(key=f"{rt.key}{suffix}", slot=slot, run_dir=part.run_dir, argv=[], spec=trial_spec)
            job.argv = self._argv(spec, part.run_dir, nested)
            env = self._env(
                spec, slot, part.run_dir, number, part.wandb_id, part.fold, params=trial_spec.params
            )
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
            from orchestrator.trial.wandb_bridge import BRIDGE_DIR, ENV_ENABLE, ENV_METRIC

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
        self,
        spec: Any,
        slot: Slot,
        run_dir: RunDir,
        number: int,
        wandb_id: str,
        fold: int | None = None,
        *,
        params: dict[str, Any],  # the trial's (TrialSpec.params): a program's W&B parameters file
    ) -> dict[str, str]:
        env = self._process_env(spec, slot)
        env.update({"ORCHESTRATE_RUN_DIR": str(run_dir.path.resolve()), "ORCHESTRATE_TRIAL": str(number)})
        tags = [f"sweep:{spec.name}", f"slot:{slot.id}"] + ([f"fold:{fold}"] if fold is not None else [])
        param_path: Path | None = None
        # every run of a sweep carries its sweep id (kept in the study), so W&B groups them as one sweep
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
        if not spec.experiment:
            # a user's W&B program: the parameters file a W&B agent gives (wandb_env.py)
            param_path = sweep_param_path(run_dir.path.resolve(), sweep_id, wandb_id)
            write_sweep_params(param_path, params)
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
                job_type=self._job_type(spec, fold),
            )
        )
        return env

    def _job_type(self, spec: Any, fold: int | None) -> str:
        """The W&B run's job_type: finetune (a second stage), pretrain (a first), fold (one of k), train."""
        if getattr(spec, "depends_on", None):
            return "finetune"
        if any(getattr(s, "depends_on", None) == spec.name for s in self.specs):
            return "pretrain"
        return "train" if fold is None else "fold"

    # ----- what the children say -----
    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        found = self.jobs.get(job.key)
        if found is None:
            return
        rt, part = found
        kind = event.get("event")
        if kind == protocol.INVALID:
            self._bad_output(rt, part, event)
            return
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
        if kind == protocol.EVENT_INFO and isinstance(event.get("epochs"), int):  # the view's "epoch 3/4"
            label = rt.sweep.spec.name if part.fold is None else f"{rt.sweep.spec.name} fold {part.fold}"
            self.display.trial_epochs(label, rt.trial.number, int(event["epochs"]))
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

    def _bad_output(self, rt: _Running, part: _Part, event: dict[str, Any]) -> None:
        """A protocol line that is not a protocol event: that trial fails (its reason quotes the line)."""
        if rt.stopping is not None:
            return
        where = "" if part.fold is None else f" (fold {part.fold})"
        rt.stopping = "protocol"
        rt.why = f"bad protocol line{where}: {event.get('error')}: {event.get('line')}"
        self._stop_trial(rt)

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
            stored = oc.frozen(rt.trial).intermediate_values
            missed = [step] if len(stored) + 1 == len(rt.curve) else sorted(set(rt.curve) - set(stored))
            for s in missed:  # steps the storage missed while it was paused come first
                rt.trial.report(rt.curve[s], s)
            if runner.prune_view is not None:
                prune = bool(runner.pruner.prune(runner.prune_view, oc.frozen(rt.trial)))
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
            attrs.update(st.key_metrics(summary))  # top-level: sortable columns in optuna-dashboard
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
        elif rt.stopping in ("protocol", "timeout"):
            state = TrialState.FAIL
            reason = rt.why
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
        runner.live.pop(oc.trial_id(trial), None)
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
        runner.unrecorded.add(oc.trial_id(trial))  # until the storage has it: _recover must not take it over
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
            if (
                rt.attempt < runner.retries + 1
                and not self.stopping
                and not bad_input
                and (rt.stopping != "timeout" or runner.spec.retry_on_timeout)
            ):
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


def _duration(seconds: float) -> str:
    """90 → '90s', 5400 → '1.5h' (how a timeout is said back)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


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
