"""W&B's hyperband rule (orchestrator/wandb_hyperband.py) on hand-built curves, checked against W&B's own code.

Expected values are worked out by hand from ``hyperband_stop_runs`` in wandb/sweeps
(``src/sweeps/hyperband_stopping.py``); the docstring example of that function is reproduced exactly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest

from orchestrator.pruners import get_pruner
from orchestrator.trial.errors import SpecError
from orchestrator.wandb_hyperband import WandbHyperbandPruner, wandb_bands, wandb_should_stop, wandb_threshold

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_brackets_min_iter_and_max_iter() -> None:
    assert wandb_bands(min_iter=3)[:5] == [3, 9, 27, 81, 243]  # eta defaults to 3
    assert len(wandb_bands(min_iter=1, eta=2)) == 100  # W&B lists 100 brackets
    assert wandb_bands(min_iter=2, eta=1.5)[:5] == [2, 3, 4, 6, 10]  # floored: 2, 3.0, 4.5, 6.75, 10.125
    # max_iter / eta^k for k = 1..s, floored, sorted; max_iter itself is not a bracket
    assert wandb_bands(max_iter=27, s=2, eta=3) == [3, 9]
    assert wandb_bands(max_iter=81, s=3, eta=3) == [3, 9, 27]
    assert wandb_bands(max_iter=10, s=5, eta=3) == [1, 3]  # 10/27 < 1 stops the list
    assert wandb_bands(max_iter=5, s=2, eta=2) == [1, 2]
    assert wandb_bands(max_iter=27, s=2, min_iter=1) == [3, 9]  # max_iter + s win, as in W&B
    with pytest.raises(ValueError):
        wandb_bands(max_iter=2, s=1, eta=3)  # 2/3 < 1: no bracket (W&B raises too)
    with pytest.raises(ValueError):
        wandb_bands(max_iter=27, s=0)


def test_threshold_is_top_one_over_eta() -> None:
    hists = [[5.0, 4.0], [6.0, 3.0], [7.0, 2.0], [8.0, 1.0], [9.0]]
    # bracket 2: values at iteration 2 of the 4 runs that reached it: sorted [1, 2, 3, 4], index int(4/3) = 1
    assert wandb_threshold(hists, 2, eta=3) == 2.0
    assert wandb_threshold(hists, 2, eta=2) == 3.0  # index int(4/2) = 2
    assert wandb_threshold(hists, 1, eta=3) == 6.0  # 5 runs: index 1
    assert wandb_threshold(hists, 3, eta=3) == math.inf  # nobody reached it


def test_wandb_docstring_example() -> None:
    """``hyperband_stop_runs``' own example: loss minimised, max_iter 5, eta 2, s 2 → brackets [1, 2]."""
    bands = wandb_bands(max_iter=5, s=2, eta=2)
    runs = {
        "a": [10.0, 9.0],  # finished
        "b": [10.0, 10.0],  # running: should be stopped
        "c": [10.0, 8.0, 8.0],  # running: passes bracket 1, not bracket 2 ... in W&B's example comment
        "d": [10.0, 7.0, 7.0],
        "e": [10.0, 6.0, 6.0],  # finished
    }
    hists = list(runs.values())
    # bracket 2 threshold: sorted [6, 7, 8, 9, 10][int(5/2)] = 8
    assert wandb_threshold(hists, 2, eta=2) == 8.0
    stop = {name for name in "bcd" if wandb_should_stop(runs[name], hists, bands, eta=2)}
    assert stop == {"b"}  # c equals the threshold and passes (W&B stops only strictly worse values)


def test_strict_judges_the_value_at_the_bracket_not_the_best() -> None:
    bands = [2]
    others = [[1.0, 1.0], [1.0, 1.0]]
    run = [0.5, 3.0]  # was the best at iteration 1, worst at the bracket
    hists = [*others, run]
    assert wandb_threshold(hists, 2, eta=3) == 1.0
    assert wandb_should_stop(run, hists, bands, eta=3, strict=True)  # history[1] = 3 > 1
    assert not wandb_should_stop(run, hists, bands, eta=3, strict=False)  # min(history) = 0.5 <= 1
    # between brackets the last reached bracket still decides, on every new value (non-strict: the best so far)
    longer = [0.5, 3.0, 4.0, 5.0]
    assert not wandb_should_stop(longer, [*others, longer], bands, eta=3, strict=False)
    assert wandb_should_stop(longer, [*others, longer], bands, eta=3, strict=True)
    assert not wandb_should_stop([9.0], [*others, [9.0]], bands, eta=3)  # no bracket reached yet


def _study(direction: str, curves: list[list[float]], pruner: WandbHyperbandPruner) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner)
    for curve in curves:
        t = study.ask()
        for step, v in enumerate(curve):
            t.report(v, step)
        study.tell(t, curve[-1])
    return study


def test_pruner_on_a_study_maximize_and_eta() -> None:
    pruner = WandbHyperbandPruner(min_iter=2, eta=3)
    study = _study("maximize", [[0.5, 0.75, 0.875], [0.3, 0.45, 0.5]], pruner)
    t = study.ask()
    t.report(0.4, 0)
    assert not t.should_prune()  # bracket 2 not reached
    t.report(0.7, 1)
    # bracket 2, accuracies [0.75, 0.45, 0.7] → best first [0.75, 0.7, 0.45], index int(3/3)=1 → 0.7: passes
    assert not t.should_prune()
    study.tell(t, 0.7)
    t2 = study.ask()
    t2.report(0.1, 0)
    t2.report(0.69, 1)  # 4 runs: [0.75, 0.7, 0.69, 0.45][int(4/3) = 1] = 0.7 → 0.69 is worse: stop
    assert t2.should_prune()
    # with eta 2 the same curve survives: index int(4/2) = 2 → 0.69
    pruner.eta = 2.0
    assert not t2.should_prune()


def test_pruner_ignores_non_finite_values_and_reads_all_states() -> None:
    pruner = WandbHyperbandPruner(max_iter=9, s=1, eta=3)  # one bracket: 3
    assert pruner.bands == [3]
    study = optuna.create_study(direction="minimize", pruner=pruner)
    pruned = study.ask()
    for step, v in enumerate([1.0, 1.0, 1.0]):
        pruned.report(v, step)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)  # a stopped run still counts, as in W&B
    t = study.ask()
    for step, v in enumerate([2.0, float("nan"), 2.0]):
        t.report(v, step)
    assert not t.should_prune()  # the NaN is dropped: only 2 iterations so far
    t.report(2.0, 3)
    assert t.should_prune()  # [1, 2][int(2/3) = 0] = 1 < 2


def test_factory_returns_the_wandb_rule() -> None:
    spec = SimpleNamespace(
        type="hyperband", source="early_terminate", options={"min_iter": 3, "eta": 3, "strict": False}
    )
    pruner = get_pruner(spec)
    assert isinstance(pruner, WandbHyperbandPruner)
    assert pruner.bands[:3] == [3, 9, 27] and pruner.strict is False
    bad = SimpleNamespace(
        type="hyperband", source="early_terminate", options={"max_iter": 2, "s": 1, "eta": 3}
    )
    with pytest.raises(SpecError):
        get_pruner(bad)
