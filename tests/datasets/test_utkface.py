from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets import open_dataset
from datasets.synth import utk_names
from datasets.utkface import bin_ages, load_utkface, parse_name, resolve_bins
from orchestrator.trial.errors import DataError
from tests.datasets.conftest import LABELS


def test_coral_names_malformed_counts(tmp_path: Path) -> None:
    names = utk_names(LABELS)
    assert len(names) == 13147 + 3287
    ds = load_utkface(tmp_path, files=names, check_images=False)
    assert len(ds) == 16429
    assert ds.problems["malformed_names"] == 5
    assert ds.info["malformed"] == {
        "bad_timestamp": 2,
        "space_in_name": 1,
        "missing_field": 1,
        "missing_dot": 1,
    }
    assert set(ds.info["malformed_examples"]) == {
        "28_1_2_201701161846515488.jpg.chip.jpg",
        "38_0_1_201701162330572788.jpg.chip.jpg",
        "24_0_1_20170116220224657 .jpg.chip.jpg",
        "39_1_20170116174525125.jpg.chip.jpg",
        "55_0_0_20170116232725357jpg.chip.jpg",
    }
    assert ds.labels["age"].min() == 21 and ds.labels["age"].max() == 60


def test_parse_names() -> None:
    assert parse_name("1_0_0_20161219140623097.jpg.chip.jpg") == (1, 0, 0)
    assert parse_name("100_1_4_20170112213303693.jpg") == (100, 1, 4)
    assert parse_name("53__0_20170116184028385.jpg") == "empty_field"
    assert parse_name("61_1_20170109142408075.jpg") == "missing_field"
    assert parse_name("61_3_20170109150557335.jpg") == "missing_field"
    assert parse_name("24_7_1_20170116220224657.jpg") == "bad_value"  # gender not 0/1: never guessed
    assert parse_name("notes.jpg") == "missing_field"


def test_bins() -> None:
    bins = resolve_bins("utk7")
    assert bins[0] == (0, 2) and bins[-1] == (66, 116) and len(bins) == 7
    assert bin_ages(np.array([0, 2, 3, 14, 15, 30, 31, 65, 66, 116, np.nan]), bins).tolist() == [
        0, 0, 1, 2, 3, 3, 4, 5, 6, 6, -1,
    ]  # fmt: skip
    assert bin_ages(np.array([5.0, 25.0]), resolve_bins([(0, 9), (20, 29)])).tolist() == [0, 1]
    with pytest.raises(DataError):
        resolve_bins([(0, 10), (5, 20)])
    with pytest.raises(DataError):
        resolve_bins("utk99")


def test_synthetic_utkface_split(synth_root) -> None:
    root = synth_root("utkface", 300, 32)
    ds = open_dataset("utkface", root, age_bins="utk7")
    assert ds.problems["malformed_names"] == 5 and len(ds) == 295
    for p, a, g, r in zip(
        ds.paths, ds.labels["age"], ds.labels["gender"], ds.labels["ethnicity"], strict=True
    ):
        assert parse_name(Path(p).name) == (int(a), int(g), int(r))
    s = ds.split(fractions=(0.7, 0.1, 0.2), seed=5)
    allidx = np.concatenate(list(s.values()))
    assert len(allidx) == len(ds) == len(set(allidx.tolist()))
    assert abs(len(s["test"]) - 0.2 * len(ds)) <= 4
    # stratified: gender share in test close to overall
    assert abs(ds.labels["gender"][s["test"]].mean() - ds.labels["gender"].mean()) < 0.05
    assert np.array_equal(ds.split(seed=5)["val"], s["val"])
    assert Counter(ds.labels["age_group"].tolist()).keys() <= set(range(7))


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .jpg"):
        open_dataset("utkface", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("utkface", tmp_path / "missing")
