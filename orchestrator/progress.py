"""What the children say, and stopping a trial: the controller's side of the protocol lines.

Each metric line is appended to the job's metrics.jsonl and shown; the sweep metric is reported to Optuna (with
folds: the mean over all folds once each has reached the step) and the pruner asked. A pruned, non-finite,
badly speaking or timed-out trial is stopped (``_stop_trial``). ``Controller`` mixes this in; the state it uses
(``jobs``, ``pause``, ``display``, ``executor`` …) is the controller's.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from typing import Any

from orchestrator import faults as fl
from orchestrator import messages as msg
from orchestrator import optuna_compat as oc
from orchestrator.executors import Executor, Job
from orchestrator.record import _write_metrics
from orchestrator.running import _Part, _Running
from orchestrator.states import PartState, Stop
from orchestrator.sweep import ATTR_REMOTE, ATTR_RESUMED
from orchestrator.trial import protocol
from orchestrator.trial.rundir import atomic_write_json


class Progress:
    """Methods of ``Controller`` that handle a running trial's events and stop trials."""

    opts: Any
    display: Any
    pause: fl.Pause
    executor: Executor
    jobs: dict[str, tuple[_Running, _Part]]

    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        found = self.jobs.get(job.key)
        if found is None:
            return
        rt, part = found
        kind = event.get("event")
        if kind == protocol.INVALID:
            self._bad_output(rt, part, event)
            return
        if kind == protocol.EVENT_INFO and self._on_info(rt, part, job, event):
            return
        if part.ready_s is None and kind in (protocol.EVENT_INFO, protocol.EVENT_METRICS):
            part.ready_s = time.time() - job.started  # slot given → the child is set up and training
        if kind == protocol.EVENT_SUMMARY:
            part.summary = dict(event.get("metrics") or {})
            return
        if kind == protocol.EVENT_METRICS:
            self._on_metrics(rt, part, event)

    def _on_info(self, rt: _Running, part: _Part, job: Job, event: dict[str, Any]) -> bool:
        """An info line: where a remote job runs (True: nothing more to do with it), that it resumed from a
        checkpoint, how many epochs it runs (the view's "epoch 3/4")."""
        if "remote_pid" in event:  # a remote launcher started the job
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
            return True
        if "resumed_from_epoch" in event:  # it continued from a checkpoint
            epoch = event["resumed_from_epoch"]
            self.display.message(msg.resumed(rt.trial.number, rt.sweep.spec.name, part.fold, epoch))
            resumed = ATTR_RESUMED + ("" if part.fold is None else f".fold{part.fold}")
            self.pause.run(
                fl.STORAGE,
                f"record that trial {rt.trial.number} of {rt.sweep.spec.name} resumed",
                lambda: rt.trial.set_user_attr(resumed, epoch),
            )
        if isinstance(event.get("epochs"), int):
            self.display.trial_epochs(rt.label(part), rt.trial.number, int(event["epochs"]))
        return False

    def _on_metrics(self, rt: _Running, part: _Part, event: dict[str, Any]) -> None:
        """A metric line: to metrics.jsonl (kept in memory while the disk is full), to the live view, and the
        sweep metric to Optuna and the pruner (a non-finite one stops the trial)."""
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
        self.display.trial_metric(
            rt.label(part), rt.trial.number, step, metric.name if metric else None, value
        )
        if metric is None or value is None or rt.stopping is not None:
            return
        if not math.isfinite(value):
            rt.stopping = Stop.NONFINITE
            self._stop_trial(rt)
            return
        part.values[step] = value
        part.last_value = value
        self._report(rt, step)

    def _bad_output(self, rt: _Running, part: _Part, event: dict[str, Any]) -> None:
        """A protocol line that is not a protocol event: that trial fails (its reason quotes the line)."""
        if rt.stopping is not None:
            return
        rt.stopping = Stop.PROTOCOL
        rt.why = msg.bad_line_reason(event, part.fold)
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
        if self._should_prune(rt, step):
            rt.stopping = Stop.PRUNED
            self.display.trial_pruning(rt.sweep.spec.name, rt.trial.number, step)
            self._stop_trial(rt)

    def _should_prune(self, rt: _Running, step: int) -> bool:
        """Report the curve's steps the storage has not got yet, and ask the pruner; a storage fault pauses
        the controller (no prune)."""
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
            return False
        self.pause.ok(fl.STORAGE)
        return bool(prune)

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
            rt.stopping = Stop.TIMEOUT
            rt.why = msg.timeout_reason(limit, part.fold)
            self.display.message(f"[{rt.sweep.spec.name}] trial {rt.trial.number}: {rt.why}: stopping it")
            self._stop_trial(rt)

    def _stop_trial(self, rt: _Running, grace: float | None = None) -> None:
        """Stop every running job of a trial; its jobs not yet started never start."""
        for part in rt.parts:
            if part.state == PartState.PENDING:
                part.state = PartState.SKIPPED
            elif part.state == PartState.RUNNING and part.job is not None:
                if part.job.stopping is None:
                    part.job.stopping = rt.stopping
                if rt.stopping == Stop.PRUNED:  # the trial closes its W&B run as finished, tagged pruned
                    with contextlib.suppress(OSError):
                        why = {"reason": "pruned", "step": max(rt.curve, default=None)}
                        atomic_write_json(part.run_dir.stop_json, why, durable=False)
                self.executor.stop(part.job, grace=self.opts.grace if grace is None else grace)
