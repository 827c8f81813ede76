"""``orchestrator.outcome``: how a finished trial ended, decided without I/O (issue 16).

Each case builds a ``TrialEnd`` by hand and asserts the exact state, value, reason, attributes (and their order:
result.json writes them in this order) and follow-up that the controller produced before the decision was
split out of ``Controller._finish``.
"""

from __future__ import annotations

import json
import statistics

import pytest

from orchestrator import outcome as oc
from orchestrator import storage as st
from orchestrator.outcome import PartEnd, TrialEnd, culprit, decide, follow_up, retry_override
from orchestrator.states import EndState, FollowUp, PartState, Stop


def done(fold: int | None = None, **kw: object) -> PartEnd:
    base: dict[str, object] = {"rc": 0, "steps": 3, "duration": 2.0, "ready_s": 0.5}
    return PartEnd(fold=fold, state=PartState.DONE, **{**base, **kw})


def failed(fold: int | None = None, rc: int | None = 1, **kw: object) -> PartEnd:
    base: dict[str, object] = {"steps": 1, "duration": 1.0}
    return PartEnd(fold=fold, state=PartState.FAILED, rc=rc, **{**base, **kw})


def end(*parts: PartEnd, **kw: object) -> TrialEnd:
    base: dict[str, object] = {"duration": 3.14159, "metric": "acc", "maximize": True}
    return TrialEnd(parts=tuple(parts), **{**base, **kw})


def follow(decision: oc.Decision, **kw: object) -> FollowUp:
    base: dict[str, object] = {
        "attempt": 1,
        "retries": 2,
        "stopping_launch": False,
        "stop": None,
        "retry_on_timeout": False,
    }
    return follow_up(decision, **{**base, **kw})


COMMON = [
    st.ATTR_EPOCHS,
    st.ATTR_DURATION,
    st.ATTR_GPU_S,
    st.ATTR_BEST_STEP,
    st.ATTR_LAST_VALUE,
    st.ATTR_STARTUP,
]


def test_complete_takes_the_summary_value_and_records_the_common_attributes() -> None:
    d = decide(end(done(summary={"acc": 0.9, "test/acc": 0.8, "note": "x"}, last_value=0.7), best_step=2))
    assert (d.state, d.value, d.reason) == (EndState.COMPLETE, 0.9, None)
    assert list(d.attrs) == [*COMMON, st.ATTR_SUMMARY, "test/acc"]
    assert d.attrs[st.ATTR_EPOCHS] == 3
    assert d.attrs[st.ATTR_DURATION] == 3.142
    assert d.attrs[st.ATTR_GPU_S] == 2.0
    assert d.attrs[st.ATTR_BEST_STEP] == 2
    assert d.attrs[st.ATTR_STARTUP] == 0.5
    assert d.attrs["test/acc"] == 0.8
    assert d.summary == {"acc": 0.9, "test/acc": 0.8, "note": "x"}
    assert follow(d) == FollowUp.COMPLETE


def test_complete_falls_back_to_the_last_reported_value() -> None:
    d = decide(end(done(summary={"loss": 1.0}, last_value=0.75)))
    assert (d.state, d.value) == (EndState.COMPLETE, 0.75)
    d = decide(end(done(last_value=0.5)))  # no summary at all
    assert (d.state, d.value, d.summary) == (EndState.COMPLETE, 0.5, {})
    assert st.ATTR_SUMMARY not in d.attrs


def test_a_sweep_without_a_metric_completes_with_zero() -> None:
    d = decide(end(done(), metric=None))
    assert (d.state, d.value, d.reason) == (EndState.COMPLETE, 0.0, None)
    assert list(d.attrs) == [*COMMON, st.ATTR_NO_METRIC]
    assert d.attrs[st.ATTR_NO_METRIC] is True


def test_folds_value_is_the_mean_with_fold_values_std_best_and_last() -> None:
    parts = [
        done(0, summary={"acc": 0.6}, values={0: 0.5, 1: 0.7}, duration=1.0, steps=2, ready_s=0.2),
        done(1, summary={"acc": 0.8, "test/acc": 0.7}, values={0: 0.9}, duration=2.0, steps=1, ready_s=0.9),
        done(2, last_value=0.7, values={}, duration=3.0, steps=4, ready_s=None),
    ]
    d = decide(end(*parts, last_value=0.6))
    assert d.state == EndState.COMPLETE
    assert d.value == pytest.approx(statistics.fmean([0.6, 0.8, 0.7]))
    # the fold summaries merged: keys of the first one; a key missing in one of them is left out
    assert d.summary == {"acc": pytest.approx(0.7), "acc_std": pytest.approx(0.1414213562373095)}
    assert list(d.attrs) == [*COMMON, st.ATTR_SUMMARY, st.ATTR_FOLDS, st.ATTR_FOLD_STD, st.ATTR_BEST_VALUE]
    assert d.attrs[st.ATTR_FOLDS] == {"0": 0.6, "1": 0.8, "2": 0.7}
    assert d.attrs[st.ATTR_FOLD_STD] == pytest.approx(statistics.stdev([0.6, 0.8, 0.7]))
    # best: mean of each fold's best (its reported values and its objective); last: each fold's last report
    assert d.attrs[st.ATTR_BEST_VALUE] == pytest.approx(statistics.fmean([0.7, 0.9, 0.7]))
    assert d.attrs[st.ATTR_LAST_VALUE] == pytest.approx(statistics.fmean([0.7, 0.9, 0.7]))
    assert d.attrs[st.ATTR_EPOCHS] == 4
    assert d.attrs[st.ATTR_GPU_S] == 6.0
    assert d.attrs[st.ATTR_STARTUP] == 0.9


