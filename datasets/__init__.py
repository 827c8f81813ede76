"""Face datasets: Adience, CelebA, UTKFace loaders, a synthetic generator, a decode-once cache.

Importing this package (and ``datasets.synth``, ``datasets.check``, ``datasets.cache``, the loaders) never
imports torch; only ``datasets.pipeline`` does.

    ds = open_dataset("adience", root, age_mapping="strict")
    splits = ds.split(test_fold=0, val_fraction=0.1, seed=0, require="age_group")
    images = decoded(ds, 128)                 # (N, 128, 128, 3) uint8, memory-mapped, shared by trials
    root = ensure_synthetic("adience", limit=1500, size=128)   # synthetic copy in the real layout
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.base import FaceDataset, cache_dir, label_counts
from orchestrator.trial.errors import DataError

DATASETS = ("adience", "celeba", "utkface")

__all__ = [
    "DATASETS",
    "FaceDataset",
    "cache_dir",
    "decoded",
    "ensure_synthetic",
    "label_counts",
    "open_dataset",
]


def open_dataset(name: str, root: str | Path | None, **opts: Any) -> FaceDataset:
    """Load ``name`` (adience | celeba | utkface) from ``root``; options are the loader's keyword arguments.

    Common options: ``check_images`` (default True: stat every image, drop and count missing ones),
    ``max_bad_fraction`` (default 0.05: more missing images than this raises DataError).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key == "adience":
        from datasets.adience import load_adience

        return load_adience(_root(name, root), **opts)
    if key == "celeba":
        from datasets.celeba import load_celeba

        return load_celeba(_root(name, root), **opts)
    if key == "utkface":
        from datasets.utkface import load_utkface

        return load_utkface(_root(name, root), **opts)
    raise DataError(f"unknown dataset {name!r}", hint="known: " + ", ".join(DATASETS))


def _root(name: str, root: str | Path | None) -> str | Path:
    if root is None:
        raise DataError(
            f"{name}: no dataset root given", hint="pass --root DIR (or data_root in the sweep file)"
        )
    return root


def ensure_synthetic(name: str, *, limit: int | None, size: int, seed: int = 0) -> Path:
    """Root of a synthetic copy of ``name`` under ``$ORCHESTRATE_CACHE_DIR/synthetic`` (made once, locked)."""
    from datasets.synth import ensure_synthetic as _ensure

    return _ensure(name, limit=limit, size=size, seed=seed)


def decoded(ds: FaceDataset, resolution: int | tuple[int, int]) -> Any:
    """(N, H, W, 3) uint8 memory-mapped array of ``ds``'s images (see ``datasets.cache.decoded``)."""
    from datasets.cache import decoded as _decoded

    return _decoded(ds, resolution)
