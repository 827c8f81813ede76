"""Decode-once cache: a dataset's images as one (N, H, W, 3) uint8 memory-mapped ``.npy``.

``$ORCHESTRATE_CACHE_DIR/decoded/<name>-<H>x<W>-<key>.npy`` with ``…-<key>.bad.npy`` beside it (bool mask of
images that were missing or could not be decoded; their rows are zeros). The key hashes the dataset name,
root, resolution and every file's relative path, size and mtime, so any change rebuilds. Building runs
under a file lock (two trials building at once: one builds, the other waits and reuses it), writes to a
temporary file and renames it into place, and prints a progress bar on stderr.

Images are centre-cropped to the target aspect ratio, then resized (PIL JPEG draft mode + bilinear/box).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.base import FaceDataset, cache_dir, file_lock
from orchestrator.trial.errors import DataError

CACHE_VERSION = 1


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = resolution
    return int(h), int(w)


def cache_key(ds: FaceDataset, resolution: int | tuple[int, int]) -> str:
    """Hash of (name, root, resolution, every relative path with its size and mtime)."""
    h, w = _size(resolution)
    d = hashlib.sha256(
        f"v{CACHE_VERSION}|{ds.name}|{Path(ds.root).resolve()}|{h}x{w}|{len(ds.paths)}\n".encode()
    )
    for rel in ds.paths:
        try:
            st = os.stat(ds.root / rel)
            d.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            d.update(f"{rel}|missing\n".encode())
    return d.hexdigest()[:20]


def cache_paths(ds: FaceDataset, resolution: int | tuple[int, int]) -> tuple[Path, Path]:
    """(array path, bad-mask path) for this dataset and resolution."""
    h, w = _size(resolution)
    stem = f"{ds.name}-{h}x{w}-{cache_key(ds, resolution)}"
    d = cache_dir() / "decoded"
    return d / f"{stem}.npy", d / f"{stem}.bad.npy"


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode one image to (H, W, 3) uint8: centre crop to the target aspect, then resize."""
    h, w = size
    with Image.open(path) as im:
        im.draft("RGB", (w, h))  # JPEG: decode at a reduced scale (>= target) — much faster
        im = im.convert("RGB")
        iw, ih = im.size
        target = w / h
        if abs(iw / ih - target) > 1e-3:
            if iw / ih > target:
                cw = round(ih * target)
                box = ((iw - cw) // 2, 0, (iw - cw) // 2 + cw, ih)
            else:
                ch = round(iw / target)
                box = (0, (ih - ch) // 2, iw, (ih - ch) // 2 + ch)
            im = im.crop(box)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(im, dtype=np.uint8)


class _Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 5.0) and self.done < self.total:
            return
        self.last = now
        frac = self.done / max(self.total, 1)
        rate = self.done / max(now - self.t0, 1e-9)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        end = "\r" if self.tty and self.done < self.total else "\n"
        print(
            f"{self.label} [{bar}] {self.done}/{self.total} {rate:.0f} img/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def build(
    ds: FaceDataset, resolution: int | tuple[int, int], out: Path, bad_out: Path, threads: int | None = None
) -> None:
    """Decode every image of ``ds`` into ``out`` (temp file + rename); the bad mask goes to ``bad_out``."""
    h, w = _size(resolution)
    n = len(ds.paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npy")
    tmp_bad = bad_out.with_name(f".{bad_out.stem}.{os.getpid()}.tmp.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
    bad = np.zeros(n, dtype=bool)
    progress = _Progress(n, f"decoding {ds.name} at {h}x{w}")

    def work(i: int) -> None:
        try:
            arr[i] = load_image(ds.root / ds.paths[i], (h, w))
        except Exception:  # missing, truncated or not an image: recorded, row left as zeros
            bad[i] = True

    threads = threads or min(8, (os.cpu_count() or 2) * 2)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for chunk in range(0, n, 256):
                list(pool.map(work, range(chunk, min(chunk + 256, n))))
                progress.update(min(256, n - chunk))
        arr.flush()
        np.save(tmp_bad, bad)
        os.replace(tmp_bad, bad_out)
        os.replace(tmp, out)  # the array appears last: its existence means the cache is complete
    finally:
        for p in (tmp, tmp_bad):
            if p.exists():
                p.unlink()


def decoded(
    ds: FaceDataset,
    resolution: int | tuple[int, int],
    *,
    threads: int | None = None,
    max_bad_fraction: float = 0.05,
) -> np.ndarray:
    """The (N, H, W, 3) uint8 array of ``ds``'s images (read-only memmap), built once and shared.

    Sets ``ds.problems['bad_images']`` and ``ds.info['bad_mask']`` (bool array, True = undecodable; drop those
    indices before training). More than ``max_bad_fraction`` bad images raises DataError.
    """
    out, bad_out = cache_paths(ds, resolution)
    if not (out.exists() and bad_out.exists()):
        with file_lock(out.with_suffix(".lock")):
            if not (out.exists() and bad_out.exists()):
                build(ds, resolution, out, bad_out, threads=threads)
    arr = np.load(out, mmap_mode="r")
    bad = np.load(bad_out)
    ds.problems["bad_images"] = int(bad.sum())
    ds.info["bad_mask"] = bad
    ds.info["decoded_path"] = str(out)
    if len(bad) and bad.mean() > max_bad_fraction:
        examples = [str(ds.root / ds.paths[i]) for i in np.flatnonzero(bad)[:3]]
        raise DataError(
            f"{ds.name}: {int(bad.sum())} of {len(bad)} images could not be decoded "
            f"(> max_bad_fraction {max_bad_fraction:.1%}); e.g. " + ", ".join(examples),
            hint=f"the decoded cache is {out}; fix or remove the bad files",
        )
    return arr