def test_pruned_has_no_value_and_no_reason() -> None:
    d = decide(end(failed(rc=-15), stopping=Stop.PRUNED, best_step=4, last_value=0.3))
    assert (d.state, d.value, d.reason) == (EndState.PRUNED, None, None)
    assert list(d.attrs) == COMMON
    assert follow(d) == FollowUp.PRUNED
    assert culprit(end(failed(), stopping=Stop.PRUNED)) is None


def test_interrupted_fails_as_interrupted_and_is_left_to_the_next_launch() -> None:
    d = decide(end(done(0), failed(1, rc=-2), stopping=Stop.INTERRUPTED))
    assert (d.state, d.value) == (EndState.FAIL, None)
    assert d.reason == "interrupted (Ctrl-C): will be re-run by the next launch"
    assert list(d.attrs) == [*COMMON, st.ATTR_INTERRUPTED, st.ATTR_REASON]
    assert d.attrs[st.ATTR_INTERRUPTED] is True and d.attrs[st.ATTR_REASON] == d.reason
    assert follow(d) == FollowUp.LEAVE
    assert follow(d, stopping_launch=True) == FollowUp.LEAVE


def test_interrupted_after_every_job_finished_is_a_normal_end() -> None:
    d = decide(end(done(summary={"acc": 0.4}), stopping=Stop.INTERRUPTED))
    assert (d.state, d.value, d.reason) == (EndState.COMPLETE, 0.4, None)


def test_nonfinite_names_the_metric() -> None:
    d = decide(end(failed(rc=-15), stopping=Stop.NONFINITE))
    assert (d.state, d.reason) == (EndState.FAIL, "acc became non-finite (NaN/inf)")
    assert list(d.attrs) == [*COMMON, st.ATTR_REASON]
    d = decide(end(failed(rc=-15), stopping=Stop.NONFINITE, metric=None))
    assert d.reason == "metric became non-finite (NaN/inf)"
    assert follow(d) == FollowUp.RETRY


def test_protocol_and_timeout_give_the_reason_they_were_stopped_with() -> None:
    why = "bad protocol line (fold 1): not JSON: {oops"
    d = decide(end(done(0), failed(1, rc=-15), stopping=Stop.PROTOCOL, why=why))
    assert (d.state, d.reason, d.attrs[st.ATTR_REASON]) == (EndState.FAIL, why, why)
    assert st.ATTR_STDERR not in d.attrs
    t = decide(end(failed(rc=-15), stopping=Stop.TIMEOUT, why="timeout: ran longer than 2s"))
    assert t.reason == "timeout: ran longer than 2s"
    # a timeout is not retried unless the sweep says so
    assert follow(t, stop=Stop.TIMEOUT) == FollowUp.GIVE_UP
    assert follow(t, stop=Stop.TIMEOUT, retry_on_timeout=True) == FollowUp.RETRY


def test_a_failed_job_gives_its_exit_code_fold_and_stderr() -> None:
    e = end(
        done(0), failed(1, rc=3), failed(2, rc=-15), stopping=Stop.FAILED, failed_part=1, stderr="x\nboom"
    )
    assert culprit(e) == 1
    d = decide(e)
    assert (d.state, d.value, d.reason) == (EndState.FAIL, None, "exit code 3 in fold 1")
    assert list(d.attrs) == [*COMMON, st.ATTR_STDERR, st.ATTR_REASON]
    assert d.attrs[st.ATTR_STDERR] == "x\nboom"
    assert not d.disk_fault and not d.bad_input
    assert follow(d, attempt=1, retries=2) == FollowUp.RETRY
    assert follow(d, attempt=3, retries=2) == FollowUp.GIVE_UP  # no retry left
    assert follow(d, attempt=1, retries=2, stopping_launch=True) == FollowUp.GIVE_UP


def test_a_killed_job_names_its_signal_and_an_unknown_exit_code_reads_as_minus_one() -> None:
    assert decide(end(failed(rc=-9), stopping=Stop.FAILED)).reason == "killed by signal SIGKILL"
    # no failed_part: the first job that is not done is blamed (rc None is -1: SIGHUP, as before)
    e = end(done(0), PartEnd(fold=1, state=PartState.SKIPPED), stopping=None)
    assert culprit(e) == 1
    assert decide(e).reason == "killed by signal SIGHUP in fold 1"


