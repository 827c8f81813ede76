"""The published splits the reports measured on: CORAL's fixed UTKFace lists, and CelebA's random 90:10 (the
MobileNetV2 report). Synthetic images in the real layouts, made from the label files shipped in datasets/labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from datasets import open_dataset
from datasets.synth import synthesize

LABELS = Path(__file__).resolve().parents[2] / "datasets" / "labels"


@pytest.fixture
def shipped_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_FIXTURES_DIR", str(LABELS))


def _list(part: str) -> set[str]:
    with open(LABELS / "utkface" / f"coral_utk_{part}.csv", newline="") as fh:
        return {row["file"] for row in csv.DictReader(fh)}


def test_coral_fixed_lists(tmp_path: Path, shipped_labels: None) -> None:
    root = synthesize("utkface", tmp_path / "utk", limit=300, size=16, seed=2)
    ds = open_dataset("utkface", root, check_images=False)
    sp = ds.split(lists="coral", val_fraction=0.1, seed=0)
    name = {i: Path(p).name for i, p in enumerate(ds.paths)}
    present = set(name.values())
    test = {name[i] for i in sp["test"]}
    train_val = {name[i] for i in np.concatenate([sp["train"], sp["val"]])}
    # by hand: the test list's files that are here, and the train list's
    assert test == _list("test") & present and len(test) > 20
    assert train_val == _list("train") & present
    assert not test & train_val and not set(sp["train"]) & set(sp["val"])
    assert len(sp["val"]) == round(0.1 * len(train_val))
    ages = ds.labels["age"][np.concatenate(list(sp.values()))]
    assert ages.min() >= 21 and ages.max() <= 60  # CORAL's lists hold ages 21-60 only
    assert set(ds.split(lists="coral", seed=0)["test"]) == set(
        sp["test"]
    )  # fixed: no seed moves the test set
    from orchestrator.trial.errors import DataError

    with pytest.raises(DataError, match="unknown split lists"):
        ds.split(lists="imdb")


def test_celeba_random_90_10(tmp_path: Path, shipped_labels: None) -> None:
    root = synthesize("celeba", tmp_path / "celeba", limit=200, size=16, seed=2)
    ds = open_dataset("celeba", root, check_images=False)
    n = len(ds)
    sp = ds.split(fractions=[0.81, 0.09, 0.1], seed=0)
    sizes = [len(sp[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == n and sizes == [
        round(n * 0.81),
        round(n * 0.09),
        n - round(n * 0.81) - round(n * 0.09),
    ]
    assert not set(sp["train"]) & set(sp["test"]) and not set(sp["val"]) & set(sp["test"])
    official = ds.split()
    assert set(official["test"]) == set(np.flatnonzero(ds.labels["partition"] == 2))
    assert set(sp["test"]) != set(official["test"])
    assert set(ds.split(fractions=[0.81, 0.09, 0.1], seed=0)["test"]) == set(sp["test"])  # seeded
