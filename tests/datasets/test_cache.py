from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import decoded, open_dataset
from datasets.cache import cache_paths
from datasets.check import check
from orchestrator.trial.errors import DataError


def _copy(synth_root, tmp_path: Path) -> Path:
    dst = tmp_path / "celeba"
    shutil.copytree(synth_root("celeba", 60, 32), dst)
    return dst


def test_decode_reuse_and_rebuild(synth_root, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    ds = open_dataset("celeba", root)
    arr = decoded(ds, 24)
    assert arr.shape == (60, 24, 24, 3) and arr.dtype == np.uint8 and isinstance(arr, np.memmap)
    # same pixels as a direct decode (centre crop of the 32x39 image, resize)
    with Image.open(ds.abspath(3)) as im:
        w, h = im.size
        top = (h - w) // 2
        ref = np.asarray(
            im.convert("RGB").crop((0, top, w, top + w)).resize((24, 24), Image.Resampling.BILINEAR)
        )
    assert np.abs(arr[3].astype(int) - ref.astype(int)).mean() < 3
    path, bad = cache_paths(ds, 24)
    assert path.exists() and bad.exists() and ds.problems["bad_images"] == 0
    t = path.stat().st_mtime_ns
    arr2 = decoded(open_dataset("celeba", root), 24)
    assert path.stat().st_mtime_ns == t and np.array_equal(arr, arr2)
    # a changed file changes the key → rebuilt into a new file
    Image.new("RGB", (32, 39), (255, 0, 0)).save(ds.abspath(3))
    ds2 = open_dataset("celeba", root)
    p2, _ = cache_paths(ds2, 24)
    assert p2 != path
    arr3 = decoded(ds2, 24)
    assert arr3[3, 12, 12].tolist()[0] > 240 and np.array_equal(arr3[4], arr[4])
    assert cache_paths(ds2, (24, 20))[0] != p2


def test_corrupt_image_counted(synth_root, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    ds = open_dataset("celeba", root)
    ds.abspath(7).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = open_dataset("celeba", root)
    arr = decoded(ds, 16)
    assert ds.problems["bad_images"] == 1 and ds.info["bad_mask"][7] and not arr[7].any()
    rep = check("celeba", root, verify_images=True)
    assert rep["ok"] and rep["problems"]["undecodable_images"] == 1
    for i in (8, 9, 10, 11):
        ds.abspath(i).write_bytes(b"junk")
    with pytest.raises(DataError, match="could not be decoded"):
        decoded(open_dataset("celeba", root), 16)


def _build(root: str, cache: str, q: mp.Queue[str]) -> None:
    os.environ["ORCHESTRATE_CACHE_DIR"] = cache
    arr = decoded(open_dataset("celeba", root), 20)
    q.put(f"{arr.shape[0]} {int(arr.sum())}")


def test_two_processes_build_once(synth_root, tmp_path: Path) -> None:
    root = _copy(synth_root, tmp_path)
    cache = str(tmp_path / "cache2")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(root), cache, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    a, b = q.get(timeout=5), q.get(timeout=5)
    assert a == b and a.startswith("60 ")
    files = sorted(p.name for p in (Path(cache) / "decoded").iterdir())
    assert [f for f in files if f.endswith(".npy")] and not [f for f in files if "tmp" in f]
    assert len([f for f in files if f.endswith(".npy") and not f.endswith(".bad.npy")]) == 1


def test_check_report(synth_root) -> None:
    import json

    rep = check("adience", synth_root("adience", 200, 40), split={"test_fold": 2})
    json.dumps(rep)
    assert rep["ok"] and rep["samples"] == sum(f["samples"] for f in rep["folds"].values())
    assert set(rep["splits"]) == {"train", "val", "test"}
    assert rep["splits"]["test"]["samples"] == rep["folds"]["2"]["samples"]
    assert "gender" in rep["labels"] and rep["problems"]["missing_images"] == 0
    bad = check("adience", "/nonexistent/adience")
    assert not bad["ok"] and "/nonexistent/adience" in bad["errors"][0]
