"""CelebA from its real on-disk layout.

Accepted layouts (the first that has ``list_attr_celeba.txt`` wins):

* flat: ``root/list_attr_celeba.txt``, ``root/list_eval_partition.txt``, ``root/identity_CelebA.txt``,
  images in ``root/img_align_celeba/`` (torchvision's ``<root>/celeba/`` is also tried);
* Google Drive: ``root/Anno/list_attr_celeba.txt``, ``root/Anno/identity_CelebA.txt``,
  ``root/Eval/list_eval_partition.txt``, images in ``root/Img/img_align_celeba/``.

``list_attr_celeba.txt``: a count line, the 40 names (trailing space), then ``<image> ±1 ×40`` padded with runs
of spaces, CRLF. ``list_eval_partition.txt``: ``<image> 0|1|2`` (official train/val/test). ``identity_CelebA.txt``
(optional): ``<image> <identity>``.

Samples are the images that have BOTH an attribute row and a partition row (the counts of each and of the
intersection are in ``info``; rows without a partition are counted in ``problems['no_partition']``).

Labels: every attribute by its name as 0/1 (1 where the file says 1); ``gender`` = 1 - Male (0 male, 1 female);
``age_group`` from ``Young`` (0 = young, 1 = not young); ``age`` NaN; ``ethnicity`` -1; ``partition`` 0/1/2;
``subject`` (identity, -1 when unknown). Any attribute can be a binary task: ``classes[name] = ['no', 'yes']``.

``split(require=None)`` returns the official partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import (
    GENDER_CLASSES,
    FaceDataset,
    find_first,
    missing_file_error,
    read_lines,
    require_root,
    stratified_split,
)
from datasets.base import check_images as _check_images
from orchestrator.trial.errors import DataError

NUM_ATTRS = 40
PARTITION_RANGES = {0: (1, 162770), 1: (162771, 182637), 2: (182638, 202599)}


def _candidates(root: Path) -> list[dict[str, Path]]:
    flat = {
        "attr": root / "list_attr_celeba.txt",
        "partition": root / "list_eval_partition.txt",
        "identity": root / "identity_CelebA.txt",
        "images": root / "img_align_celeba",
    }
    drive = {
        "attr": root / "Anno" / "list_attr_celeba.txt",
        "partition": root / "Eval" / "list_eval_partition.txt",
        "identity": root / "Anno" / "identity_CelebA.txt",
        "images": root / "Img" / "img_align_celeba",
    }
    tv = {k: root / "celeba" / v.name for k, v in flat.items()}
    return [flat, drive, tv]


def locate(root: Path) -> dict[str, Path]:
    """The files of the first layout whose attribute file exists; DataError listing all expected paths."""
    cands = _candidates(root)
    for c in cands:
        if c["attr"].exists():
            if not c["partition"].exists():
                alt = find_first([d["partition"] for d in cands])
                if alt is None:
                    raise missing_file_error(
                        "celeba", "list_eval_partition.txt", [d["partition"] for d in cands]
                    )
                c = dict(c, partition=alt)
            return c
    raise missing_file_error("celeba", "list_attr_celeba.txt", [c["attr"] for c in cands])


def read_attr_file(path: Path) -> tuple[list[str], list[str], np.ndarray, int]:
    """(attribute names, image names, values (N, 40) int8 of ±1, declared count)."""
    lines = read_lines(path)
    if len(lines) < 2:
        raise DataError(f"celeba: {path} is too short (needs a count line and the attribute names)")
    try:
        declared = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DataError(f"celeba: {path}:1 should be the image count, got {lines[0][:40]!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRS:
        raise DataError(f"celeba: {path}:2 has {len(names)} attribute names, expected {NUM_ATTRS}")
    images: list[str] = []
    vals = np.empty((len(lines) - 2, NUM_ATTRS), dtype=np.int8)
    for n, line in enumerate(lines[2:]):
        parts = line.split()
        if len(parts) != NUM_ATTRS + 1:
            raise DataError(f"celeba: {path}:{n + 3}: expected an image name and {NUM_ATTRS} values")
        images.append(parts[0])
        try:
            vals[n] = [int(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"celeba: {path}:{n + 3}: values must be 1 or -1") from None
    if not np.isin(vals, (-1, 1)).all():
        raise DataError(f"celeba: {path}: values must be 1 or -1")
    return names, images, vals, declared


def read_pairs(path: Path) -> dict[str, int]:
    """``<image> <int>`` per line (partition, identity)."""
    out: dict[str, int] = {}
    for n, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"celeba: {path}:{n}: expected '<image> <integer>', got {line[:60]!r}")
        out[parts[0]] = int(parts[1])
    return out


class CelebADataset(FaceDataset):
    def split(
        self,
        require: Sequence[str] | str | None = None,
        fractions: Sequence[float] | None = None,
        seed: int = 0,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        """The official partition: train 0, val 1, test 2 (identity-disjoint). ``fractions=(train, val, test)``:
        a seeded random split of all images instead, as the MobileNetV2 report's 90:10 (not identity-disjoint:
        one person's images may land on both sides, so its test accuracy is optimistic)."""
        if fractions is not None:
            if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
                raise DataError(f"celeba: fractions must be 3 non-negative numbers, got {list(fractions)}")
            parts = stratified_split(np.zeros(len(self), dtype=np.int64), fractions, seed)
            out = dict(zip(("train", "val", "test"), parts, strict=True))
        else:
            p = self.labels["partition"]
            out = {name: np.flatnonzero(p == k) for k, name in enumerate(("train", "val", "test"))}
        return {k: self.labelled(v, require) for k, v in out.items()}


