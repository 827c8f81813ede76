"""GPU step throughput: images/s of a training step fed by our data path vs. the ceiling.

For each model (resnet50, mobilenetv2_100 at 224 px by default) two loops run in the same process, same
model, same batch size, bf16 autocast and channels_last on CUDA:

- ceiling: synthetic tensors already on the device, only forward + backward + optimizer step;
- ours: the production path — a decoded uint8 image array (as the decoded cache gives it, in host memory),
  batched by ``datasets.pipeline.DeviceLoader`` (pinned memory, non-blocking copies, flip / crop-scale /
  brightness augmentation and normalisation on the device), then the same step.

Reported per model: both images/s and ours / ceiling. Target ≥ 0.90. Runs on CPU too (smaller defaults), to
keep the script honest where no GPU is lent; the target only applies to CUDA.

    .venv/bin/python bench/gpu_step.py [--models resnet50,mobilenetv2_100] [--size 224] [--batch 128] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import create_backbone, data_config  # noqa: E402
from datasets.pipeline import DeviceLoader  # noqa: E402

TARGET = 0.90


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step_fn(model: torch.nn.Module, device: torch.device, channels_last: bool):  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, size: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    model = create_backbone(name, 2).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    cfg = data_config(model)
    step = _step_fn(model, device, channels_last)

    # ceiling: tensors already on the device
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        step(x, y)
    _sync(device)
    first3 = time.perf_counter() - t0  # what a fresh trial pays before its steady speed (cuDNN autotuning)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    ceiling = steps * batch / (time.perf_counter() - t0)

    # ours: decoded uint8 images in host memory → DeviceLoader (augment + normalise on the device) → step
    n = batch * min(steps, 40)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size + size // 8, size + size // 8, 3), dtype=np.uint8)
    labels = {"gender": rng.integers(0, 2, size=n)}
    loader = DeviceLoader(
        images,
        labels,
        np.arange(n),
        batch,
        device=device,
        train=True,
        input_size=size,
        mean=cfg["mean"],
        std=cfg["std"],
        augment={"flip": 0.5, "scale": (0.8, 1.0), "rotate": 0.0, "brightness": 0.2, "contrast": 0.2},
        tasks=["gender"],
    )
    done = 0
    warm = 0
    t0 = 0.0
    while done < steps:
        for xb, yb in loader:
            step(xb, yb["gender"].long())
            warm += 1
            if warm == 3:
                _sync(device)
                t0 = time.perf_counter()
            elif warm > 3:
                done += 1
                if done >= steps:
                    break
    _sync(device)
    ours = steps * batch / (time.perf_counter() - t0)
    return {
        "ceiling_img_s": round(ceiling, 1),
        "ours_img_s": round(ours, 1),
        "ratio": round(ours / ceiling, 3),
        "first_3_steps_s": round(first3, 2),
    }


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenetv2_100")
    ap.add_argument("--size", type=int, default=224 if cuda else 64)
    ap.add_argument("--batch", type=int, default=128 if cuda else 16)
    ap.add_argument("--steps", type=int, default=30 if cuda else 5)
    ap.add_argument(
        "--cudnn-benchmark", type=int, choices=[0, 1], default=1, help="cuDNN autotuning (as train.py)"
    )
    args = ap.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    results = {}
    for name in args.models.split(","):
        r = measure(name, args.size, args.batch, args.steps, device)
        results[name] = r
        print(
            f"{name} @ {args.size}px, batch {args.batch}: ceiling {r['ceiling_img_s']} img/s, "
            f"ours {r['ours_img_s']} img/s ({r['ratio']:.0%}); first 3 steps {r['first_3_steps_s']} s"
        )
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(
        json.dumps(
            {
                "benchmark": "gpu_step",
                "device": device_name,
                "size": args.size,
                "cudnn_benchmark": bool(args.cudnn_benchmark),
                "batch": args.batch,
                "models": results,
                "target_ratio": TARGET,
                "met": bool(cuda and all(r["ratio"] >= TARGET for r in results.values())),
                "note": None if cuda else "no GPU here: CPU run of the same code, the target applies to CUDA",
            }
        )
    )


if __name__ == "__main__":
    main()
