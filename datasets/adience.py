"""Adience (Eidinger, Enbar & Hassner 2014) from its real on-disk layout.

Label files (TSV, one header line, 12 fields; CRLF, LF and a missing final newline all accepted):

* ``variant='standard'`` (default): ``fold_{0..4}_data.txt`` — the current release, or the 2015 release
  used by Levi & Hassner (its 117 exact duplicate rows are dropped and counted in
  ``problems['duplicate_rows']``; its ``(25, 23)`` typo is an odd label, see the mappings below).
* ``variant='frontal'``: ``fold_frontal_{0..4}_data.txt``. Frontal fold indices are NOT the standard ones.

They are looked for in ``label_dir`` if given, else in ``root``, ``root/folds``, ``root/frontal`` (frontal only).

Images (``layout``): ``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` or
``faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>``; ``auto`` picks whichever folder
exists (aligned first).

Age mapping (``age_mapping``), to the 8 standard groups ``(0, 2) (4, 6) (8, 12) (15, 20) (25, 32) (38, 43)
(48, 53) (60, 100)`` (index 0..7):

* ``'strict'`` (default): only the 8 exact strings, as Levi & Hassner; everything else is -1.
* ``'nearest'``: also the odd labels, by ``NEAREST_AGE_MAP`` — a bare age goes to the group that contains it,
  else to the nearest group boundary (ties to the younger group); a range by its midpoint the same way;
  ``(25, 23)`` (a typo for ``(25, 32)``) → ``(25, 32)``. This agrees with the mappings seen in public code
  (FORMATS.md) and picks one where they disagree: ``(8, 23)`` → (15, 20), ``35`` → (25, 32),
  ``57``/``58`` → (60, 100). ``None`` stays -1.
* a dict ``{label string: group string | group index | None}`` applied on top of ``'strict'``.

Gender: ``m`` → 0, ``f`` → 1, ``u`` and empty → -1. ``age`` is the range midpoint or the bare age (NaN for None).
Extra labels: ``fold``, ``subject`` (face_id), ``user`` (index into ``info['users']``), ``yaw``.

Splits (``split(test_fold=k, val_fraction=0.1, seed=0, require=None)``): fold k is the test set; validation
is a seeded, user-exclusive share of the other folds (never a Flickr user in two splits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import (
    GENDER_CLASSES,
    FaceDataset,
    group_split,
    missing_file_error,
    read_lines,
    require_root,
)
from datasets.base import (
    check_images as _check_images,
)
from orchestrator.trial.errors import DataError

AGE_GROUPS = ["(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)", "(38, 43)", "(48, 53)", "(60, 100)"]
AGE_BOUNDS = [(0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100)]
HEADER = [
    "user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx", "dy",
    "tilt_ang", "fiducial_yaw_angle", "fiducial_score",
]  # fmt: skip


def nearest_group(age: float) -> int:
    """Index of the group containing ``age``, else the one with the nearest boundary (ties → younger)."""
    best, best_d = 0, float("inf")
    for k, (lo, hi) in enumerate(AGE_BOUNDS):
        d = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
        if d < best_d:
            best, best_d = k, d
    return best


# Every odd label in the current, frontal and 2015 releases, mapped by `nearest_group` (see module doc).
NEAREST_AGE_MAP: dict[str, str] = {
    "(8, 23)": "(15, 20)", "(25, 23)": "(25, 32)", "(27, 32)": "(25, 32)", "(38, 42)": "(38, 43)",
    "(38, 48)": "(38, 43)", "2": "(0, 2)", "3": "(0, 2)", "13": "(8, 12)", "22": "(15, 20)",
    "23": "(25, 32)", "29": "(25, 32)", "32": "(25, 32)", "34": "(25, 32)", "35": "(25, 32)",
    "36": "(38, 43)", "42": "(38, 43)", "45": "(38, 43)", "46": "(48, 53)", "55": "(48, 53)",
    "56": "(48, 53)", "57": "(60, 100)", "58": "(60, 100)",
}  # fmt: skip


def parse_age(label: str) -> tuple[float, float] | None:
    """``'(25, 32)'`` → (25, 32); ``'35'`` → (35, 35); ``'None'``/garbage → None."""
    s = label.strip()
    if s.startswith("(") and s.endswith(")"):
        try:
            lo, hi = (float(p) for p in s[1:-1].split(","))
        except ValueError:
            return None
        return (lo, hi)
    try:
        v = float(s)
    except ValueError:
        return None
    return (v, v)


def age_to_group(label: str, mapping: str | Mapping[str, Any] = "strict") -> int:
    """The group index of one age label under ``mapping`` (-1 when dropped)."""
    label = label.strip()
    if isinstance(mapping, Mapping):
        if label in mapping:
            target = mapping[label]
            if target is None:
                return -1
            if isinstance(target, int | np.integer):
                if not 0 <= int(target) < len(AGE_GROUPS):
                    raise DataError(f"adience: age_mapping[{label!r}] = {target} is not a group index 0..7")
                return int(target)
            if str(target) not in AGE_GROUPS:
                raise DataError(
                    f"adience: age_mapping[{label!r}] = {target!r} is not one of the 8 groups",
                    hint="use one of " + ", ".join(AGE_GROUPS) + ", an index 0..7, or None",
                )
            return AGE_GROUPS.index(str(target))
        mapping = "strict"
    if label in AGE_GROUPS:
        return AGE_GROUPS.index(label)
    if mapping == "strict":
        return -1
    if mapping == "nearest":
        if label in NEAREST_AGE_MAP:
            return AGE_GROUPS.index(NEAREST_AGE_MAP[label])
        rng = parse_age(label)
        if rng is None:
            return -1
        return nearest_group((rng[0] + rng[1]) / 2 if rng[0] <= rng[1] else rng[0])
    raise DataError(f"adience: unknown age_mapping {mapping!r}", hint="use 'strict', 'nearest' or a dict")


def fold_file_name(fold: int, variant: str = "standard") -> str:
    return f"fold_frontal_{fold}_data.txt" if variant == "frontal" else f"fold_{fold}_data.txt"


def find_fold_files(root: Path, variant: str = "standard", label_dir: str | Path | None = None) -> list[Path]:
    """The 5 fold files, or DataError listing where they were expected."""
    if variant not in ("standard", "frontal"):
        raise DataError(f"adience: unknown variant {variant!r}", hint="use 'standard' or 'frontal'")
    if label_dir is not None:
        dirs = [Path(label_dir).expanduser()]
    else:
        dirs = [root, root / "folds"] + ([root / "frontal"] if variant == "frontal" else [])
    for d in dirs:
        if (d / fold_file_name(0, variant)).exists():
            files = [d / fold_file_name(k, variant) for k in range(5)]
            missing = [f for f in files if not f.exists()]
            if missing:
                raise missing_file_error("adience", "fold label files", missing)
            return files
    raise missing_file_error("adience", "fold label files", [d / fold_file_name(0, variant) for d in dirs])


def read_fold_file(path: Path) -> list[list[str]]:
    """Data rows (12 fields each) of one fold file; rows with another field count raise DataError."""
    lines = read_lines(path)
    if not lines:
        raise DataError(f"adience: {path} is empty")
    header = lines[0].split("\t")
    if [h.strip() for h in header] != HEADER:
        raise DataError(f"adience: {path} does not start with the Adience header", hint="\t".join(HEADER))
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 12:
            raise DataError(f"adience: {path}:{n}: expected 12 tab-separated fields, got {len(fields)}")
        rows.append(fields)
    return rows


def image_rel_path(layout: str, user_id: str, face_id: str, original_image: str) -> str:
    if layout == "faces":
        return f"faces/{user_id}/coarse_tilt_aligned_face.{face_id}.{original_image}"
    return f"aligned/{user_id}/landmark_aligned_face.{face_id}.{original_image}"


class AdienceDataset(FaceDataset):
    def split(
        self,
        test_fold: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        require: Sequence[str] | str | None = None,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        """Fold ``test_fold`` is test; val is a user-exclusive ``val_fraction`` of the other folds."""
        if not 0 <= int(test_fold) <= 4:
            raise DataError(f"adience: test_fold must be 0..4, got {test_fold}")
        fold = self.labels["fold"]
        test = np.flatnonzero(fold == test_fold)
        trainval = np.flatnonzero(fold != test_fold)
        rest, held = group_split(self.labels["user"][trainval], val_fraction, seed)
        out = {"train": trainval[rest], "val": trainval[held], "test": test}
        return {k: self.labelled(v, require) for k, v in out.items()}


def load_adience(
    root: str | Path,
    *,
    variant: str = "standard",
    layout: str = "auto",
    age_mapping: str | Mapping[str, Any] = "strict",
    label_dir: str | Path | None = None,
    drop_duplicates: bool = True,
    check_images: bool = True,
    max_bad_fraction: float = 0.05,
    **_: Any,
) -> AdienceDataset:
    """Read the 5 fold files and (unless ``check_images=False``) check the images; see the module doc."""
    root_p = require_root("adience", root)
    files = find_fold_files(root_p, variant, label_dir)
    if layout == "auto":
        layout = "faces" if not (root_p / "aligned").is_dir() and (root_p / "faces").is_dir() else "aligned"
    if layout not in ("aligned", "faces"):
        raise DataError(f"adience: unknown layout {layout!r}", hint="use 'aligned', 'faces' or 'auto'")
    if check_images and not (root_p / layout).is_dir():
        raise DataError(
            f"adience: image folder {root_p / layout} not found",
            hint=f"expected {layout}/<user_id>/"
            + ("landmark_aligned_face" if layout == "aligned" else "coarse_tilt_aligned_face")
            + ".<face_id>.<original_image>; or pass check_images=False to read labels only",
        )

    paths: list[str] = []
    cols: dict[str, list[Any]] = {
        k: [] for k in ("fold", "gender", "age_group", "age", "subject", "user", "yaw")
    }
    users: dict[str, int] = {}
    seen: set[tuple[str, ...]] = set()
    problems = {"duplicate_rows": 0, "unknown_gender": 0, "unmapped_age": 0, "odd_age_labels": 0}
    rows_per_fold = []
    for k, f in enumerate(files):
        rows = read_fold_file(f)
        rows_per_fold.append(len(rows))
        for r in rows:
            key = tuple(r)
            if drop_duplicates:
                if key in seen:
                    problems["duplicate_rows"] += 1
                    continue
                seen.add(key)
            user_id, image, face_id, age, gender = r[0], r[1], r[2], r[3], r[4]
            paths.append(image_rel_path(layout, user_id, face_id, image))
            cols["fold"].append(k)
            g = {"m": 0, "f": 1}.get(gender.strip(), -1)
            problems["unknown_gender"] += g < 0
            cols["gender"].append(g)
            grp = age_to_group(age, age_mapping)
            problems["odd_age_labels"] += age.strip() not in AGE_GROUPS and age.strip() != "None"
            problems["unmapped_age"] += grp < 0
            cols["age_group"].append(grp)
            rng = parse_age(age)
            cols["age"].append(np.nan if rng is None else (rng[0] + rng[1]) / 2)
            cols["subject"].append(int(face_id) if face_id.strip().isdigit() else -1)
            cols["user"].append(users.setdefault(user_id, len(users)))
            try:
                cols["yaw"].append(int(r[10]))
            except ValueError:
                cols["yaw"].append(0)
    n = len(paths)
    labels = {
        "gender": np.asarray(cols["gender"], dtype=np.int64),
        "age_group": np.asarray(cols["age_group"], dtype=np.int64),
        "age": np.asarray(cols["age"], dtype=np.float32),
        "ethnicity": np.full(n, -1, dtype=np.int64),
        "fold": np.asarray(cols["fold"], dtype=np.int64),
        "subject": np.asarray(cols["subject"], dtype=np.int64),
        "user": np.asarray(cols["user"], dtype=np.int64),
        "yaw": np.asarray(cols["yaw"], dtype=np.int64),
    }
    ds = AdienceDataset(
        name="adience",
        root=root_p,
        paths=paths,
        labels=labels,
        classes={"gender": list(GENDER_CLASSES), "age_group": list(AGE_GROUPS)},
        problems=problems,
        info={
            "variant": variant,
            "layout": layout,
            "age_mapping": age_mapping if isinstance(age_mapping, str) else "custom",
            "label_files": [str(f) for f in files],
            "rows_per_fold": rows_per_fold,
            "users": list(users),
        },
    )
    if check_images:
        _check_images(ds, max_bad_fraction=max_bad_fraction)
    return ds
