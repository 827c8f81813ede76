"""Writing a finished trial down (what ``outcome.decide`` decided): its result.json and metric lines, its
record in the storage (retried by the pause until it succeeds, never twice), the sweep's counts and queue
(``account``), and a half-made trial marked as never run."""

from __future__ import annotations

import contextlib
from typing import Any

from orchestrator import faults as fl
from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.messages import last_line
from orchestrator.outcome import Decision, retry_override
from orchestrator.states import FollowUp


def _write_metrics(part: Any) -> None:
    """Append the metric lines a job reported and its run dir has not taken yet (a full disk keeps them)."""
    if part.unwritten:
        with open(part.run_dir.metrics_jsonl, "a", encoding="utf-8") as fh:
            fh.write("".join(part.unwritten))
        part.unwritten.clear()


def _recorder(
    runner: Any,
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
        storage = oc.storage(runner.study)
        stored = oc.frozen(trial).intermediate_values
        tries[0] += 1
        if tries[0] > 1:  # a retry: the storage may have taken it before the connection dropped
            frozen = storage.get_trial(oc.trial_id(trial))
            if frozen.state.is_finished():
                runner.unrecorded.discard(oc.trial_id(trial))
                if frozen.state == state and (state != TrialState.COMPLETE or frozen.value == value):
                    return  # ours
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {trial.number} was finished by another controller ({frozen.state.name})"
                )
            stored = frozen.intermediate_values
        for step in sorted(set(curve) - set(stored)):  # what it missed while paused
            storage.set_trial_intermediate_value(oc.trial_id(trial), step, curve[step])
            oc.frozen(trial).intermediate_values[step] = curve[step]
        st.set_user_attrs(trial, attrs)
        if state == TrialState.COMPLETE:
            runner.study.tell(trial, value)
        else:
            runner.study.tell(trial, state=state)
        runner.unrecorded.discard(oc.trial_id(trial))
        if runner.prune_view is not None:
            with contextlib.suppress(Exception):  # the view refreshes from the storage anyway
                runner.prune_view.add_finished(storage.get_trial(oc.trial_id(trial)))

    return record


def _never_ran(runner: Any, trial_id: int) -> Any:
    """Mark a trial the storage half-made (it failed while the trial was asked for) as failed, not an attempt."""

    def mark() -> None:
        from optuna.trial import TrialState

        storage = oc.storage(runner.study)
        if storage.get_trial(trial_id).state.is_finished():
            return
        storage.set_trial_user_attr(trial_id, st.ATTR_INTERRUPTED, True)
        storage.set_trial_user_attr(
            trial_id, st.ATTR_REASON, "never ran: the storage failed while it was created"
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)

    return mark


def result_doc(rt: Any, decision: Decision, duration: float) -> dict[str, Any]:
    """The trial's result.json: what it did, and what the storage gets (so that a relaunch can record it from
    there when the storage never took it: ``SweepRunner._import_result``)."""
    attrs = decision.attrs
    return {
        "sweep": rt.sweep.spec.name,
        "trial": rt.trial.number,
        "attempt": rt.attempt,
        "state": decision.state.value,
        "value": decision.value,
        "reason": decision.reason,
        "epochs": attrs[st.ATTR_EPOCHS],
        "best_step": rt.best_step,
        "duration_s": round(duration, 3),
        "summary": decision.summary or None,
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
            for p in rt.parts
        ],
        "record": {
            "attrs": {**rt.start_attrs, **attrs},
            "intermediate": {str(k): v for k, v in sorted(rt.curve.items())},
        },
    }


def record_trial(rt: Any, decision: Decision, duration: float, pause: fl.Pause) -> tuple[bool, bool]:
    """Write the result to its run dir first (atomically: a relaunch imports it if the storage never takes it),
    then to the storage; either one failing pauses the controller and is retried, never dropped.
    Returns (written, recorded): whether each has happened yet."""
    from optuna.trial import TrialState

    runner, trial, attrs = rt.sweep, rt.trial, decision.attrs
    result = result_doc(rt, decision, duration)

    def write_files() -> None:
        for p in rt.parts:
            _write_metrics(p)
        rt.run_dir.write_result(result)

    written = pause.run(fl.RUNS_DIR, f"write {rt.run_dir.result_json}", write_files)
    runner.unrecorded.add(oc.trial_id(trial))  # until the storage has it: _recover must not take it over
    recorded = pause.run(
        fl.STORAGE,
        f"record trial {trial.number} of {runner.spec.name} ({decision.state.value})",
        _recorder(
            runner,
            trial,
            attrs if rt.start_recorded else {**rt.start_attrs, **attrs},
            TrialState[decision.state.value],
            decision.value,
            rt.curve,
        ),
        result=True,
    )
    return written, recorded


def account(
    rt: Any, decision: Decision, follow: FollowUp, failures: list[dict[str, Any]], stopping_launch: bool
) -> None:
    """The sweep's bookkeeping of a finished trial: its counts, finished points, and the queue (a retry, with
    half the batch size after a CUDA OOM when asked; a point whose run dir failed runs again). A point given
    up on joins ``failures`` (the launch then ends with exit code 1 and says why) unless the launch stops."""
    runner = rt.sweep
    if follow == FollowUp.COMPLETE:
        runner.counts["complete"] += 1
        runner.finished += 1
        if decision.value is not None:
            runner._update_best(decision.value)
    elif follow == FollowUp.PRUNED:
        runner.counts["pruned"] += 1
        runner.finished += 1
    elif follow == FollowUp.REQUEUE:
        runner.pending.appendleft((rt.params, rt.attempt))  # same attempt: the disk failed, not the trial
    elif follow == FollowUp.LEAVE:
        pass  # the next launch re-runs it (same parameters, same attempt number)
    elif follow == FollowUp.RETRY:
        runner.counts["failed"] += 1
        runner.pending.appendleft((rt.params, rt.attempt + 1))
        runner.counts["retried"] += 1
        override = retry_override(decision, rt.nested.get("batch_size"), runner.spec.on_oom)
        if override is not None:
            runner.overrides[rt.point] = override
    else:
        runner.counts["failed"] += 1
        runner.finished += 1
        if not stopping_launch:
            failures.append(
                {
                    "sweep": runner.spec.name,
                    "trial": rt.trial.number,
                    "reason": decision.reason,
                    "line": last_line(decision.attrs.get(st.ATTR_STDERR) or ""),
                }
            )
