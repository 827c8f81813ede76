"""ParamSpace.sample through real Optuna studies: bounds, q steps, spread, enqueue and grid round trips."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.samplers import GridSampler, RandomSampler

from orchestrator.spec import LATENT_SUFFIX, load_sweeps

FILES = Path(__file__).resolve().parent / "files"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def sweeps():  # type: ignore[no-untyped-def]
    return load_sweeps(FILES / "ours.yaml", experiments_dir=FILES / "experiments").sweeps


def draw(space, n: int, seed: int = 0) -> list[dict]:  # type: ignore[no-untyped-def]
    study = optuna.create_study(sampler=RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial))
        study.tell(trial, 0.0)
    return out


def is_multiple(x: float, q: float) -> bool:
    return math.isclose(x / q, round(x / q), abs_tol=1e-9)


def test_distributions(sweeps) -> None:  # type: ignore[no-untyped-def]
    space = sweeps[1].parameters
    rows = draw(space, 300)
    col = {name: [r[name] for r in rows] for name in space.names()}
    assert set(col["choice"]) <= {"a", "b", "c"} and col["choice"].count("a") > col["choice"].count("c")
    assert abs(sum(col["nrm"]) / 300 - 1) < 0.5 and min(col["nrm"]) < 0 < max(col["nrm"])
    assert all(isinstance(v, int) and v % 2 == 0 for v in col["qnrm"])  # int q → ints
    assert all(v > 0 for v in col["lnrm"])
    assert all(is_multiple(v, 0.5) for v in col["qlnrm"])
    assert all(0 <= v <= 1 for v in col["bt"]) and sum(col["bt"]) / 300 < 0.4  # mean 2/7
    assert all(is_multiple(v, 0.1) for v in col["qbt"])
    assert all(isinstance(v, int) and v % 3 == 0 and 0 <= v <= 12 for v in col["qu"])
    assert all(1e-4 <= v <= 1e-1 for v in col["ilv"])
    assert all(math.exp(-5) <= v <= math.exp(-1) for v in col["il"])
    assert all(math.exp(-5) <= v <= math.exp(-2) for v in col["lu"])
    assert all(isinstance(v, int) and v % 8 == 0 and 16 <= v <= 256 for v in col["qluv"])
    assert all(isinstance(v, float) and is_multiple(v, 1.0) for v in col["qlu"])  # default q=1.0
    assert set(col["iu"]) == set(range(-3, 4))
    assert all(0 <= v <= 1.5 for v in col["u"])
    assert set(col["flag"]) == {True, False}
    assert {repr(v) for v in col["mixed"]} == {"1", "True", "'1'", "1.5"}
    # log-uniform spread: about a third of the draws per decade
    decades = [math.floor(math.log10(v)) for v in col["luv"]]
    assert all(decades.count(d) > 40 for d in (-5, -4, -3, -2))


def test_optuna_records_params(sweeps) -> None:  # type: ignore[no-untyped-def]
    space = sweeps[1].parameters
    study = optuna.create_study(sampler=RandomSampler(seed=1))
    trial = study.ask()
    space.sample(trial)
    assert trial.params["luv"] > 0 and "nrm" + LATENT_SUFFIX in trial.params
    assert "iu" in trial.params and "u" in trial.params


@pytest.mark.parametrize("how", ["frozen_params", "encoded", "values"])
def test_enqueue_round_trip(sweeps, how: str) -> None:  # type: ignore[no-untyped-def]
    for sweep in sweeps:
        space = sweep.parameters
        study = optuna.create_study(sampler=RandomSampler(seed=3))
        trial = study.ask()
        values = space.sample(trial)
        study.tell(trial, 1.0)
        params = {"frozen_params": trial.params, "encoded": space.encode(values), "values": values}[how]
        study.enqueue_trial(params)
        again = space.sample(study.ask())
        if how == "encoded":  # through the CDF: latent values come back to within rounding
            for name in values:
                if isinstance(values[name], float):
                    assert math.isclose(again[name], values[name], rel_tol=1e-9), name
                else:
                    assert again[name] == values[name], name
        else:
            assert again == values
        assert space.decode(trial.params) == values


def test_grid_round_trip_with_list_values(sweeps) -> None:  # type: ignore[no-untyped-def]
    space = sweeps[0].parameters
    points = space.grid()
    study = optuna.create_study(sampler=GridSampler(space.grid_search_space(), seed=0))
    seen = []
    for _ in range(len(points)):
        trial = study.ask()
        seen.append(space.sample(trial, grid=True))  # no tell: GridSampler stops the study at the end
    key = lambda p: repr(sorted(p.items()))  # noqa: E731
    assert sorted(map(key, seen)) == sorted(map(key, points))
    assert any(p["model.widths"] == [64, 64] for p in seen)
    # enqueue a grid point (decoded, list-valued) and get it back
    study2 = optuna.create_study(sampler=RandomSampler(seed=0))
    for point in (points[5], points[-1]):
        study2.enqueue_trial(point)
        assert space.sample(study2.ask(), grid=True) == point
    assert space.encode(points[-1], grid=True)["model.widths"] == "[64, 64]"