def test_bad_input_is_not_retried() -> None:
    d = decide(end(failed(rc=oc.BAD_INPUT_RC), stopping=Stop.FAILED))
    assert d.reason == "exit code 2 (bad input: not retried)"
    assert d.bad_input
    assert follow(d, attempt=1, retries=5) == FollowUp.GIVE_UP
    # exit code 2 of a job stopped for another reason is not the child rejecting its input
    assert not decide(end(failed(rc=2))).bad_input


def test_cuda_oom_is_named_and_halves_the_batch_size_when_asked() -> None:
    stderr = "Traceback …\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"
    d = decide(end(failed(rc=1), stopping=Stop.FAILED, stderr=stderr))
    assert d.reason == "CUDA out of memory: exit code 1"
    assert follow(d) == FollowUp.RETRY
    assert retry_override(d, 64, "halve_batch_size") == {"batch_size": 32}
    assert retry_override(d, 1, "halve_batch_size") is None
    assert retry_override(d, 64, "retry") is None
    assert retry_override(d, "64", "halve_batch_size") is None
    plain = decide(end(failed(rc=1), stopping=Stop.FAILED, stderr="boom"))
    assert retry_override(plain, 64, "halve_batch_size") is None


@pytest.mark.parametrize(
    ("kw", "cause"),
    [
        ({"disk_now": "No space left on device"}, "No space left on device"),
        ({"disk_before": "Read-only file system"}, "Read-only file system"),
        ({"stderr": "OSError: [Errno 28] No space left on device: 'ckpt'"}, "No space left on device"),
    ],
)
def test_a_run_dir_that_could_not_be_written_is_not_the_trials_fault(kw: dict[str, str], cause: str) -> None:
    d = decide(end(failed(0, rc=1), done(1), stopping=Stop.FAILED, **kw))
    assert d.reason == (
        f"exit code 1 in fold 0 while its run dir was unwritable ({cause}): runs again, not counted as an attempt"
    )
    assert list(d.attrs) == [*COMMON, st.ATTR_STDERR, st.ATTR_INTERRUPTED, st.ATTR_REASON]
    assert d.disk_fault and d.attrs[st.ATTR_INTERRUPTED] is True
    assert follow(d) == FollowUp.REQUEUE  # same attempt, now
    assert follow(d, stopping_launch=True) == FollowUp.LEAVE  # the next launch re-runs it


def test_disk_text_counts_only_for_a_job_that_failed_by_itself() -> None:
    # a job stopped by the controller (here: its launch was interrupted before it all ended) is not blamed on
    # the disk from its stderr text; exit code 2 with a disk fault is not "bad input" either
    e = end(failed(rc=1), stopping=None, stderr="No space left on device")
    assert not decide(e).disk_fault
    d = decide(end(failed(rc=2), stopping=Stop.FAILED, disk_now="Disk quota exceeded"))
    assert d.disk_fault and not d.bad_input
    assert d.reason is not None and d.reason.startswith(
        "exit code 2 (bad input: not retried) while its run dir"
    )


def test_finished_without_a_finite_metric_fails() -> None:
    d = decide(end(done(summary={"acc": "nan"})))
    assert (d.state, d.value) == (EndState.FAIL, None)
    assert d.reason == "finished without reporting a finite 'acc'"
    assert list(d.attrs) == [*COMMON, st.ATTR_SUMMARY, st.ATTR_REASON]
    d = decide(end(done(0, summary={"acc": 0.5}), done(1)))  # fold 1 reported nothing
    assert d.reason == "finished without reporting a finite 'acc'"
    assert st.ATTR_FOLDS not in d.attrs


def test_culprit_is_none_unless_a_job_is_blamed() -> None:
    assert culprit(end(done(0), done(1))) is None
    for stop in (Stop.PRUNED, Stop.NONFINITE, Stop.PROTOCOL, Stop.TIMEOUT, Stop.INTERRUPTED):
        assert culprit(end(done(0), failed(1), stopping=stop)) is None
    assert culprit(end(failed(0), failed(1), stopping=Stop.FAILED, failed_part=1)) == 1
    assert culprit(end(failed(0), failed(1), stopping=Stop.FAILED)) == 0


def test_enums_store_the_same_strings_as_before() -> None:
    assert [str(s) for s in PartState] == ["pending", "running", "done", "failed", "skipped"]
    assert [str(s) for s in Stop] == ["pruned", "interrupted", "nonfinite", "failed", "protocol", "timeout"]
    assert [s.value for s in EndState] == ["COMPLETE", "PRUNED", "FAIL"]
    assert json.dumps({"state": PartState.DONE, "stop": Stop.PRUNED}) == '{"state": "done", "stop": "pruned"}'
    assert PartState.DONE == "done" and Stop.PRUNED == "pruned"
    from optuna.trial import TrialState

    assert [TrialState[s.value].name for s in EndState] == ["COMPLETE", "PRUNED", "FAIL"]
