"""``orchestrate datasets check``: load a dataset and report counts per split/fold and label, and every problem.

The result is a JSON-serialisable dict:
``{"dataset", "root", "ok", "samples", "options", "problems": {kind: count}, "info": {...},
"labels": {task: {class: count, "unknown": n}}, "splits": {split: {"samples", "labels"}},
"folds": {k: {...}} (Adience), "errors": [message]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datasets.base import CORE_TASKS, label_counts
from orchestrator.trial.errors import DataError


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return None if v.size > 100 else v.tolist()
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    return v


def check(name: str, root: str | Path, *, verify_images: bool = False, **opts: Any) -> dict[str, Any]:
    """Load ``name`` from ``root`` with loader options ``opts`` (split options go under ``split={...}``).

    ``verify_images=True`` also decodes every image as the training cache does (``datasets.cache.load_image``,
    at a small size) and counts those it cannot (``problems['undecodable_images']``, with up to 5 paths in
    ``info['undecodable_examples']``): training drops exactly these. A DataError from the loader is returned as ``ok: False`` with the
    message in ``errors``, so the CLI can render it either way.
    """
    from datasets import open_dataset

    split_opts = opts.pop("split", {}) or {}
    report: dict[str, Any] = {
        "dataset": name,
        "root": str(root),
        "ok": True,
        "options": _jsonable(opts),
        "errors": [],
    }
    try:
        ds = open_dataset(name, root, **opts)
    except DataError as e:
        report.update(ok=False, errors=[e.render()])
        return report
    report["samples"] = len(ds)
    if verify_images:
        from datasets.cache import load_image

        bad = []
        for i, rel in enumerate(ds.paths):
            if not (ds.root / rel).is_file():
                continue  # counted as missing_images already
            try:
                load_image(ds.root / rel, (16, 16))
            except Exception:
                bad.append(i)
        ds.problems["undecodable_images"] = len(bad)
        if bad:
            ds.info["undecodable_examples"] = [str(ds.paths[i]) for i in bad[:5]]
    report["problems"] = {k: int(v) for k, v in ds.problems.items()}
    report["info"] = _jsonable({k: v for k, v in ds.info.items() if k not in ("users", "bad_mask")})
    tasks = {t: c for t, c in ds.classes.items() if t in CORE_TASKS or t in ("Male", "Young", "Smiling")}
    full = label_counts(ds)
    report["labels"] = {t: full[t] for t in tasks if t in full}
    if "age" in ds.labels:
        a = ds.labels["age"]
        report["labels"]["age"] = {"known": int((~np.isnan(a)).sum()), "unknown": int(np.isnan(a).sum())}
    try:
        splits = ds.split(**split_opts)
    except DataError as e:
        report["ok"] = False
        report["errors"].append(e.render())
        splits = {}
    report["splits"] = {
        k: {"samples": len(idx), "labels": {t: c for t, c in label_counts(ds, idx).items() if t in tasks}}
        for k, idx in splits.items()
    }
    if "fold" in ds.labels:
        f = ds.labels["fold"]
        report["folds"] = {
            str(k): {
                "samples": int((f == k).sum()),
                "users": int(len(np.unique(ds.labels["user"][f == k]))) if "user" in ds.labels else None,
                "labels": {t: c for t, c in label_counts(ds, np.flatnonzero(f == k)).items() if t in tasks},
            }
            for k in range(int(f.max(initial=-1)) + 1)
        }
    return report
