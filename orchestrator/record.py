"""Writing a finished trial down: its metric lines, its record in the storage (retried by the pause until it
succeeds, never twice), a half-made trial marked as never run, and the folds' summaries merged."""

from __future__ import annotations

import contextlib
import math
import statistics
from typing import Any

from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.trial import protocol


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
