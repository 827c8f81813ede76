"""A real small-CNN trial on scikit-learn's bundled digits images (8×8, 1,797 images, 10 classes), CPU.

    python -m bench.programs.digits_trial --config=7 [--epochs=30] [--seed=0]

``--config`` indexes ``CONFIGS`` (optimizer × learning rate × width × batch size: 32 configurations), so a
sweep over one ``config`` parameter runs them in whatever order its ``values`` list them. Fixed split: a seeded
permutation, 1,347 training / 450 validation images. One torch thread; deterministic for a given config and
seed. With ``$BENCH_CLOCK_FILE`` set it appends its start time there (one JSON line). Each epoch reports ``val_acc`` (percent, this epoch's model) through the orchestrate protocol; the
summary's ``val_acc`` is the best epoch's (the trial's objective), with the configuration's settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

from orchestrator.trial import protocol

OPTIMIZERS = ("sgd", "adam")
LRS = (0.001, 0.003, 0.01, 0.03)
WIDTHS = (4, 16)
BATCHES = (32, 128)
CONFIGS = [
    {"optimizer": o, "lr": lr, "width": w, "batch_size": b}
    for o, lr, w, b in itertools.product(OPTIMIZERS, LRS, WIDTHS, BATCHES)
]
N_VAL = 450


def data() -> tuple:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.RandomState(0).permutation(len(y))
    x = torch.tensor(x[perm] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y[perm], dtype=torch.long)
    return x[N_VAL:], y[N_VAL:], x[:N_VAL], y[:N_VAL]


def model(width: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 10),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args, _ = ap.parse_known_args(argv)
    clock = os.environ.get("BENCH_CLOCK_FILE")
    if clock:  # the trial's own start (a pruned trial is killed: its end is the controller's record)
        line = json.dumps(
            {"config": args.config, "start": time.time(), "trial": os.environ.get("ORCHESTRATE_TRIAL")}
        )
        fd = os.open(clock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, (line + "\n").encode())
        os.close(fd)
    cfg = CONFIGS[args.config]
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(args.seed * 1000 + args.config)
    xtr, ytr, xva, yva = data()
    net = model(cfg["width"])
    if cfg["optimizer"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=0.9)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    best, best_epoch, t0 = -1.0, -1, time.time()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(ytr), generator=gen)
        total = 0.0
        for i in range(0, len(ytr), cfg["batch_size"]):
            idx = order[i : i + cfg["batch_size"]]
            opt.zero_grad()
            loss = loss_fn(net(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            acc = 100.0 * float((net(xva).argmax(1) == yva).float().mean())
        if acc > best:
            best, best_epoch = acc, epoch
        protocol.report(epoch, {"val_acc": acc, "train_loss": total / len(ytr)})
    protocol.summary(
        {"val_acc": best, "best_epoch": best_epoch, "config": args.config, **cfg, "train_s": time.time() - t0}
    )


if __name__ == "__main__":
    main(sys.argv[1:])
