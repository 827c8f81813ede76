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

Where the parts live: ``sweep.py`` (one sweep's study and queue of work: ``SweepRunner``), ``running.py`` (a
running trial and its jobs), ``progress.py`` (what the children say; stopping a trial), ``childenv.py`` (a
trial's command line and environment), ``outcome.py`` (how a finished trial ended, decided without I/O),
``record.py`` (writing it down), ``coordination.py`` (other controllers), ``messages.py`` (what is said),
``states.py`` (the string constants), ``options.py`` (``LaunchOptions``, ``Outcome``); this module is the event
loop and the life of one trial.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

from orchestrator import faults as fl
from orchestrator import messages as msg
from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.childenv import ChildEnv
from orchestrator.coordination import Coordination, _TakenOver
from orchestrator.executors import Executor, Job, get_executor
from orchestrator.leases import open_leases
from orchestrator.messages import failure_summary
from orchestrator.options import STOP_SIGNALS, LaunchOptions, Outcome
from orchestrator.outcome import BAD_INPUT_RC, decide, fold_best_last, follow_up
from orchestrator.progress import Progress
from orchestrator.record import _never_ran, account, record_trial
from orchestrator.running import DEFAULT_SEED, _Part, _Running, carry_over, gather, trial_seed
from orchestrator.slots import Slot
from orchestrator.states import PartState, QueueKind, Stop
from orchestrator.sweep import SweepRunner, point_key
from orchestrator.trial.errors import RunError
from orchestrator.trial.rundir import PROJECT_ROOT, RunDir
from orchestrator.trial.spec import TrialMetric, TrialSpec
from orchestrator.wandb_env import new_run_id

__all__ = [
    "BAD_INPUT_RC",
    "DEFAULT_SEED",
    "Controller",
    "LaunchOptions",
    "Outcome",
    "SweepRunner",
    "failure_summary",
    "fold_best_last",
    "point_key",
    "trial_seed",
]

#: seconds after Ctrl-C/SIGTERM after which jobs that never reported their end are left (recorded interrupted)
STOP_LIMIT_S = 30.0


class Controller(Coordination, ChildEnv, Progress):
    """Runs the sweeps of one launch on a set of slots."""

    def __init__(self, sweeps: list[Any], opts: LaunchOptions, display: Any) -> None:
        self.specs = sweeps
        self.opts = opts
        self.display = display
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.executor: Executor = get_executor(
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
        self._open_studies()
        old = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self._loop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.executor.close()
        return self._wrap_up(t0)

    def _open_studies(self) -> None:
        """Check the sweeps against their studies, start the heartbeat, read the studies (the sweeps' queues),
        and clean up after a controller that died (its orphaned jobs)."""
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
        if orphans:
            for note in self.executor.cleanup(orphans):
                self.display.message(note)

    def _loop(self) -> None:
        """Until nothing runs and nothing waits: fill free slots, and handle what the children say."""
        stop_sent, stop_at = False, 0.0
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
                return
            wait = self.pause.seconds_to_retry()
            try:
                # blocks until a child reports or exits; the timeout only refreshes the live view,
                # notices Ctrl-C (a signal handler must not touch the queue's lock) and paces retries
                kind, job, payload = self.events.get(timeout=0.5 if wait is None else min(0.5, wait + 0.01))
            except queue.Empty:
                self.display.tick()
                continue
            if kind == QueueKind.EVENT:
                self._on_event(job, payload)
            elif kind == QueueKind.EXIT:
                self._on_exit(job, int(payload))

    def _wrap_up(self, t0: float) -> Outcome:
        """The launch's outcome, and what it leaves undone (results the storage did not take, sweeps blocked)."""
        self.outcome.wall_s = time.time() - t0
        self.outcome.interrupted = self.stopping
        self.outcome.signal = self.signum
        self.outcome.unrecorded = self.pause.waiting_results()
        if self.outcome.unrecorded:
            self.display.message(msg.unrecorded(self.outcome.unrecorded, self.pause.faults.values()))
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
                rt.stopping = Stop.INTERRUPTED
            self._stop_trial(rt, grace=min(self.opts.grace, 5.0))
            if not rt.running():  # none of its jobs had started: nothing will exit, record it now
                self._finish(rt)

    def _fill_slots(self) -> None:
        for host in self.executor.hosts_back():
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
                self._storage_failed_starting(runner, cause)
                return
            if rt is None:
                continue
            self._start_part(rt, rt.pending()[0], self.free.pop(0))

    def _storage_failed_starting(self, runner: SweepRunner | None, cause: str) -> None:
        """The storage failed while a trial was asked for: pause; the trials it half-made are marked failed
        (never ran, not an attempt) once it is back."""
        self.pause.trip(fl.STORAGE, cause, f"start a trial of {runner.spec.name if runner else 'a sweep'}")
        for r in self.runners:
            for trial_id in r.abandoned:
                self.pause.defer(
                    fl.STORAGE, f"mark trial id {trial_id} as never run", _never_ran(r, trial_id)
                )
            r.abandoned.clear()

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
            carry_over(prior, parts, f"trial {trial.number} of {spec.name}", self.display.message)
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
        part.job, part.state = job, PartState.RUNNING
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

    # ----- a job's end -----
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
        part.state = PartState.DONE if rc == 0 else PartState.FAILED
        if rc != 0 and rt.stopping is None:
            # one fold failing fails the configuration: stop its other folds
            rt.stopping = Stop.FAILED
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
        part.state, part.job = PartState.PENDING, None
        part.steps, part.last_value, part.summary = 0, None, None
        part.values.clear()
        self.outcome.busy_s += (job.ended or time.time()) - job.started
        # the trial itself says which epoch it resumed from (the copy may hold a newer one than announced)
        resumes = job.checkpoint_epoch is not None
        self.display.message(msg.requeued(str(job.lost), rt.trial.number, rt.sweep.spec.name, resumes))
        self.executor.host_lost(host)

    def _waiting_for_hosts(self) -> bool:
        """Nothing runs, work is left, and only resting hosts' slots could do it: wait for them."""
        if self.stopping or not self._resting or self.free:
            return False
        return any(t.pending() for t in self.trials.values()) or any(r.can_start() for r in self.runners)

    def _finish(self, rt: _Running) -> None:
        """A trial whose jobs all ended: gather what they did, decide how it ended (``outcome.py``), write it
        down and count it (``record.py``)."""
        self.trials.pop(rt.key, None)
        runner = rt.sweep
        runner.running -= 1
        trial = rt.trial
        duration = time.time() - rt.started
        decision = decide(gather(rt, duration, self.pause))
        runner.live.pop(oc.trial_id(trial), None)
        written, recorded = record_trial(rt, decision, duration, self.pause)
        follow = follow_up(
            decision,
            attempt=rt.attempt,
            retries=runner.retries,
            stopping_launch=self.stopping,
            stop=rt.stopping,
            retry_on_timeout=runner.spec.retry_on_timeout,
        )
        account(rt, decision, follow, self.outcome.failures, self.stopping)
        self.display.trial_finished(
            runner.spec.name,
            trial.number,
            decision.state.value,
            decision.value,
            duration,
            decision.reason,
            decision.attrs[st.ATTR_EPOCHS],
        )
        if not recorded and self.pause.blocking(fl.STORAGE):
            where = str(rt.run_dir.result_json) if written else None
            self.display.message(msg.result_waits(runner.spec.name, trial.number, where))