def load_celeba(
    root: str | Path,
    *,
    check_images: bool = True,
    max_bad_fraction: float = 0.05,
    **_: Any,
) -> CelebADataset:
    """Read attributes, partition and identities; keep the images that have an attribute and partition row."""
    root_p = require_root("celeba", root)
    files = locate(root_p)
    names, images, vals, declared = read_attr_file(files["attr"])
    partition = read_pairs(files["partition"])
    identity = read_pairs(files["identity"]) if files["identity"].exists() else {}
    if check_images and not files["images"].is_dir():
        alt = find_first([c["images"] for c in _candidates(root_p)])
        if alt is None:
            raise missing_file_error(
                "celeba", "image folder img_align_celeba", [c["images"] for c in _candidates(root_p)]
            )
        files["images"] = alt
    keep = np.array([im in partition for im in images], dtype=bool)
    kept = [im for im, k in zip(images, keep, strict=True) if k]
    vals = vals[keep]
    img_rel = (
        files["images"].relative_to(root_p) if files["images"].is_relative_to(root_p) else files["images"]
    )
    labels: dict[str, np.ndarray] = {n: (vals[:, i] > 0).astype(np.int64) for i, n in enumerate(names)}
    male = labels.get("Male")
    young = labels.get("Young")
    n = len(kept)
    labels["gender"] = (1 - male) if male is not None else np.full(n, -1, dtype=np.int64)
    labels["age_group"] = (1 - young) if young is not None else np.full(n, -1, dtype=np.int64)
    labels["age"] = np.full(n, np.nan, dtype=np.float32)
    labels["ethnicity"] = np.full(n, -1, dtype=np.int64)
    labels["partition"] = np.array([partition[im] for im in kept], dtype=np.int64)
    labels["subject"] = np.array([identity.get(im, -1) for im in kept], dtype=np.int64)
    classes = {n: ["no", "yes"] for n in names}
    classes["gender"] = list(GENDER_CLASSES)
    classes["age_group"] = ["young", "not young"]
    problems = {
        "no_partition": int((~keep).sum()),
        "no_identity": int((labels["subject"] < 0).sum()) if identity else n,
        "bad_partition_value": int((~np.isin(labels["partition"], (0, 1, 2))).sum()),
    }
    ds = CelebADataset(
        name="celeba",
        root=root_p,
        paths=[str(img_rel / im) for im in kept],
        labels=labels,
        classes=classes,
        problems=problems,
        info={
            "attributes": names,
            "attr_rows": len(images),
            "attr_declared_count": declared,
            "partition_rows": len(partition),
            "identity_rows": len(identity),
            "used_rows": n,
            "files": {k: str(v) for k, v in files.items()},
        },
    )
    if check_images:
        _check_images(ds, max_bad_fraction=max_bad_fraction)
    return ds
