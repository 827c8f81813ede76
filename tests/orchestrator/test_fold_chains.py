"""Leak-free fold chains (issue 13, item 1): a ``depends_on`` + ``init_from`` chain whose stages both run
Adience ``folds:`` gives stage-2 fold k the stage-1 fold-k checkpoint (the same subjects held out); a chain whose
parent cannot give a leak-free checkpoint stops before anything starts (exit 2, saying why and what to do).

The proof is on the real Adience fold files shipped in ``datasets/labels/adience`` (read with the
``datasets.adience`` loader): for every fold of the child, the Flickr users the parent's checkpoint was trained
on and the users of the child's test fold are disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from datasets.adience import load_adience
from orchestrator.spec import load_sweeps
from orchestrator.trial.errors import SpecError
from tests.orchestrator.conftest import ROOT, load_trials, run_cli, write

LABELS = ROOT / "datasets" / "labels" / "adience"

CHAIN = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
sweeps:
  - name: stage1
    experiment: train
    method: grid
    folds: [0, 1, 2, 3, 4]
    metric: {name: val/acc, goal: maximize}
    parameters:
      dataset: {value: adience}
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 1, base_features: 4, hidden: 8}}
      image_size: {value: 16}
      synthetic_limit: {value: 120}
      synthetic_size: {value: 24}
      epochs: {value: 1}
      log_samples: {value: 0}
  - name: stage2
    experiment: train
    method: grid
    depends_on: stage1
    init_from: best
    folds: [0, 1, 2, 3, 4]
    metric: {name: val/acc, goal: maximize}
    parameters:
      dataset: {value: adience}
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 1, base_features: 4, hidden: 8}}
      image_size: {value: 16}
      synthetic_limit: {value: 120}
      synthetic_size: {value: 24}
      epochs: {value: 1}
      log_samples: {value: 0}
"""


def _users() -> tuple[list[str], list[set[str]], object]:
    """Flickr user ids of each real fold file, and the dataset (labels only)."""
    ds = load_adience(LABELS, label_dir=LABELS, check_images=False)
    names = ds.info["users"]
    per_fold = [
        {names[u] for u, f in zip(ds.labels["user"], ds.labels["fold"], strict=True) if f == k}
        for k in range(5)
    ]
    return names, per_fold, ds


def _trained_on(ds: object, names: list[str], test_fold: int) -> set[str]:
    """The users whose faces a model with this held-out fold saw in training (train + val: the loader's split)."""
    split = ds.split(test_fold=test_fold)  # type: ignore[attr-defined]
    users = ds.labels["user"]  # type: ignore[attr-defined]
    return {names[u] for part in ("train", "val") for u in users[split[part]]}


def test_the_real_folds_make_the_fold0_checkpoint_a_leak() -> None:
    """Why it matters: the fold-0 model was trained on the users of every other fold's test set."""
    names, per_fold, ds = _users()
    trained = _trained_on(ds, names, 0)
    for k in range(1, 5):
        assert per_fold[k] <= trained  # all of fold k's users
        assert not per_fold[k] & _trained_on(ds, names, k)  # subject-exclusive: its own model never saw them


