"""The data of a training trial (experiments/trainer.py): the dataset, its tasks and targets, the splits, and the
decoded images. Labels and splits come first (the model's heads depend on the classes), the images once the
input size is known. Bad input (missing data, an empty split) prints ``error: …`` and exits 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

import datasets
from experiments import config as config_mod
from experiments import tasks as T
from experiments.config import TrainConfig
from orchestrator.trial import protocol
from orchestrator.trial.errors import OrchestrateError


@dataclass
class Data:
    """The dataset, its tasks and targets, the splits' indices and (once the input size is known) the images."""

    ds: Any
    root: str
    tasks: list[T.TaskSpec]
    multi: bool
    age_bins: list[float] | None
    targets: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    train_idx: np.ndarray  # splits["train"] with data_fraction applied
    images: Any = None  # (N, H, W, 3) uint8, decoded once per host and shared
    stored_size: int = 0  # the size faces are stored at (crop_from with random_crop, else the input size)


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: <message>`` on stderr, and exit (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def load_data(cfg: TrainConfig, task_names: list[str]) -> Data:
    """The dataset (synthetic when no data_root), its tasks and targets, and the splits (no images yet)."""
    root = cfg.data_root
    if root is None:  # synthetic data in the dataset's real layout, made once per cache
        root = datasets.ensure_synthetic(
            cfg.dataset, limit=cfg.synthetic_limit, size=cfg.synthetic_size, seed=cfg.synthetic_seed
        )
    ds = open_dataset(cfg, root)
    tasks, age_bins = build_tasks(cfg, ds, task_names)
    multi = len(tasks) > 1
    splits = split_dataset(cfg, ds, tasks, age_bins, multi)
    targets = T.targets_for(tasks, ds.labels, age_bins)
    if multi:  # keep samples with at least one known label
        for name, idx in splits.items():
            splits[name] = idx[np.any([T.known(targets[t.name][idx]) for t in tasks], axis=0)]
    train_idx = splits["train"]
    if cfg.data_fraction < 1.0:
        keep = np.random.default_rng(cfg.split_seed).permutation(len(train_idx))[
            : max(1, int(len(train_idx) * cfg.data_fraction))
        ]
        train_idx = np.sort(train_idx[keep])
    data = Data(ds, str(root), tasks, multi, age_bins, targets, splits, train_idx)
    for name, idx in split_sizes(data):
        if len(idx) == 0:
            fail(f"the {name} split is empty (dataset {cfg.dataset}, {len(ds)} images)")
    print(
        f"data: {cfg.dataset} at {root}: train {len(train_idx)}, val {len(splits['val'])}, test {len(splits['test'])}"
    )
    return data


def open_dataset(cfg: TrainConfig, root: Any) -> Any:
    load_opts: dict[str, Any] = dict(cfg.dataset_args)
    if cfg.layout is not None:
        load_opts["layout"] = cfg.layout
    if cfg.age_mapping is not None:
        load_opts["age_mapping"] = cfg.age_mapping
    try:
        return datasets.open_dataset(cfg.dataset, root, **load_opts)
    except OrchestrateError as exc:  # DataError: missing root, label files, images
        fail(exc.render(), exc.exit_code)


def build_tasks(
    cfg: TrainConfig, ds: Any, task_names: list[str]
) -> tuple[list[T.TaskSpec], list[float] | None]:
    """The tasks (heads) and the age bins; with year ranks (CORAL: 21..60 → 40 ranks) one class per year."""
    age_bins = cfg.age_bins
    if config_mod.year_ranks(
        cfg
    ):  # one rank per year of age_range (CORAL: 21..60 → 40 ranks, errors in years)
        assert cfg.age_range is not None
        age_bins = [float(a) for a in range(cfg.age_range[0] + 1, cfg.age_range[1] + 1)]
    tasks = T.build_tasks(task_names, ds.classes, age_bins=age_bins, loss_weights=cfg.loss_weights)
    if config_mod.year_ranks(cfg) and cfg.age_range is not None:
        for t in tasks:
            if t.label == "age_group":
                t.classes = [str(a) for a in range(cfg.age_range[0], cfg.age_range[1] + 1)]
    return tasks, age_bins


def split_dataset(
    cfg: TrainConfig, ds: Any, tasks: list[T.TaskSpec], age_bins: list[float] | None, multi: bool
) -> dict[str, np.ndarray]:
    """Train/val/test indices (of the samples the tasks have labels for, within age_range)."""
    if multi:
        required = None  # samples need at least one of the tasks' labels (load_data)
    elif tasks[0].kind == "regression" or (age_bins and tasks[0].label == "age_group"):
        required = "age"
    else:
        required = tasks[0].label
    split_opts: dict[str, Any] = {
        "test_fold": cfg.fold,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.split_seed,
        "require": required,
    }
    if cfg.split_fractions is not None:
        split_opts["fractions"] = cfg.split_fractions
    if cfg.split_lists is not None:
        split_opts["lists"] = cfg.split_lists
    try:
        splits: dict[str, np.ndarray] = ds.split(**split_opts)
    except OrchestrateError as exc:  # DataError: e.g. no file of a split list under the root
        fail(exc.render(), exc.exit_code)
    if cfg.age_range is not None:  # only ages lo..hi (inclusive), in every split
        lo, hi = cfg.age_range
        ages = np.asarray(ds.labels["age"], dtype=np.float64)
        for name, idx in splits.items():
            splits[name] = idx[(ages[idx] >= lo) & (ages[idx] <= hi)]
    return splits


def split_sizes(data: Data) -> tuple[tuple[str, np.ndarray], ...]:
    return (("train", data.train_idx), ("val", data.splits["val"]), ("test", data.splits["test"]))


def stored_size(cfg: TrainConfig, image_size: int) -> int:
    """Levi–Hassner geometry: faces stored at crop_from (256 for 227) and cropped, never rescaled, so training
    (random crops), validation (centre crop) and the 10-crop test all see faces at one scale."""
    if not cfg.random_crop:
        return image_size
    size = cfg.crop_from or round(image_size * 256 / 227)
    if size <= image_size:
        fail(f"crop_from: {size} must be larger than the input size {image_size} (image_size)")
    print(
        f"input: faces at {size} px; random {image_size} px crops (train), the centre crop (val)"
        + (", 10 crops (test)" if cfg.oversample_test else ", the centre crop (test)")
    )
    return size


def load_images(cfg: TrainConfig, data: Data) -> None:
    """The decoded images; the undecodable ones (rows of zeros in the cache) leave every split."""
    try:
        data.images = datasets.decoded(data.ds, data.stored_size)
    except OrchestrateError as exc:  # DataError: too many undecodable images
        fail(exc.render(), exc.exit_code)
    ds = data.ds
    bad_mask = np.asarray(ds.info.get("bad_mask", np.zeros(len(ds), dtype=bool)), dtype=bool)
    if not bad_mask.any():
        return
    dropped = {}
    for name in ("train", "val", "test"):
        idx = data.train_idx if name == "train" else data.splits[name]
        keep = ~bad_mask[idx]
        dropped[name] = int((~keep).sum())
        if name == "train":
            data.train_idx = idx[keep]
        else:
            data.splits[name] = idx[keep]
    n_bad = sum(dropped.values())
    print(
        f"data: dropped {n_bad} undecodable images ("
        + ", ".join(f"{k} {v}" for k, v in dropped.items())
        + f"; {int(bad_mask.sum())} in the whole dataset, e.g. "
        + ", ".join(str(ds.paths[i]) for i in np.flatnonzero(bad_mask)[:3])
        + ")"
    )
    print(
        f"data: {cfg.dataset} at {data.root}: train {len(data.train_idx)}, val {len(data.splits['val'])}, "
        f"test {len(data.splits['test'])}"
    )
    protocol.emit("info", undecodable_images=n_bad, undecodable_by_split=dropped)
    for name, idx in split_sizes(data):
        if len(idx) == 0:
            fail(f"the {name} split is empty once undecodable images are dropped")
