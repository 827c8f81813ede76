from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import open_dataset
from datasets.celeba import read_attr_file
from orchestrator.trial.errors import DataError
from tests.datasets.conftest import LABELS

CELEBA = LABELS / "celeba"  # attribute and identity rows; the partition file comes from `celeba_labels`


def test_attr_file_parse() -> None:
    names, images, vals, declared = read_attr_file(CELEBA / "list_attr_celeba.txt")
    assert declared == 202599 and len(names) == 40 and len(images) == 500
    assert names[20] == "Male" and names[39] == "Young" and names[0] == "5_o_Clock_Shadow"
    assert images[0] == "000001.jpg"
    assert vals[0, :4].tolist() == [-1, 1, 1, -1]
    assert vals[6, :3].tolist() == [1, -1, 1]  # '000007.jpg 1 -1  1' (unpadded first value)


@pytest.mark.parametrize("layout", ["flat", "drive"])
def test_fixture_intersection_and_labels(tmp_path: Path, layout: str, celeba_labels: Path) -> None:
    if layout == "flat":
        for f in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
            shutil.copy(celeba_labels / f, tmp_path / f)
    else:
        (tmp_path / "Anno").mkdir()
        (tmp_path / "Eval").mkdir()
        shutil.copy(CELEBA / "list_attr_celeba.txt", tmp_path / "Anno")
        shutil.copy(CELEBA / "identity_CelebA.txt", tmp_path / "Anno")
        shutil.copy(celeba_labels / "list_eval_partition.txt", tmp_path / "Eval")
    ds = open_dataset("celeba", tmp_path, check_images=False)
    assert len(ds) == 500
    assert ds.info["attr_rows"] == 500 and ds.info["partition_rows"] == 202599 and ds.info["used_rows"] == 500
    assert ds.problems["no_partition"] == 0 and ds.problems["no_identity"] == 0
    assert (ds.labels["partition"] == 0).all()
    s = ds.split()
    assert len(s["train"]) == 500 and len(s["val"]) == 0 and len(s["test"]) == 0
    assert np.array_equal(ds.labels["gender"], 1 - ds.labels["Male"])
    assert np.array_equal(ds.labels["age_group"], 1 - ds.labels["Young"])
    assert ds.labels["subject"][0] == 2880
    assert 0.3 < ds.labels["Male"].mean() < 0.55
    expected = "img_align_celeba/000001.jpg" if layout == "flat" else "Img/img_align_celeba/000001.jpg"
    assert ds.paths[0] == expected


def test_missing_files(tmp_path: Path, celeba_labels: Path) -> None:
    with pytest.raises(DataError) as e:
        open_dataset("celeba", tmp_path)
    assert str(tmp_path / "list_attr_celeba.txt") in e.value.message
    assert str(tmp_path / "Anno" / "list_attr_celeba.txt") in e.value.message
    shutil.copy(CELEBA / "list_attr_celeba.txt", tmp_path)
    with pytest.raises(DataError, match="list_eval_partition"):
        open_dataset("celeba", tmp_path)
    shutil.copy(celeba_labels / "list_eval_partition.txt", tmp_path)
    with pytest.raises(DataError, match="img_align_celeba"):
        open_dataset("celeba", tmp_path)


def test_synthetic_celeba(synth_root) -> None:
    root = synth_root("celeba", 200, 32)
    ds = open_dataset("celeba", root)
    assert len(ds) == 200 and ds.problems["missing_images"] == 0
    s = ds.split()
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (160, 20, 20)
    ids = {k: set(ds.labels["subject"][v]) for k, v in s.items()}
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["val"] & ids["test"])
        and not (ids["train"] & ids["test"])
    )
    md5 = hashlib.md5((root / "list_eval_partition.txt").read_bytes()).hexdigest()
    assert md5 == "d32c9cbf5e040fd4025c592c306e6668"  # the official bytes
    attr = (root / "list_attr_celeba.txt").read_bytes()
    assert attr.startswith(b"200\r\n5_o_Clock_Shadow ") and b"Young \r\n000001.jpg -1  1  1 -1" in attr
    real = read_attr_file(CELEBA / "list_attr_celeba.txt")[2]
    assert np.array_equal(ds.labels["Male"][:160], (real[:160, 20] > 0).astype(int))
