"""Seeds never confound a grid: one seed per sweep by default (42), ``seed`` sweepable, repeats via ``seeds:``.

Real ``orchestrate launch`` subprocesses with the stand-in program, real SQLite storage, the real leaderboard.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.spec import load_sweeps
from orchestrator.trial.errors import SpecError
from tests.orchestrator.conftest import load_trials, run_cli, write

SWEEPS = """
defaults:
  slots: cpu:2
  wandb: disabled
  retries: 0
sweeps:
  - name: plain
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [1.0, 0.5]}
      epochs: {value: 2}
      sleep: {value: 0.0}
  - name: repeated
    program: @CURVE@
    method: grid
    seeds: [1, 2]
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [1.0, 0.5]}
      epochs: {value: 2}
      sleep: {value: 0.0}
"""


def _trial_json(tmp_path: Path, t) -> dict:
    run_dir = Path(t.user_attrs["orchestrate.run_dir"])
    return json.loads(((run_dir if run_dir.is_absolute() else tmp_path / run_dir) / "trial.json").read_text())


def test_one_seed_per_sweep_and_seeds_repeat_each_grid_point(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", SWEEPS)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)

    plain = load_trials(tmp_path, "plain")
    assert sorted(t.params["quality"] for t in plain) == [0.5, 1.0]
    assert [_trial_json(tmp_path, t)["seed"] for t in plain] == [42, 42]  # not the trial number

    rep = load_trials(tmp_path, "repeated")
    got = sorted((t.params["quality"], t.params["seed"], _trial_json(tmp_path, t)["seed"]) for t in rep)
    assert got == [(0.5, 1, 1), (0.5, 2, 2), (1.0, 1, 1), (1.0, 2, 2)]  # 2 runs per point, one per seed

    board = json.loads(
        run_cli(tmp_path, "leaderboard", "--sweep", "repeated", "--format", "json", check=True).stdout
    )
    table = board["sweeps"][0]
    assert table["repeats"] == ["seed"]
    assert [(r["quality"], r["n"]) for r in table["rows"]] == [(1.0, 2), (0.5, 2)]
    by_q = {q: [t.value for t in rep if t.params["quality"] == q] for q in (1.0, 0.5)}
    for r in table["rows"]:
        assert r["value"] == pytest.approx(sum(by_q[r["quality"]]) / 2)


@pytest.mark.parametrize(
    "extra, params, words",
    [
        ("seeds: [1, 2]", "seed: {values: [3, 4]}", "'seed' is both a parameter and set by 'seeds'"),
        ("seeds: [1, 1]", "", "listed twice"),
        ("seeds: []", "", "non-empty list"),
        ("seeds: [1, 2]\n    method: random", "", "method: grid"),
    ],
)
def test_bad_seeds(tmp_path: Path, extra: str, params: str, words: str) -> None:
    text = f"""
    sweeps:
      - name: s
        program: @CURVE@
        {extra}
        parameters:
          quality: {{values: [1.0, 0.5]}}
          {params}
    """
    if "method" not in extra:
        text = text.replace("program: @CURVE@", "program: @CURVE@\n        method: grid")
    else:
        text = text.replace("\n    method: random", "\n        method: random")
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(SpecError) as err:
        load_sweeps(path)
    assert words in str(err.value.render()) and err.value.key is not None and "seed" in err.value.key