@pytest.mark.e2e
def test_stage2_fold_k_starts_from_stage1_fold_k_without_test_leakage(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", CHAIN)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    (parent,) = load_trials(tmp_path, "stage1")
    (child,) = load_trials(tmp_path, "stage2")
    assert parent.state == child.state == TrialState.COMPLETE
    parent_dir = Path(parent.user_attrs["orchestrate.run_dir"])
    child_dir = Path(child.user_attrs["orchestrate.run_dir"])
    names, per_fold, ds = _users()
    for k in range(5):
        job = json.loads((child_dir / f"fold{k}" / "trial.json").read_text())
        assert job["params"]["fold"] == k
        init = Path(job["params"]["pretrained"])
        assert init == parent_dir / f"fold{k}" / "checkpoint_best.pt" and init.is_file()
        held_out = json.loads((init.parent / "trial.json").read_text())["params"]["fold"]
        # the parent's training set (train + val of its split) and the child's test fold share no subject
        assert not _trained_on(ds, names, held_out) & per_fold[k], f"fold {k}: parent saw test subjects"


def _chain(parent: str, child: str) -> str:
    """A two-stage file with the stand-in program: ``parent``/``child`` are extra lines of each sweep."""
    return f"""
defaults: {{slots: "cpu:1", wandb: disabled, retries: 0}}
sweeps:
  - name: pre
    program: @CURVE@
    method: grid
    metric: {{name: score, goal: maximize}}
{parent}
  - name: fine
    program: @CURVE@
    method: grid
    depends_on: pre
    init_from: best
    metric: {{name: score, goal: maximize}}
{child}
"""


FOLDS5 = "    folds: [0, 1, 2, 3, 4]"
PARAMS = "    parameters:\n      dataset: {value: adience}\n      epochs: {value: 1}"


@pytest.mark.parametrize(
    ("parent", "child", "why"),
    [
        (PARAMS, FOLDS5 + "\n" + PARAMS, "ran without folds"),
        (
            "    folds: [0, 1, 2]\n" + PARAMS,
            FOLDS5 + "\n" + PARAMS,
            "no fold 3, 4",
        ),
        (FOLDS5 + "\n" + PARAMS, PARAMS, "does not say which fold it tests on"),
        (
            FOLDS5 + "\n" + PARAMS + "\n      dataset_args: {value: {variant: frontal}}",
            FOLDS5 + "\n" + PARAMS,
            "dataset_args",
        ),
        (
            PARAMS + "\n      fold: {values: [0, 1]}",
            PARAMS + "\n      fold: {value: 0}",
            "fold",
        ),
    ],
    ids=["parent-without-folds", "missing-folds", "child-fold-unknown", "other-split", "swept-fold"],
)
def test_a_chain_that_would_leak_stops_before_anything_starts(
    tmp_path: Path, parent: str, child: str, why: str
) -> None:
    spec = write(tmp_path, "sweeps.yaml", _chain(parent, child))
    with pytest.raises(SpecError) as info:
        load_sweeps(spec)
    text = info.value.render()
    assert why in text and "fine" in text and "pre" in text and "init_from" in text
    assert info.value.hint  # what to do
    proc = run_cli(tmp_path, "launch", str(spec), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{spec}:" in proc.stderr and why in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        (FOLDS5 + "\n" + PARAMS, FOLDS5 + "\n" + PARAMS),  # the same folds
        (FOLDS5 + "\n" + PARAMS, "    folds: [1, 3]\n" + PARAMS),  # a subset: each has its parent fold
        (FOLDS5 + "\n" + PARAMS, PARAMS + "\n      fold: {value: 2}"),  # one fold, which the parent ran
        # another dataset: the parent never saw an Adience face
        ("    parameters:\n      dataset: {value: celeba}\n      epochs: {value: 1}", FOLDS5 + "\n" + PARAMS),
        (PARAMS, PARAMS),  # neither runs folds: both hold out the same (default) fold
    ],
    ids=["same-folds", "subset", "one-fold", "other-dataset", "no-folds"],
)
def test_leak_free_chains_are_accepted(tmp_path: Path, parent: str, child: str) -> None:
    spec = write(tmp_path, "sweeps.yaml", _chain(parent, child))
    assert [s.name for s in load_sweeps(spec).sweeps] == ["pre", "fine"]


TOP_K = """
defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
sweeps:
  - name: pre
    program: @CURVE@
    method: grid
    folds: [0, 1, 2]
    metric: {name: score, goal: maximize}
    parameters:
      quality: {values: [0.5, 0.7]}
      epochs: {value: 1}
      sleep: {value: 0.01}
  - name: fine-folds
    program: @CURVE@
    method: grid
    depends_on: pre
    init_from: {top: 2}
    folds: [0, 1, 2]
    metric: {name: score, goal: maximize}
    parameters:
      epochs: {value: 1}
      sleep: {value: 0.01}
  - name: fine-one
    program: @CURVE@
    method: grid
    depends_on: pre
    init_from: best
    metric: {name: score, goal: maximize}
    parameters:
      fold: {value: 2}
      epochs: {value: 1}
      sleep: {value: 0.01}
"""


@pytest.mark.e2e
def test_top_k_fold_chains_and_a_single_fold_child_get_their_folds_checkpoint(tmp_path: Path) -> None:
    spec = write(tmp_path, "sweeps.yaml", TOP_K)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    parents = sorted(load_trials(tmp_path, "pre"), key=lambda t: -t.value)  # quality 0.7, then 0.5
    dirs = [Path(p.user_attrs["orchestrate.run_dir"]) for p in parents]
    for child in load_trials(tmp_path, "fine-folds"):
        rank = child.params["init_rank"]
        run_dir = Path(child.user_attrs["orchestrate.run_dir"])
        for k in range(3):
            argv = (run_dir / f"fold{k}" / "trial.json").read_text()
            assert json.loads(argv)["params"]["init_checkpoint"] == str(
                dirs[rank - 1] / f"fold{k}" / "checkpoint_best.pt"
            )
        # the trial records which parent run its folds start from
        assert child.user_attrs["orchestrate.params"]["init_checkpoint"] == str(
            dirs[rank - 1] / "fold{fold}" / "checkpoint_best.pt"
        )
    (one,) = load_trials(tmp_path, "fine-one")
    assert one.user_attrs["orchestrate.params"]["init_checkpoint"] == str(
        dirs[0] / "fold2" / "checkpoint_best.pt"
    )
