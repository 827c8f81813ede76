"""Benchmark: naive per-image PIL DataLoader vs decoded cache + device pipeline, on the same JPEGs.

    python bench/data_pipeline.py [--n 2000] [--src 200] [--size 128] [--batch 64] [--device cpu|cuda]

Writes ``n`` synthetic face JPEGs of ``src`` px into a temporary folder (UTKFace layout), then measures
images/second of one epoch each:

* naive: torch DataLoader, 2 workers, per image PIL open + resize + random flip + to-tensor + normalise;
* ours: ``datasets.decoded`` (one-time decode, reported as ``decode_s``, into a fresh cache) then
  ``DeviceLoader`` (train=True, flip + normalise on the device; the same work as naive).

The last line printed is one JSON object (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class NaiveSet(Dataset):
    def __init__(self, paths: list[Path], labels: np.ndarray, size: int) -> None:
        self.paths, self.labels, self.size = paths, labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        if torch.rand(1).item() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        return (x - MEAN) / STD, int(self.labels[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--src", type=int, default=200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed for ours (after a warm-up batch)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    os.environ["ORCHESTRATE_CACHE_DIR"] = str(tmp / "cache")
    from datasets import decoded, open_dataset
    from datasets.pipeline import Augment, DeviceLoader
    from datasets.synth import _render_and_write

    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 90, args.n).astype(np.float32)
    fem = rng.integers(0, 2, args.n)
    races = rng.integers(0, 5, args.n)
    names = [
        f"UTKFace/{int(a)}_{g}_{r}_2017011617{i:07d}.jpg.chip.jpg"
        for i, (a, g, r) in enumerate(zip(ages, fem, races, strict=True))
    ]
    root = tmp / "utk"
    t0 = time.perf_counter()
    _render_and_write(root, names, ages, fem, np.arange(args.n), size=args.src, seed=0)
    gen_s = time.perf_counter() - t0
    ds = open_dataset("utkface", root)
    assert len(ds) == args.n, (len(ds), ds.problems)

    # naive
    naive = DataLoader(
        NaiveSet([ds.abspath(i) for i in range(len(ds))], ds.labels["gender"], args.size),
        batch_size=args.batch, shuffle=True, num_workers=args.workers, pin_memory=args.device == "cuda",
        persistent_workers=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    n = 0
    for x, _y in naive:
        x = x.to(args.device, non_blocking=True)
        n += x.shape[0]
    if args.device == "cuda":
        torch.cuda.synchronize()
    naive_s = time.perf_counter() - t0
    naive_img_s = n / naive_s

    # ours
    t0 = time.perf_counter()
    arr = decoded(ds, args.size)
    decode_s = time.perf_counter() - t0
    dl = DeviceLoader(arr, ds.labels, np.arange(len(ds)), args.batch, args.device, train=True,
                      augment=Augment.flip_only(), tasks=["gender"])  # fmt: skip
    next(iter(dl))  # warm-up (page cache, CUDA context)
    t0 = time.perf_counter()
    n = 0
    for _ in range(args.epochs):
        for x, _y in dl:
            n += x.shape[0]
    if args.device == "cuda":
        torch.cuda.synchronize()
    ours_img_s = n / (time.perf_counter() - t0)

    ratio = ours_img_s / naive_img_s
    print(f"generated {args.n} JPEGs of {args.src}px in {gen_s:.1f}s; device {args.device}; torch threads "
          f"{torch.get_num_threads()}; cpu {os.cpu_count()}", file=sys.stderr)  # fmt: skip
    print(json.dumps({
        "benchmark": "data_pipeline", "naive_img_s": round(naive_img_s, 1), "ours_img_s": round(ours_img_s, 1),
        "ratio": round(ratio, 2), "decode_s": round(decode_s, 2), "target_ratio": 10, "met": ratio >= 10,
        "n": args.n, "src_px": args.src, "size": args.size, "batch": args.batch, "device": args.device,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
