"""The common dataset result (`FaceDataset`), label conventions, text-file reading and split helpers.

Label conventions shared by every loader (``FaceDataset.labels``):

* ``gender``: 0 = male, 1 = female, -1 = unknown.
* ``age_group``: 0..K-1 (class names in ``classes['age_group']``), -1 = unknown / not mapped.
* ``age``: float years, NaN = unknown (Adience ranges give their midpoint).
* ``ethnicity``: 0..4 (UTKFace: White, Black, Asian, Indian, Others), -1 = unknown.

No torch here: the controller imports this package.
"""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.trial.errors import DataError

GENDER_CLASSES = ["male", "female"]
ETHNICITY_CLASSES = ["White", "Black", "Asian", "Indian", "Others"]
CORE_TASKS = ("gender", "age_group", "age", "ethnicity")


def cache_dir() -> Path:
    """``$ORCHESTRATE_CACHE_DIR`` or ``~/.cache/orchestrate``."""
    env = os.environ.get("ORCHESTRATE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "orchestrate"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if needed); safe across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_lines(path: Path) -> list[str]:
    """Lines of a text file, accepting CRLF, LF, CR and a missing final newline; blank lines dropped."""
    data = path.read_bytes().decode("utf-8-sig", errors="replace")
    return [ln for ln in data.splitlines() if ln.strip()]


def line_ending(path: Path) -> tuple[str, bool]:
    """(newline used, whether the file ends with it) — lets writers keep a file's style."""
    data = path.read_bytes()
    nl = "\r\n" if b"\r\n" in data else "\n"
    return nl, data.endswith(nl.encode())


def find_first(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DataError(
            f"{name}: no dataset root given", hint="pass --root DIR (or data_root in the sweep file)"
        )
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataError(
            f"{name}: dataset root {p} does not exist or is not a directory",
            hint=f"expected the {name} files under {p}; `orchestrate datasets synth {name}` makes a synthetic copy",
        )
    return p.resolve()


def missing_file_error(name: str, what: str, candidates: Sequence[Path]) -> DataError:
    where = "\n    ".join(str(c) for c in candidates)
    return DataError(
        f"{name}: {what} not found; looked for:\n    {where}",
        hint=f"check the {name} layout (docs in datasets/{name}.py)",
    )


@dataclass
class FaceDataset:
    """A loaded dataset: one image path and one set of labels per sample.

    ``paths`` are relative to ``root`` (``abspath(i)`` joins them). ``labels`` always has ``gender``,
    ``age_group``, ``age`` and ``ethnicity`` (see module doc) plus dataset-specific arrays. ``problems`` counts
    everything skipped or suspicious (skipped rows, malformed names, missing images, duplicates …);
    ``info`` holds other facts (row counts before filtering, options used).
    """

    name: str
    root: Path
    paths: list[str]
    labels: dict[str, np.ndarray]
    classes: dict[str, list[str]]
    problems: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> Path:
        return self.root / self.paths[i]

    def num_classes(self, task: str) -> int:
        return len(self.classes[task])

    def split(self, **opts: Any) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def subset(self, keep: np.ndarray) -> None:
        """Keep only the samples where the boolean mask ``keep`` is True (in place)."""
        keep = np.asarray(keep, dtype=bool)
        self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
        self.labels = {k: v[keep] for k, v in self.labels.items()}

    def labelled(self, indices: np.ndarray, require: Sequence[str] | str | None) -> np.ndarray:
        """``indices`` restricted to samples whose labels in ``require`` are known (>= 0 / not NaN)."""
        if not require:
            return indices
        if isinstance(require, str):
            require = [require]
        ok = np.ones(len(indices), dtype=bool)
        for task in require:
            v = self.labels[task][indices]
            ok &= ~np.isnan(v) if v.dtype.kind == "f" else v >= 0
        return indices[ok]


def check_images(ds: FaceDataset, *, drop_missing: bool = True, max_bad_fraction: float = 0.05) -> None:
    """Stat every image: missing or empty files are counted in ``problems['missing_images']`` and dropped.

    Raises DataError when the image folder is absent or more than ``max_bad_fraction`` are missing.
    """
    if not ds.paths:
        return
    ok = np.zeros(len(ds.paths), dtype=bool)
    for i, rel in enumerate(ds.paths):
        try:
            ok[i] = (ds.root / rel).stat().st_size > 0
        except OSError:
            ok[i] = False
    n_bad = int((~ok).sum())
    ds.problems["missing_images"] = ds.problems.get("missing_images", 0) + n_bad
    if n_bad:
        examples = [str(ds.root / p) for p, k in zip(ds.paths, ok, strict=True) if not k][:3]
        ds.info["missing_examples"] = examples
        frac = n_bad / len(ds.paths)
        if n_bad == len(ds.paths) or frac > max_bad_fraction:
            raise DataError(
                f"{ds.name}: {n_bad} of {len(ds.paths)} images are missing or empty ({frac:.1%} > "
                f"max_bad_fraction {max_bad_fraction:.1%}); e.g. " + ", ".join(examples),
                hint="check the image layout under the root, or pass check_images=False to read labels only",
            )
        if drop_missing:
            ds.subset(ok)


def stratified_split(strata: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``arange(len(strata))`` into len(fractions) parts, proportionally within every stratum, seeded.

    Rounding is done by largest remainder per stratum, with the leftovers spread so the totals match the
    fractions closely. Returns sorted index arrays.
    """
    rng = np.random.default_rng(seed)
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    carry = np.zeros(len(fr))
    _, inverse = np.unique(strata, return_inverse=True)
    for s in range(inverse.max() + 1 if len(inverse) else 0):
        idx = np.flatnonzero(inverse == s)
        rng.shuffle(idx)
        want = len(idx) * fr + carry
        take = np.floor(want).astype(int)
        rest = len(idx) - take.sum()
        order = np.argsort(-(want - take), kind="stable")
        take[order[:rest]] += 1
        carry = want - take
        start = 0
        for k, t in enumerate(take):
            parts[k].append(idx[start : start + t])
            start += t
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=int) for p in parts]


def group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (rest, held) so that no group is in both; ``held`` has ~fraction of samples.

    Groups are shuffled with ``seed`` and taken until the held-out share reaches ``fraction``.
    """
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    target = fraction * len(groups)
    held_groups = np.zeros(len(uniq), dtype=bool)
    total = 0
    for g in order:
        if total >= target or (total > 0 and total + counts[g] - target > target - total):
            continue
        held_groups[g] = True
        total += counts[g]
    if fraction > 0 and not held_groups.any() and len(uniq) > 1:
        held_groups[order[0]] = True
    held = held_groups[inverse]
    return np.flatnonzero(~held), np.flatnonzero(held)


def label_counts(ds: FaceDataset, indices: np.ndarray | None = None) -> dict[str, dict[str, int]]:
    """Per task, counts of each class name (plus 'unknown') over ``indices`` (all when None)."""
    out: dict[str, dict[str, int]] = {}
    for task, names in ds.classes.items():
        if task not in ds.labels:
            continue
        v = ds.labels[task] if indices is None else ds.labels[task][indices]
        c = Counter(v.tolist())
        d = {names[k]: int(c.get(k, 0)) for k in range(len(names))}
        d["unknown"] = int(sum(n for k, n in c.items() if k < 0))
        out[task] = d
    return out
