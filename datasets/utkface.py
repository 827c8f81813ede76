"""UTKFace from its real on-disk layout: labels live in the file names.

``[age]_[gender]_[race]_[yyyymmddHHMMSSFFF].jpg`` (in-the-wild, ``part1/ part2/ part3/``) or the same name
followed by ``.chip.jpg`` (Aligned&Cropped, ``UTKFace/``). All ``*.jpg`` files under the root are read
(recursively). Names that do not match exactly (a missing or empty field, a space before ``.jpg``, a missing
dot, an 18-digit time stamp, gender not 0/1, race not 0-4) are SKIPPED and counted in
``problems['malformed_names']`` (per reason in ``info['malformed']``, examples in ``info['malformed_examples']``):
projects "correct" them in different ways, so no label is guessed.

Labels: ``age`` (years), ``age_group`` from ``age_bins``, ``gender`` (0 male, 1 female), ``ethnicity``
(0 White, 1 Black, 2 Asian, 3 Indian, 4 Others).

``age_bins``: a preset name from ``AGE_BIN_PRESETS`` (default ``'utk7'``: the UTKFace report's
0-2, 3-6, 7-14, 15-30, 31-40, 41-65, 66-116) or a list of inclusive ``(lo, hi)`` ranges.

``split(fractions=(0.7, 0.1, 0.2), seed=0, stratify=('age_group', 'gender'), require=None)``: seeded,
stratified train/val/test (there is no official split). ``split(lists="coral", val_fraction=0.1)``: the CORAL
paper's fixed lists instead (``datasets/labels/utkface/coral_utk_{train,test}.csv``, ages 21-60): test = the
test list, train = the train list less a seeded ``val_fraction`` for validation; images in no list are left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import ETHNICITY_CLASSES, GENDER_CLASSES, FaceDataset, require_root, stratified_split
from datasets.base import check_images as _check_images
from orchestrator.trial.errors import DataError

NAME_RE = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d{17})\.jpg(\.chip\.jpg)?$")

AGE_BIN_PRESETS: dict[str, list[tuple[int, int]]] = {
    # UTKFace report (400 models), chapter 3.2.5: ['0-2', '3-6', '7-14', '15-30', '31-40', '41-65', '66-116']
    "utk7": [(0, 2), (3, 6), (7, 14), (15, 30), (31, 40), (41, 65), (66, 116)],
    # Adience's 8 groups, widened to cover every age (gaps go to the next group up).
    "adience8": [(0, 3), (4, 7), (8, 14), (15, 24), (25, 37), (38, 47), (48, 59), (60, 116)],
    # Decades.
    "decades": [(0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 116)],
}


def resolve_bins(age_bins: str | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if isinstance(age_bins, str):
        if age_bins not in AGE_BIN_PRESETS:
            raise DataError(
                f"utkface: unknown age_bins {age_bins!r}", hint="use " + ", ".join(AGE_BIN_PRESETS)
            )
        return AGE_BIN_PRESETS[age_bins]
    bins = [(int(lo), int(hi)) for lo, hi in age_bins]
    for (_, h1), (l2, _) in zip(bins, bins[1:], strict=False):
        if l2 <= h1:
            raise DataError(f"utkface: age_bins must be increasing and disjoint, got {bins}")
    return bins


def bin_ages(age: np.ndarray, bins: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index of the inclusive range holding each age (-1 if none or NaN)."""
    out = np.full(len(age), -1, dtype=np.int64)
    for k, (lo, hi) in enumerate(bins):
        out[(age >= lo) & (age <= hi)] = k
    return out


def parse_name(name: str) -> tuple[int, int, int] | str:
    """(age, gender, race) of a well-formed file name, else the reason it is malformed."""
    m = NAME_RE.match(name)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    stem = name.split(".jpg")[0]
    if " " in name:
        return "space_in_name"
    if not name.endswith(".jpg"):
        return "not_jpg"
    if ".jpg" not in name[: -len(".chip.jpg")] and name.endswith(".chip.jpg"):
        return "missing_dot"
    fields = stem.split("_")
    if any(f == "" for f in fields):
        return "empty_field"
    if len(fields) < 4:
        return "missing_field"
    if len(fields) > 4:
        return "extra_field"
    if not all(f.isdigit() for f in fields):
        return "non_numeric_field"
    if len(fields[3]) != 17:
        return "bad_timestamp"
    return "bad_value"


