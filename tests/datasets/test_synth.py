from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from PIL import Image

import datasets
from datasets import ensure_synthetic, open_dataset
from datasets.adience import load_adience, read_fold_file
from datasets.base import line_ending
from tests.datasets.conftest import ADIENCE


def test_no_torch_import() -> None:
    import subprocess
    import sys

    code = "import sys, datasets, datasets.synth, datasets.check, datasets.cache, datasets.adience, datasets.celeba, datasets.utkface; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(datasets.__file__).parents[1],
        check=False,
    )
    assert out.stdout.strip() == "False", out.stderr


def test_adience_synthetic_layout_and_labels(synth_root) -> None:
    root = synth_root("adience", 200, 40)
    ds = open_dataset("adience", root)
    assert 190 <= len(ds) <= 210 and ds.problems["missing_images"] == 0
    for k in range(5):
        # same line-ending style as the real file, rows are real rows, every fold keeps several users
        assert line_ending(root / f"fold_{k}_data.txt") == line_ending(ADIENCE / f"fold_{k}_data.txt")
        real = {tuple(r) for r in read_fold_file(ADIENCE / f"fold_{k}_data.txt")}
        rows = read_fold_file(root / f"fold_{k}_data.txt")
        assert all(tuple(r) in real for r in rows)
        assert len({r[0] for r in rows}) >= 10
    real_ds = load_adience(ADIENCE, check_images=False)
    lookup = dict(zip(real_ds.paths, real_ds.labels["age_group"], strict=True))
    assert all(lookup[p] == g for p, g in zip(ds.paths, ds.labels["age_group"], strict=True))
    with Image.open(ds.abspath(0)) as im:
        assert im.size == (40, 40) and im.mode == "RGB"
    # label mix kept roughly: share of (25, 32) among strict labels
    g = ds.labels["age_group"][ds.labels["age_group"] >= 0]
    assert 0.15 < (g == 4).mean() < 0.45


def test_appearance_depends_on_labels(synth_root) -> None:
    """Trees on colour histograms + a 16x16 thumbnail predicts gender and age > 40 well above chance."""
    from sklearn.ensemble import ExtraTreesClassifier

    root = synth_root("utkface", 600, 32)
    ds = open_dataset("utkface", root)
    feats = []
    for i in range(len(ds)):
        a = np.asarray(Image.open(ds.abspath(i)).convert("RGB"), dtype=np.float32) / 255
        hist = (
            np.concatenate([np.histogram(a[..., c], bins=12, range=(0, 1))[0] for c in range(3)])
            / a[..., 0].size
        )
        feats.append(np.concatenate([hist, a[::2, ::2].mean(-1).ravel()]))
    perm = np.random.default_rng(0).permutation(len(ds))  # files are sorted by age: shuffle
    x = np.asarray(feats)[perm]
    for y in (ds.labels["gender"][perm], (ds.labels["age"][perm] > 40).astype(int)):
        clf = ExtraTreesClassifier(150, random_state=0, n_jobs=1).fit(x[:450], y[:450])
        acc = clf.score(x[450:], y[450:])
        base = max(y[450:].mean(), 1 - y[450:].mean())
        assert acc > base + 0.1, (acc, base)


def _ensure(q: mp.Queue[str], cache: str) -> None:
    os.environ["ORCHESTRATE_CACHE_DIR"] = cache
    q.put(str(ensure_synthetic("celeba", limit=60, size=24, seed=0)))


def test_ensure_synthetic_idempotent_and_locked(tmp_path: Path) -> None:
    cache = str(tmp_path / "c")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(q, cache)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    roots = {q.get(timeout=5), q.get(timeout=5)}
    assert len(roots) == 1
    root = Path(roots.pop())
    assert (root / ".complete").exists()
    os.environ["ORCHESTRATE_CACHE_DIR"] = cache
    mtime = (root / ".complete").stat().st_mtime_ns
    assert ensure_synthetic("celeba", limit=60, size=24, seed=0) == root
    assert (root / ".complete").stat().st_mtime_ns == mtime
    assert [p.name for p in (root.parent).iterdir() if p.is_dir()] == [root.name]  # no temp dirs left
    assert len(open_dataset("celeba", root)) == 60
