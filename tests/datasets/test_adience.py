from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import open_dataset
from datasets.adience import AGE_GROUPS, NEAREST_AGE_MAP, age_to_group, load_adience, nearest_group
from orchestrator.trial.errors import DataError
from tests.datasets.conftest import ADIENCE, ADIENCE_2015, ADIENCE_FRONTAL

L2015 = ADIENCE_2015


def per_fold(ds, task: str) -> list[int]:
    f = ds.labels["fold"]
    return [int(((f == k) & (ds.labels[task] >= 0)).sum()) for k in range(5)]


def test_current_release_counts_strict() -> None:
    ds = open_dataset("adience", ADIENCE, check_images=False)
    assert len(ds) == 19370
    assert ds.info["rows_per_fold"] == [4484, 3730, 3894, 3446, 3816]
    assert per_fold(ds, "age_group") == [4377, 3092, 3285, 2963, 3676]
    assert per_fold(ds, "gender") == [3995, 3609, 3137, 3306, 3445]
    both = (ds.labels["age_group"] >= 0) & (ds.labels["gender"] >= 0)
    assert [int((both & (ds.labels["fold"] == k)).sum()) for k in range(5)] == [3940, 2996, 3068, 2854, 3370]
    assert ds.problems["unknown_gender"] == 1099 + 779  # 'u' and empty
    assert ds.problems["duplicate_rows"] == 0
    assert ds.classes["age_group"] == AGE_GROUPS
    # users are disjoint across folds; 168 in all; face_id is a global subject id
    users = [set(ds.labels["user"][ds.labels["fold"] == k]) for k in range(5)]
    assert sum(map(len, users)) == 168 == len(set().union(*users))
    assert len(np.unique(ds.labels["subject"])) == 2284
    assert ds.paths[0] == "aligned/30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg"
    assert ds.labels["age"][0] == pytest.approx(28.5)


def test_nearest_mapping_and_dict() -> None:
    ds = load_adience(ADIENCE, check_images=False, age_mapping="nearest")
    assert ds.problems["unmapped_age"] == 748  # only None stays unknown
    assert ds.problems["odd_age_labels"] == 1229
    assert age_to_group("(27, 32)", "nearest") == 4
    assert age_to_group("(38, 42)", "nearest") == 5
    assert age_to_group("(38, 48)", "nearest") == 5
    assert age_to_group("(25, 23)", "nearest") == 4
    assert age_to_group("57", "nearest") == 7
    assert age_to_group("3", "nearest") == 0
    assert age_to_group("None", "nearest") == -1
    assert age_to_group("57", "strict") == -1
    # the documented table agrees with the rule for every bare age
    for label, group in NEAREST_AGE_MAP.items():
        if not label.startswith("("):
            assert AGE_GROUPS[nearest_group(float(label))] == group
    custom = {"35": "(38, 43)", "13": 2, "22": None}
    d = load_adience(ADIENCE, check_images=False, age_mapping=custom)
    strict = load_adience(ADIENCE, check_images=False)
    assert int((d.labels["age_group"] >= 0).sum()) == int((strict.labels["age_group"] >= 0).sum()) + 293 + 168
    with pytest.raises(DataError):
        load_adience(ADIENCE, check_images=False, age_mapping={"35": "(30, 40)"})
    with pytest.raises(DataError):
        load_adience(ADIENCE, check_images=False, age_mapping="closest")


def test_frontal_and_2015_release(tmp_path: Path) -> None:
    root = tmp_path / "adience"  # the real layout: fold files, frontal/ beside them
    root.mkdir()
    for k in range(5):
        (root / f"fold_{k}_data.txt").symlink_to(ADIENCE / f"fold_{k}_data.txt")
    (root / "frontal").symlink_to(ADIENCE_FRONTAL, target_is_directory=True)
    fr = load_adience(root, variant="frontal", check_images=False)  # found in root/frontal
    assert len(fr) == 13559
    assert fr.info["rows_per_fold"] == [3210, 3063, 2381, 2507, 2398]
    assert per_fold(fr, "gender") == [1474 + 1410, 1157 + 1329, 987 + 1207, 1102 + 1275, 1051 + 1201]
    raw = load_adience(ADIENCE, label_dir=L2015, check_images=False, drop_duplicates=False)
    assert len(raw) == 19487
    assert per_fold(raw, "age_group") == [4316, 3101, 3339, 2975, 3693]
    assert per_fold(raw, "gender") == [4007, 3624, 3191, 3318, 3463]
    # Levi's own fold-0 test list has one line per strict-labelled row (duplicates included)
    lists = L2015 / "train_val_txt_files_per_fold" / "test_fold_is_0"
    assert len((lists / "age_test.txt").read_text().splitlines()) == 4316
    assert len((lists / "gender_test.txt").read_text().splitlines()) == 4007
    ds = load_adience(ADIENCE, label_dir=L2015, check_images=False)
    assert ds.problems["duplicate_rows"] == 117
    assert len(ds) == 19487 - 117
    n2523 = 72
    strict_f0 = int(((ds.labels["fold"] == 0) & (ds.labels["age_group"] >= 0)).sum())
    near = load_adience(ADIENCE, label_dir=L2015, check_images=False, age_mapping="nearest")
    near_2532 = int(((near.labels["fold"] == 0) & (near.labels["age_group"] == 4)).sum())
    strict_2532 = int(((ds.labels["fold"] == 0) & (ds.labels["age_group"] == 4)).sum())
    assert (
        near_2532 - strict_2532 == n2523 + 24
    )  # (25, 23) and fold 0's 24 `35` rows → (25, 32) under 'nearest'
    assert strict_f0 < 4316


