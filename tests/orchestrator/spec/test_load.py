"""load_sweeps on the 30 real W&B files, on our own multi-sweep file, and on invalid variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.pruners import get_pruner
from orchestrator.spec import SweepFile, load_sweeps
from orchestrator.trial.errors import SpecError

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
EXPERIMENTS = FILES / "experiments"
CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "wandb_sweeps"  # tests/fixtures (see its README)
REAL = sorted(CORPUS.glob("*.yaml"))
# W&B's own grid plan sizes (SOURCES.md)
GRID_SIZES = {"04": 459, "08": 18, "09": 81, "11": 3, "17": 6, "19": 3, "20": 16, "30": 27}


def test_corpus_is_there() -> None:
    assert len(REAL) == 30, f"expected the 30 real sweep files in {CORPUS}"


@pytest.mark.parametrize("path", REAL, ids=[p.name[:2] for p in REAL])
def test_real_file_loads(path: Path) -> None:
    sf = load_sweeps(path)
    assert isinstance(sf, SweepFile) and len(sf.sweeps) == 1
    sweep = sf.sweeps[0]
    assert sweep.method in ("grid", "random", "bayes")
    assert len(sweep.parameters) > 0
    plan = json.loads(json.dumps(sf.describe()))  # JSON-friendly
    assert plan["sweeps"][0]["name"] == sweep.name
    number = path.name[:2]
    if number in GRID_SIZES:
        assert sweep.method == "grid"
        assert sweep.parameters.grid_size() == GRID_SIZES[number]
        points = sweep.parameters.grid()
        assert len(points) == GRID_SIZES[number]
        assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
        assert plan["sweeps"][0]["trials"] == GRID_SIZES[number]


def load(name: str) -> SweepFile:
    return load_sweeps(CORPUS / name)


def test_real_quirks() -> None:
    s01 = load("01_HobbitLong_SupContrast_sweep.yaml").sweeps[0]
    assert s01.name == "01_HobbitLong_SupContrast_sweep"  # the file stem
    assert s01.pruner is not None and s01.pruner.source == "early_terminate"
    assert s01.pruner.options["min_iter"] == 15 and s01.pruner.options["eta"] == 3
    s08 = load("08_rpatrik96_nl-causal-representations_qr.yaml").sweeps[0]
    assert s08.pruner is not None and s08.pruner.options["eta"] == 2
    # 1e-3 written without a dot: PyYAML gives strings, we give numbers
    for p in s08.parameters:
        if p.kind == "categorical" and any(isinstance(v, float) for v in p.values):
            assert all(isinstance(v, float) for v in p.values)
    s10 = load("10_karapostK_hassaku_uiprotomf_ml1m_sweep_conf.yaml").sweeps[0]
    assert s10.run_cap == 50
    nested = [p for p in s10.parameters if len(p.path) > 1]
    assert nested and all(p.name == ".".join(p.path) for p in nested)
    assert any(p.kind == "log_uniform_values" and isinstance(p.min, float) for p in s10.parameters)
    s11 = load("11_spokenlanguage_platalea_wandb_sweep.yaml")  # CRLF, invalid goal
    assert s11.sweeps[0].metric is not None and s11.sweeps[0].metric.goal == "minimize"
    assert any("not minimize or maximize" in n for n in s11.notices)
    s26 = load("26_Bovey0809_global_wheat_sweep.yaml").sweeps[0]
    assert s26.metric is not None and s26.metric.target == 0.6
    assert any(p.kind == "constant" and p.value is False for p in s26.parameters)  # value: no
    s29 = load("29_wandb_examples_wandb_sweep.yaml").sweeps[0]
    assert s29.command is not None and "${args_no_hyphens}" in s29.command
    s30 = load("30_wandb_sweeps_sweep-local-hyperband.yaml")
    assert any("controller" in n for n in s30.notices)
    assert s30.sweeps[0].pruner is not None and s30.sweeps[0].pruner.options["max_iter"] == 10
    s06 = load("06_MilesCranmer_pysr_wandb_sweep.yaml")
    assert sum("log_uniform takes natural-log exponents" in n for n in s06.notices) == 4
    s21 = load("21_0Miquel_Pytorch-training-toolkit_sweep_classification.yaml")
    assert not s21.sweeps[0].runnable and any("cannot be launched" in n for n in s21.notices)


def test_collision_of_plain_and_dotted_names_stays_flat() -> None:
    s28 = load("28_wandb_examples_sweep_mnist.yaml").sweeps[0]
    names = s28.parameters.names()
    assert "dataset" in names and "dataset.train_batch" in names
    flat = {n: i for i, n in enumerate(names)}
    nested = s28.parameters.nest(flat)
    assert nested["dataset.train_batch"] == flat["dataset.train_batch"]


def test_our_file() -> None:
    sf = load_sweeps(FILES / "ours.yaml", experiments_dir=EXPERIMENTS)
    assert sf.defaults.project == "faces" and sf.defaults.slots == "gpu:0x2" and sf.defaults.retries == 2
    grid, rand = sf.sweeps
    assert grid.experiment == "train" and grid.retries == 0 and grid.project == "faces"
    assert grid.wandb == "offline" and rand.wandb == "disabled" and rand.retries == 2
    assert grid.line == 11 and rand.line == 26
    # 2 lr × 3 epochs × 4 steps (arange(0, 1, .25)) × 2 × 2; seed is a constant
    assert grid.parameters.grid_size() == 2 * 3 * 4 * 2 * 2
    assert grid.parameters.names() == ["epochs", "lr", "model.backbone", "model.widths", "seed", "steps"]
    first = grid.parameters.grid()[0]
    assert first == {
        "epochs": 1,
        "lr": 0.001,
        "model.backbone": "levi_hassner",
        "model.widths": [32, 32],
        "seed": 7,
        "steps": 0.0,
    }
    assert grid.parameters.nest(first)["model"] == {"backbone": "levi_hassner", "widths": [32, 32]}
    assert grid.describe()["trials"] == 96
    assert rand.describe()["trials"] == 20
    assert rand.pruner is not None and rand.pruner.options == {"n_startup_trials": 3, "n_warmup_steps": 2}
    assert type(get_pruner(rand.pruner)).__name__ == "MedianPruner"
    assert rand.parameters["choice"].probabilities == (0.7, 0.2, 0.1)
    assert rand.parameters["lnrm"].mu == 0.0 and rand.parameters["lnrm"].sigma == 1.0
    assert rand.parameters["u"].kind == "uniform" and rand.parameters["iu"].kind == "int_uniform"
    described = rand.parameters.describe()
    assert described["qu"] == {"kind": "q_uniform", "min": 0, "max": 10, "q": 3}
    json.dumps(sf.describe())


INVALID = [
    # file, line, key, words in the message
    ("yaml_syntax.yaml", 4, None, "YAML syntax error"),
    ("unknown_top.yaml", 2, "paramters", "unknown key"),
    ("unknown_sweep_key.yaml", 5, "sweeps[0].paramters", "unknown key"),
    ("unknown_param_key.yaml", 6, "parameters.lr.distrib", "unknown key"),
    ("wrong_type.yaml", 5, "parameters.lr.max", "must be a number"),
    ("wrong_type_run_cap.yaml", 2, "run_cap", "whole number"),
    ("empty_values.yaml", 4, "parameters.lr.values", "empty"),
    ("continuous_in_grid.yaml", 4, "parameters.lr", "grid needs discrete"),
    ("min_gt_max.yaml", 5, "parameters.lr.min", "less than max"),
    ("bayes_no_metric.yaml", 2, "metric", "bayes needs a metric"),
    ("duplicate_names.yaml", 8, "sweeps[1].name", "duplicate sweep name"),
    ("unknown_experiment.yaml", 4, "sweeps[0].experiment", "unknown experiment"),
    ("bad_probabilities.yaml", 5, "parameters.c.probabilities", "sum to"),
    ("sweeps_mapping.yaml", 1, "sweeps", "must be a list"),
    ("sweeps_empty.yaml", 1, "sweeps", "non-empty list"),
    ("unknown_macro.yaml", 7, "command[3]", "unknown command macro"),
    ("probabilities_in_grid.yaml", 3, "parameters.c", "with probabilities"),
    ("hyperband_no_iter.yaml", 3, "early_terminate", "min_iter"),
    ("pruner_bad_option.yaml", 3, "pruner.n_startup", "unknown key"),
    ("bad_slots.yaml", 2, "defaults.slots", "invalid slots"),
    ("lease_too_short.yaml", 3, "defaults.lease", "at least 1"),
    ("lease_not_a_number.yaml", 2, "defaults.lease", "must be a number"),
    ("log_values_nonpositive.yaml", 3, "parameters.lr.min", "min > 0"),
    ("duplicate_key.yaml", 4, "lr", "duplicate key"),
]


@pytest.mark.parametrize(("name", "line", "key", "words"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid(name: str, line: int, key: str | None, words: str) -> None:
    path = FILES / "invalid" / name
    with pytest.raises(SpecError) as info:
        load_sweeps(path, experiments_dir=EXPERIMENTS)
    err = info.value
    assert err.file == str(path)
    assert err.line == line, err.render()
    assert err.key == key, err.render()
    assert words in err.detail, err.render()
    assert err.exit_code == 2
    assert err.render().startswith(f"{path}:{line}: ")


def test_suggestions() -> None:
    with pytest.raises(SpecError) as info:
        load_sweeps(FILES / "invalid" / "unknown_top.yaml")
    assert info.value.hint == "did you mean 'parameters'?"
    with pytest.raises(SpecError) as info:
        load_sweeps(FILES / "invalid" / "unknown_experiment.yaml", experiments_dir=EXPERIMENTS)
    assert info.value.hint is not None and "did you mean 'train'?" in info.value.hint


def test_lease_default_and_setting(tmp_path: Path) -> None:
    """``defaults.lease``: how long a controller sharing the storage may stay silent (orchestrator/leases.py)."""
    path = tmp_path / "s.yaml"
    body = "sweeps:\n  - {name: a, method: random, program: t.py, parameters: {x: {value: 1}}}\n"
    path.write_text(body)
    assert load_sweeps(path).defaults.lease == 30.0
    path.write_text("defaults: {lease: 7.5}\n" + body)
    assert load_sweeps(path).defaults.lease == 7.5


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_sweeps(tmp_path / "nope.yaml")