class UTKFaceDataset(FaceDataset):
    def split(
        self,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 0,
        stratify: Sequence[str] | None = ("age_group", "gender"),
        require: Sequence[str] | str | None = None,
        lists: str | None = None,
        val_fraction: float = 0.1,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        """Seeded split stratified on the joint value of the ``stratify`` labels (or CORAL's lists)."""
        if lists is not None:
            return self._list_split(lists, val_fraction, seed, require)
        if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
            raise DataError(f"utkface: fractions must be 3 non-negative numbers, got {list(fractions)}")
        strata = np.zeros(len(self), dtype=np.int64)
        for task in stratify or ():
            v = self.labels[task]
            strata = strata * (int(v.max(initial=0)) + 2) + (v + 1)
        parts = stratified_split(strata, fractions, seed)
        return {k: self.labelled(v, require) for k, v in zip(("train", "val", "test"), parts, strict=True)}

    def _list_split(
        self, lists: str, val_fraction: float, seed: int, require: Sequence[str] | str | None
    ) -> dict[str, np.ndarray]:
        if lists not in SPLIT_LISTS:
            raise DataError(f"utkface: unknown split lists {lists!r}", hint="use " + ", ".join(SPLIT_LISTS))
        by_name = {Path(p).name: i for i, p in enumerate(self.paths)}
        parts: dict[str, np.ndarray] = {}
        for part, csv_name in SPLIT_LISTS[lists].items():
            names = read_list(LABELS_DIR / csv_name)
            parts[part] = np.asarray(sorted(by_name[n] for n in names if n in by_name), dtype=np.int64)
        if not len(parts["train"]) or not len(parts["test"]):
            raise DataError(
                f"utkface: none of the {lists} list's files are under {self.root} "
                f"(train {len(parts['train'])}, test {len(parts['test'])} found)",
                hint="the lists name Aligned&Cropped files such as 36_0_1_20170117163203851.jpg.chip.jpg",
            )
        train = parts["train"]
        perm = np.random.default_rng(seed).permutation(len(train))
        n_val = int(round(len(train) * val_fraction))
        val, train = np.sort(train[perm[:n_val]]), np.sort(train[perm[n_val:]])
        out = {"train": train, "val": val, "test": parts["test"]}
        return {k: self.labelled(v, require) for k, v in out.items()}


LABELS_DIR = Path(__file__).resolve().parent / "labels" / "utkface"
#: fixed train/test lists by name: CORAL (Cao, Mirjalili & Raschka 2020; their coral-cnn repository's CSVs)
SPLIT_LISTS = {"coral": {"train": "coral_utk_train.csv", "test": "coral_utk_test.csv"}}


def read_list(path: Path) -> list[str]:
    """The file names of a split list (CSV with a ``file`` column)."""
    import csv

    with open(path, newline="") as fh:
        return [row["file"] for row in csv.DictReader(fh)]


def load_utkface(
    root: str | Path,
    *,
    age_bins: str | Sequence[Sequence[int]] = "utk7",
    check_images: bool = True,
    max_bad_fraction: float = 0.05,
    files: Sequence[str] | None = None,
    **_: Any,
) -> UTKFaceDataset:
    """Scan ``root`` for ``*.jpg`` (or use ``files``, root-relative names) and parse labels from the names."""
    root_p = require_root("utkface", root)
    bins = resolve_bins(age_bins)
    if files is None:
        rels = sorted(str(p.relative_to(root_p)) for p in root_p.rglob("*.jpg") if p.is_file())
        if not rels:
            raise DataError(
                f"utkface: no .jpg files under {root_p}",
                hint="expected [age]_[gender]_[race]_[datetime].jpg(.chip.jpg) files, e.g. "
                f"{root_p}/UTKFace/1_0_0_20161219140623097.jpg.chip.jpg",
            )
    else:
        rels = list(files)
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    paths, ages, genders, races = [], [], [], []
    for rel in rels:
        parsed = parse_name(Path(rel).name)
        if isinstance(parsed, str):
            reasons[parsed] += 1
            if len(examples) < 20:
                examples.append(rel)
            continue
        paths.append(rel)
        ages.append(parsed[0])
        genders.append(parsed[1])
        races.append(parsed[2])
    age = np.asarray(ages, dtype=np.float32)
    ds = UTKFaceDataset(
        name="utkface",
        root=root_p,
        paths=paths,
        labels={
            "gender": np.asarray(genders, dtype=np.int64),
            "age_group": bin_ages(age, bins),
            "age": age,
            "ethnicity": np.asarray(races, dtype=np.int64),
        },
        classes={
            "gender": list(GENDER_CLASSES),
            "age_group": [f"{lo}-{hi}" for lo, hi in bins],
            "ethnicity": list(ETHNICITY_CLASSES),
        },
        problems={"malformed_names": int(sum(reasons.values()))},
        info={
            "files_seen": len(rels),
            "malformed": dict(reasons),
            "malformed_examples": examples,
            "age_bins": bins,
        },
    )
    if check_images:
        _check_images(ds, max_bad_fraction=max_bad_fraction)
    return ds