@pytest.mark.parametrize("style", ["crlf", "lf_final", "lf_nofinal"])
def test_line_endings(tmp_path: Path, style: str) -> None:
    ref = load_adience(ADIENCE, check_images=False)
    for k in range(5):
        lines = (ADIENCE / f"fold_{k}_data.txt").read_bytes().decode().splitlines()
        nl = "\r\n" if style == "crlf" else "\n"
        text = nl.join(lines) + ("" if style == "lf_nofinal" else nl)
        (tmp_path / f"fold_{k}_data.txt").write_bytes(text.encode())
    ds = load_adience(tmp_path, check_images=False)
    assert ds.paths == ref.paths
    for key in ("gender", "age_group", "fold", "user"):
        assert np.array_equal(ds.labels[key], ref.labels[key])


def test_split_subject_exclusive_and_seeded() -> None:
    ds = load_adience(ADIENCE, check_images=False)
    for k in range(5):
        s = ds.split(test_fold=k, val_fraction=0.1, seed=3)
        u = {name: set(ds.labels["user"][idx]) for name, idx in s.items()}
        assert not (u["train"] & u["val"]) and not (u["train"] & u["test"]) and not (u["val"] & u["test"])
        assert (ds.labels["fold"][s["test"]] == k).all()
        assert len(s["train"]) + len(s["val"]) + len(s["test"]) == len(ds)
        assert 0.04 < len(s["val"]) / (len(s["train"]) + len(s["val"])) < 0.2
    a, b = ds.split(test_fold=1, seed=3), ds.split(test_fold=1, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = ds.split(test_fold=1, seed=4)
    assert not np.array_equal(a["val"], c["val"])
    r = ds.split(test_fold=0, require="age_group")
    assert len(r["test"]) == 4377 and (ds.labels["age_group"][r["train"]] >= 0).all()
    with pytest.raises(DataError):
        ds.split(test_fold=5)


def test_missing_root_and_label_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        open_dataset("adience", tmp_path / "nope")
    with pytest.raises(DataError) as e:
        open_dataset("adience", tmp_path)
    assert str(tmp_path / "fold_0_data.txt") in e.value.message
    assert str(tmp_path / "folds" / "fold_0_data.txt") in e.value.message
    for k in range(4):
        shutil.copy(ADIENCE / f"fold_{k}_data.txt", tmp_path)
    with pytest.raises(DataError, match="fold_4_data.txt"):
        open_dataset("adience", tmp_path, check_images=False)
    shutil.copy(ADIENCE / "fold_4_data.txt", tmp_path)
    with pytest.raises(DataError, match="aligned"):  # labels fine, image folder absent
        open_dataset("adience", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        open_dataset("imagenet", tmp_path)


def test_images_missing_and_faces_layout(synth_root, tmp_path: Path) -> None:
    root = synth_root("adience", 200, 32)
    ds = open_dataset("adience", root)
    assert ds.problems["missing_images"] == 0 and ds.info["layout"] == "aligned"
    # the faces layout
    faces = tmp_path / "faces_root"
    shutil.copytree(root, faces)
    for p in list((faces / "aligned").rglob("*.jpg")):
        rel = p.relative_to(faces / "aligned")
        dst = (
            faces / "faces" / rel.parent / p.name.replace("landmark_aligned_face", "coarse_tilt_aligned_face")
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dst)
    shutil.rmtree(faces / "aligned")
    fds = open_dataset("adience", faces)
    assert fds.info["layout"] == "faces" and len(fds) == len(ds)
    assert fds.paths[0].startswith("faces/") and "coarse_tilt_aligned_face" in fds.paths[0]
    # one missing image: dropped and counted, labels stay aligned
    victim = faces / fds.paths[5]
    victim.unlink()
    d2 = open_dataset("adience", faces)
    assert d2.problems["missing_images"] == 1 and len(d2) == len(fds) - 1
    assert d2.paths[5] == fds.paths[6] and d2.labels["gender"][5] == fds.labels["gender"][6]
    # too many missing → DataError
    with pytest.raises(DataError, match="max_bad_fraction"):
        open_dataset("adience", faces, max_bad_fraction=0.0)
