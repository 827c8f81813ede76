"""The leaderboard's numbers on hand-made rows and records (orchestrator.leaderboard.compute: pure, no storage).

Every expected number below is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import storage as st
from orchestrator.leaderboard import build
from orchestrator.leaderboard.compute import (
    _best_of,
    _gpu_share,
    _matches,
    _mean_std,
    _parse_where,
    _sorted,
    aggregate,
    group,
    is_repeat,
    rank,
    rank_within,
    strata,
    trial_rows,
    varying,
)
from orchestrator.leaderboard.read import ATTR_BEST_VALUE, ATTR_COST, StudyData, TrialRec
from orchestrator.trial.errors import UsageError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(trial: int, value: float | None, state: str = "COMPLETE", **params: Any) -> dict[str, Any]:
    """A trial row as trial_rows makes it (only the fields the computations read)."""
    return {
        "sweep": "s",
        "trial": trial,
        "state": state,
        "value": value,
        "best": value,
        "last": value,
        "best_epoch": None,
        "epochs": 10,
        "duration_s": 100.0,
        "gpu_hours": 0.5,
        "cost": None,
        "host": f"h{trial % 2}",
        "attempt": 1,
        "_params": params,
    }


def rec(number: int, value: float | None, state: str = "COMPLETE", **kw: Any) -> TrialRec:
    attrs = kw.pop("attrs", {})
    params = kw.pop("params", {})
    r = TrialRec(number, state, value, T0, T0 + timedelta(hours=1), params, attrs, **kw)
    return r


# ------------------------------------------------------------------------------------------- mean ± std
def test_mean_and_sample_std() -> None:
    # mean (0.8 + 0.9 + 1.0) / 3 = 0.9; sample variance (0.01 + 0 + 0.01) / (3 − 1) = 0.01 → std 0.1
    mean, std = _mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert _mean_std([0.7]) == (0.7, None)  # one value: no spread
    assert _mean_std([]) == (None, None)


def test_fold_means_and_std_per_configuration() -> None:
    rows = [
        row(0, 0.80, lr=0.1, fold=0),
        row(1, 0.90, lr=0.1, fold=1),
        row(2, 1.00, lr=0.1, fold=2),
        row(3, 0.50, lr=0.2, fold=0),
        row(4, 0.70, lr=0.2, fold=1),
        row(5, None, "PRUNED", lr=0.2, fold=2),
    ]
    rows[0]["best"], rows[1]["best"], rows[2]["best"] = 0.85, 0.95, 1.00
    by_lr = {r["_params"]["lr"]: r for r in aggregate(rows, ["fold"], "maximize")}
    a, b = by_lr[0.1], by_lr[0.2]
    assert a["_params"] == {"lr": 0.1}  # the repeat parameter is gone from the configuration
    assert a["trials"] == "0,1,2" and a["n"] == 3 and a["repeats"] == 3
    assert a["value"] == pytest.approx(0.9) and a["value_std"] == pytest.approx(0.1)
    # best: (0.85 + 0.95 + 1.00) / 3 = 0.9333; squared deviations 0.006944 + 0.000278 + 0.004444 = 0.011667,
    # / (3 − 1) = 0.0058333 → std 0.0763763
    assert a["best"] == pytest.approx(2.8 / 3) and a["best_std"] == pytest.approx(0.0763763, abs=1e-6)
    assert a["best"] >= a["value"]
    assert a["duration_s"] == pytest.approx(300.0) and a["gpu_hours"] == pytest.approx(1.5)  # sums
    assert a["host"] == "h0,h1" and a["state"] == "COMPLETE"
    # the pruned fold is not averaged: (0.5 + 0.7) / 2 = 0.6, std sqrt((0.01 + 0.01) / 1) = 0.1414
    assert (
        b["n"] == 2 and b["value"] == pytest.approx(0.6) and b["value_std"] == pytest.approx(math.sqrt(0.02))
    )
    assert b["state"] == "2 complete 1 pruned"


def test_a_configuration_run_once_has_no_spread() -> None:
    (only,) = aggregate([row(0, 0.8, lr=0.1, seed=0)], ["seed"], "maximize")
    assert only["value"] == 0.8 and only["value_std"] is None and only["n"] == 1


# ---------------------------------------------------------------------------------------------- best
def test_best_is_never_worse_than_value() -> None:
    # maximize: the best reported epoch (0.9) beats the final value (0.7)
    assert _best_of(0.9, 0.7, None, True) == 0.9
    # a trial run per fold: the mean of the folds' bests (0.85) replaces the per-step best
    assert _best_of(0.95, 0.8, 0.85, True) == 0.85
    # a fold best below the value (a late improvement the steps did not see): value wins
    assert _best_of(None, 0.8, 0.7, True) == 0.8
    # minimize: lower is better, both ways
    assert _best_of(0.3, 0.4, None, False) == 0.3
    assert _best_of(None, 0.4, 0.5, False) == 0.4
    # no value (pruned): the reported best as it is
    assert _best_of(0.6, None, None, True) == 0.6


def test_trial_rows_from_records() -> None:
    sd = StudyData(
        "s",
        "maximize",
        {st.ATTR_METRIC: {"name": "val/acc", "goal": "maximize"}},
        [
            # curve 0.5, 0.9, 0.7: best 0.9 at step 1, last 0.7 (= the value)
            rec(0, 0.7, n_steps=3, best_step=1, best=0.9, last_step=2, last=0.7, params={"lr": 0.1}),
            # folds: value 0.8 is the mean of the folds' objectives, best_value 0.85 the mean of their bests
            rec(1, 0.8, attrs={ATTR_BEST_VALUE: 0.85}, params={"lr": 0.2}),
            rec(
                2, None, "PRUNED", n_steps=2, best_step=0, best=0.4, last_step=1, last=0.3, params={"lr": 0.3}
            ),
        ],
    )
    r0, r1, r2 = trial_rows(sd)
    assert (r0["value"], r0["best"], r0["last"], r0["best_epoch"], r0["epochs"]) == (0.7, 0.9, 0.7, 1, 3)
    assert (r1["value"], r1["best"]) == (0.8, 0.85)
    assert r2["value"] is None and r2["best"] == 0.4 and r2["last"] == 0.3
    assert all(r["best"] >= r["value"] for r in (r0, r1))
    assert r0["duration_s"] == 3600.0  # complete − start, no orchestrate.duration attribute


def test_gpu_hours_and_cost_on_shared_gpus() -> None:
    assert _gpu_share({"gpu0.0", "gpu0.1", "cpu0", "box:gpu1"}) == {
        "gpu0.0": 0.5,
        "gpu0.1": 0.5,
        "cpu0": 0.0,
        "box:gpu1": 1.0,
    }
    slot = {st.ATTR_SLOT: "gpu0.1", st.ATTR_DURATION: 3600.0, ATTR_COST: 2.0}
    sd = StudyData(
        "s", "minimize", {}, [rec(0, 0.1, attrs=slot), rec(1, 0.2, attrs={**slot, st.ATTR_SLOT: "gpu0.0"})]
    )
    r0, _ = trial_rows(sd)
    # one hour on half a GPU: 0.5 GPU-hours, at 2.0 per GPU-hour: 1.0
    assert r0["gpu_hours"] == 0.5 and r0["cost"] == 1.0 and r0["host"] == "gpu0.1"


# ------------------------------------------------------------------------------------------- ranking
def test_rank_best_first_for_maximize_and_minimize() -> None:
    rows = [row(0, 0.5), row(1, 0.9), row(2, None, "PRUNED"), row(3, 0.7)]
    assert [r["trial"] for r in rank([dict(r) for r in rows], "maximize")] == [1, 3, 0, 2]
    ranked = rank([dict(r) for r in rows], "minimize")
    assert [r["trial"] for r in ranked] == [0, 3, 1, 2] and [r["rank"] for r in ranked] == [1, 2, 3, 4]


def test_tasks_are_never_ranked_nor_averaged_together() -> None:
    rows = [
        row(0, 0.80, backbone="a", task="age"),
        row(1, 0.90, backbone="a", task="age"),
        row(2, 0.60, backbone="b", task="age"),
        row(3, 0.95, backbone="a", task="gender"),
        row(4, 0.97, backbone="b", task="gender"),
    ]
    assert strata(["lr", "backbone", "data.task"]) == ["data.task"]
    ranked = rank_within([dict(r) for r in rows], ["task"], "maximize")
    assert [(r["trial"], r["rank"]) for r in ranked] == [(1, 1), (0, 2), (2, 3), (4, 1), (3, 2)]
    grouped = {
        (r["_params"]["backbone"], r["_params"]["task"]): r
        for r in group([dict(r) for r in rows], rows, ["backbone", "task"], "maximize")
    }
    # backbone a on age: trials 0.80 and 0.90 → mean 0.85, std sqrt((0.0025 + 0.0025) / 1) = 0.0707
    a_age = grouped[("a", "age")]
    assert a_age["trial"] == 1 and a_age["group_n"] == 2
    assert a_age["group_mean"] == pytest.approx(0.85) and a_age["group_std"] == pytest.approx(
        math.sqrt(0.005)
    )
    # backbone a on gender is its own group (0.95 alone), never (0.80 + 0.90 + 0.95) / 3
    assert (
        grouped[("a", "gender")]["group_mean"] == pytest.approx(0.95)
        and grouped[("a", "gender")]["group_n"] == 1
    )


def test_group_by_a_backbone_adds_the_task_and_says_so() -> None:
    trials = [
        rec(i, v, params={"backbone": b, "task": t})
        for i, (b, t, v) in enumerate(
            [("a", "age", 0.8), ("a", "age", 0.9), ("a", "gender", 0.95), ("b", "gender", 0.97)]
        )
    ]
    (table,) = build("", studies=[StudyData("s", "maximize", {}, trials)], group_by="backbone")
    assert table["group_by"] == ["backbone", "task"] and "also grouped by task" in table["note"]
    means = {(r["_params"]["backbone"], r["_params"]["task"]): r["group_mean"] for r in table["rows"]}
    assert means == pytest.approx({("a", "age"): 0.85, ("a", "gender"): 0.95, ("b", "gender"): 0.97})


# ------------------------------------------------------------------------------------------- filters
def test_where_sort_and_repeats() -> None:
    assert _parse_where("lr<=1e-3") == ("lr", "<=", "1e-3")
    assert _parse_where("model.backbone=ResNet18") == ("model.backbone", "==", "ResNet18")
    with pytest.raises(UsageError):
        _parse_where("lr")
    r = row(0, 0.8, lr=5e-4, backbone="resnet18")
    assert _matches(r, ("lr", "<=", "1e-3")) and not _matches(r, ("lr", ">", "1e-3"))
    assert _matches(r, ("backbone", "==", "ResNet18"))  # text compares case-insensitively
    assert _matches(r, ("value", ">=", "0.8")) and not _matches(r, ("nosuch", "==", "1"))
    rows = [row(0, 0.5, lr=0.1), row(1, None, lr=0.3), row(2, 0.9, lr=0.2)]
    assert [x["trial"] for x in _sorted(rows, "-value")] == [2, 0, 1]  # missing values last, both ways
    assert [x["trial"] for x in _sorted(rows, "value")] == [0, 2, 1]
    assert [x["trial"] for x in _sorted(rows, "lr")] == [0, 2, 1]
    assert varying([{"lr": 0.1, "bs": 32}, {"lr": 0.2, "bs": 32}]) == ["lr"]
    assert is_repeat("data.fold") and is_repeat("seed") and not is_repeat("folds")
