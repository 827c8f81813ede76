"""The training of ``python -m experiments.train RUN_DIR``, once its trial and config are checked (train.py).

:func:`run` reads top to bottom: seeds and device, data (labels and splits, then the decoded images:
trainer_data.py), model and optimizer, loaders and schedule, resume from ``checkpoint_last.pt``, the epochs (a
``metrics`` protocol line and a checkpoint each), then the final model's test metrics (evaluation.py), the
``summary`` line and the W&B extras. A step that meets bad input (missing data, an empty split, a backbone that
cannot be built) prints ``error: …`` on stderr and exits 2.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import backbones
from datasets.pipeline import Augment, DeviceLoader
from experiments import config as config_mod
from experiments import determinism
from experiments import metrics as M
from experiments import tasks as T
from experiments.config import TrainConfig
from experiments.evaluation import (
    evaluate,
    log_predictions,
    reported,
    train_accuracy,
    train_hits,
    write_confusions,
)
from experiments.optim import SWA, LRSchedule, build_optimizer
from experiments.trainer_data import Data, fail, load_data, load_images, stored_size
from experiments.wandb_log import Logger
from orchestrator.trial import protocol
from orchestrator.trial.rundir import RunDir


@dataclass
class Device:
    """Where and in which precision the model runs."""

    device: torch.device
    cuda: bool
    autocast: Any  # torch.autocast (bf16 on CUDA with amp) or a no-op context
    memory_format: torch.memory_format


@dataclass
class Model:
    net: Any  # the backbone (its own keys: what checkpoint_best.pt holds)
    model: T.TaskModel
    fwd: Any  # the model, compiled with compile
    optimizer: torch.optim.Optimizer
    head_group: int  # the param group whose lr is reported
    image_size: int
    mean: Any
    std: Any


@dataclass
class Loop:
    """What the epochs and the evaluations run with."""

    train_loader: DeviceLoader
    loader_kw: dict[str, Any]
    steps_per_epoch: int
    schedule: LRSchedule
    swa: SWA | None
    eval_bs: int
    loss_kw: dict[str, Any]


@dataclass
class Progress:
    """The state a checkpoint carries from epoch to epoch (and across a resume)."""

    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "epoch": None, "metrics": {}})
    bad_epochs: int = 0


def run(rd: RunDir, cfg: TrainConfig, metric_name: str, goal: str) -> None:
    """Train the checked ``cfg`` in ``rd`` and report on stdout."""
    task_names = config_mod.active_tasks(cfg)
    dev = setup_device(cfg)
    data = load_data(cfg, task_names)
    model = build_model(cfg, data, dev)
    data.stored_size = stored_size(cfg, model.image_size)
    load_images(cfg, data)
    loop = build_loop(cfg, data, model, dev)
    progress, resumed = resume(rd, model, loop, dev)
    logger = Logger.start(config_mod.to_dict(cfg), rd.path, metric_name, goal, resume=resumed)
    on_sigterm(rd, logger, progress)
    protocol.emit(
        "info", wandb_run=logger.run_path, device=str(dev.device), epochs=cfg.epochs, tasks=task_names
    )
    progress.bad_epochs = (
        0 if progress.best["epoch"] is None else (progress.start_epoch - progress.best["epoch"])
    )

    def refused(message: str) -> None:
        logger.finish({"error": message}, exit_code=2)

    with determinism.refuse_nondeterministic(str(dev.device), cfg.backbone, refused):
        train_epochs(rd, cfg, data, model, loop, dev, progress, logger, metric_name, goal)
    finish(rd, cfg, data, model, loop, dev, progress, logger, metric_name, refused)


# ---------------------------------------------------------------------------------------------------------
# seeds and device
def setup_device(cfg: TrainConfig) -> Device:
    assert cfg.seed is not None
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cfg.deterministic:  # every op deterministic, or a refusal naming the one that is not (below)
        determinism.enable(cuda)
    elif cuda:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and cfg.amp) else nullcontext()
    memory_format = torch.channels_last if (cuda and cfg.channels_last) else torch.contiguous_format
    return Device(device, cuda, autocast, memory_format)


# ---------------------------------------------------------------------------------------------------------
# model
def build_model(cfg: TrainConfig, data: Data, dev: Device) -> Model:
    net = build_backbone(cfg, data.tasks)
    dcfg = backbones.data_config(net)
    image_size = cfg.image_size or int(dcfg["input_size"][-1])
    mean, std = (dcfg["mean"], dcfg["std"]) if cfg.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    model = T.TaskModel(net, data.tasks, greyscale=cfg.greyscale, mean=mean, std=std).to(
        device=dev.device, memory_format=dev.memory_format
    )
    optimizer = build_optimizer(cfg, param_groups(cfg, net, model))
    head_group = next(  # the group whose lr is reported (the heads'; param groups may scale the trunk's)
        (i for i, g in enumerate(optimizer.param_groups) if g.get("name", "").startswith("head")), -1
    )
    fwd = torch.compile(model) if cfg.compile else model
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.backbone} ({n_params / 1e6:.2f} M params), {image_size} px, device {dev.device}")
    return Model(net, model, fwd, optimizer, head_group, image_size, mean, std)


def build_backbone(cfg: TrainConfig, tasks: list[T.TaskSpec]) -> Any:
    """The backbone with the tasks' heads; pretrained: a path may be a previous trial's checkpoint_best.pt
    (two-stage: CelebA gender → Adience age). Exit 2 when it cannot be built."""
    backbone_kwargs = dict(cfg.backbone_args)
    if (
        cfg.image_size
        and backbones.is_registered(cfg.backbone)
        and "img_size" in backbones.factory_options(cfg.backbone)
    ):
        backbone_kwargs.setdefault("img_size", cfg.image_size)
    if cfg.dropout is not None:
        backbone_kwargs["drop_rate"] = cfg.dropout
    try:
        net = backbones.create_backbone(
            cfg.backbone, T.head_sizes(tasks), pretrained=cfg.pretrained, **backbone_kwargs
        )
        from_file = isinstance(cfg.pretrained, str) and cfg.pretrained.strip().lower() not in (
            "true", "yes", "1", "false", "none", "no", "0",
        )  # fmt: skip
        if from_file and not cfg.pretrained_heads:  # fine-tuning: the trunk from the file, fresh heads
            net = backbones.replace_heads(net, T.head_sizes(tasks))
        if cfg.freeze != "none":
            backbones.freeze(net, cfg.freeze)
    except (
        ValueError,
        TypeError,
        OSError,
        backbones.WeightsUnavailableError,
        backbones.WeightsMismatchError,
    ) as exc:
        # a bad name, model option, freeze spec, or weights that are missing or do not fit
        fail(f"backbone {cfg.backbone!r}: {exc}")
    return net


def param_groups(cfg: TrainConfig, net: Any, model: T.TaskModel) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the backbone's (lr multipliers per part), then the CORAL biases."""
    groups = backbones.param_groups(
        net,
        lr=cfg.lr,
        backbone_lr_mult=cfg.backbone_lr_mult,
        weight_decay=cfg.weight_decay,
        head_lr_mult=cfg.head_lr_mult,
        bias_lr_mult=cfg.bias_lr_mult,
    )
    coral_params = [p for p in model.coral.parameters() if p.requires_grad]
    if coral_params:
        groups.append({"params": coral_params, "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": 0.0})
    return groups


# ---------------------------------------------------------------------------------------------------------
# loaders, loss and schedule
def build_loop(cfg: TrainConfig, data: Data, model: Model, dev: Device) -> Loop:
    augment = None
    if cfg.augment:
        augment = Augment(
            flip=0.5 if cfg.flip else 0.0,
            scale=(cfg.crop_scale, 1.0),
            ratio=(1.0, 1.0) if cfg.crop_scale == 1 else (0.9, 1.1),
            rotate=cfg.rotate,
            translate=cfg.translate,
            brightness=cfg.brightness,
            contrast=cfg.contrast,
        )
    tasks = data.tasks
    primary = next((t for t in tasks if t.kind != "regression"), None)
    names = [t.name for t in tasks]
    loader_kw: dict[str, Any] = {"device": dev.device, "mean": model.mean, "std": model.std, "tasks": names}
    if cfg.random_crop:  # every loader takes an image_size window of the stored faces (random when training)
        loader_kw.update(input_size=model.image_size, crop="random")
    train_loader = DeviceLoader(
        data.images,
        data.targets,
        data.train_idx,
        cfg.batch_size,
        train=True,
        augment=augment or False,
        seed=cfg.seed,
        balance=primary.name if (cfg.weighted_sampler and primary) else None,
        drop_last=len(data.train_idx) > cfg.batch_size,
        **loader_kw,
    )
    loss_w = {
        t.name: train_loader.class_weights(t.name, t.num_classes)
        for t in tasks
        if cfg.weighted_loss and t.kind == "classification"
    }
    steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
    schedule = LRSchedule(cfg, model.optimizer, steps_per_epoch)
    swa = SWA(cfg, model.model, model.optimizer) if cfg.swa else None
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    loss_kw = {
        "label_smoothing": cfg.label_smoothing,
        "regression_loss": cfg.loss,
        "age_scale": cfg.age_scale,
        "weights": loss_w,
    }
    return Loop(train_loader, loader_kw, steps_per_epoch, schedule, swa, eval_bs, loss_kw)


# ---------------------------------------------------------------------------------------------------------
# resume, and the controller's SIGTERM
def rng_state(loop: Loop, dev: Device) -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if dev.cuda:
        st["cuda"] = torch.cuda.get_rng_state_all()
    st["loader"] = loop.train_loader.gen.get_state()  # the augmentation draws
    return st


def resume(rd: RunDir, model: Model, loop: Loop, dev: Device) -> tuple[Progress, bool]:
    """The progress of ``checkpoint_last.pt`` when there is one (its history re-reported, so a fresh
    controller attempt sees the whole curve); (fresh progress, False) otherwise."""
    progress = Progress()
    if not rd.checkpoint_last.exists():
        return progress, False
    ck = torch.load(rd.checkpoint_last, map_location="cpu", weights_only=False)
    model.model.load_state_dict(ck["model"])
    model.optimizer.load_state_dict(ck["optimizer"])
    loop.schedule.load_state_dict(ck["schedule"])
    if loop.swa is not None and ck.get("swa"):
        loop.swa.load_state_dict(ck["swa"])
    progress.start_epoch, progress.global_step = ck["epoch"] + 1, ck["global_step"]
    progress.history, progress.best = ck["history"], ck["best"]
    random.setstate(ck["rng"]["python"])
    np.random.set_state(ck["rng"]["numpy"])
    torch.set_rng_state(ck["rng"]["torch"])
    if dev.cuda and "cuda" in ck["rng"]:
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    loop.train_loader.gen.set_state(ck["rng"]["loader"])
    print(f"resuming from {rd.checkpoint_last} after epoch {progress.start_epoch}")
    protocol.emit("info", resumed_from_epoch=progress.start_epoch)
    for h in progress.history:  # re-report, so a fresh controller attempt sees the whole curve
        protocol.report(h["epoch"], reported(h["metrics"]))
    return progress, True


def on_sigterm(rd: RunDir, logger: Logger, progress: Progress) -> None:
    """Pruned or interrupted by the controller (SIGTERM): close the W&B run properly, then exit.

    Pruned (the controller said so in ``stop.json``): the run is *finished* (exit code 0) with the tag and the
    summary field ``pruned``, as a run W&B's own sweep controller stopped. Otherwise: interrupted (exit 143)."""

    def stopped(signum: int, frame: object) -> None:
        why = protocol.stop_reason(rd.path)
        if why.get("reason") == "pruned":
            epochs = len(progress.history)
            logger.finish({"pruned": True, "pruned_at_epoch": epochs, "epochs_run": epochs}, tags=("pruned",))
        else:
            logger.finish({"stopped_by": signal.Signals(signum).name}, exit_code=128 + signum)
        sys.stdout.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)


# ---------------------------------------------------------------------------------------------------------
# training
def train_epochs(
    rd: RunDir,
    cfg: TrainConfig,
    data: Data,
    model: Model,
    loop: Loop,
    dev: Device,
    progress: Progress,
    logger: Logger,
    metric_name: str,
    goal: str,
) -> None:
    """The epochs from ``progress.start_epoch``: train, validate, report, checkpoint (early stop on patience)."""
    for epoch in range(progress.start_epoch, cfg.epochs):
        if cfg.early_stopping_patience and progress.bad_epochs >= cfg.early_stopping_patience:
            print(f"early stop: no better {metric_name} for {progress.bad_epochs} epochs")
            break
        t0 = time.time()
        swa_on = loop.swa is not None and loop.swa.on(epoch)
        train_loss, hits, n_seen, train_s = train_epoch(cfg, data, model, loop, dev, progress, epoch, swa_on)
        if swa_on:
            assert loop.swa is not None
            loop.swa.epoch_end(model.model)
        val, _ = evaluate(cfg, data, model, loop, dev, model.fwd, data.splits["val"], "val")
        loop.schedule.epoch_end(val.get("val/loss"))
        metrics = {
            **val,
            "train/loss": train_loss,
            **train_accuracy(data, hits),
            "train/img_s": n_seen / max(train_s, 1e-9),  # training throughput (images/s, sync at epoch end)
            "lr": model.optimizer.param_groups[model.head_group]["lr"]
            / (cfg.head_lr_mult or 1.0),  # the schedule's
            "epoch_time": time.time() - t0,
        }
        progress.history.append({"epoch": epoch + 1, "metrics": metrics})
        logger.log(
            epoch + 1, metrics
        )  # queued first: a prune decision (SIGTERM) may follow the report at once
        protocol.report(epoch + 1, reported(metrics))
        if M.is_better(metrics[metric_name], progress.best["value"], goal):
            progress.best = {"value": metrics[metric_name], "epoch": epoch + 1, "metrics": metrics}
            progress.bad_epochs = 0
            if cfg.save_best:
                save_best(rd, cfg, data, model, epoch, metric_name, progress.best["value"])
        else:
            progress.bad_epochs += 1
        save_last(rd, cfg, model, loop, dev, progress, epoch)
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: "
            + " ".join(f"{k}={v:.4g}" for k, v in reported(metrics).items())
        )


def train_epoch(
    cfg: TrainConfig,
    data: Data,
    model: Model,
    loop: Loop,
    dev: Device,
    progress: Progress,
    epoch: int,
    swa_on: bool,
) -> tuple[float, dict[str, torch.Tensor], int, float]:
    """One epoch of training: (mean loss, (correct, known) per classification task, images seen, seconds)."""
    t0 = time.time()
    model.model.train()
    loop.schedule.active = not swa_on
    total = torch.zeros((), device=dev.device)  # summed on the device: no host sync per step
    n_seen = 0
    kinds = {t.name: t.kind for t in data.tasks}
    hits = {
        t.name: torch.zeros(2, device=dev.device) for t in data.tasks if t.kind != "regression"
    }  # correct, known
    loop.train_loader.epoch = (
        epoch  # the epoch's order is seeded by (seed, epoch): reproducible and resumable
    )
    for step, (x, y) in enumerate(loop.train_loader):
        if step >= loop.steps_per_epoch:
            break
        x = x.contiguous(memory_format=dev.memory_format)
        loop.schedule.step(progress.global_step)
        with dev.autocast:
            out = model.fwd(x)
        loss, _ = T.compute_loss(out, y, data.tasks, **loop.loss_kw)
        model.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.model.parameters(), cfg.grad_clip)
        model.optimizer.step()
        progress.global_step += 1
        total += loss.detach().float() * len(x)
        n_seen += len(x)
        with torch.no_grad():
            for name, h in hits.items():
                h += train_hits(out[name], y[name], kinds[name])
    train_loss = float(total) / max(1, n_seen)  # waits for the epoch's queued GPU work
    return train_loss, hits, n_seen, time.time() - t0


def save_best(
    rd: RunDir, cfg: TrainConfig, data: Data, model: Model, epoch: int, metric_name: str, value: Any
) -> None:
    """``checkpoint_best.pt``: "model" holds the backbone's own keys, so `pretrained: <run>/checkpoint_best.pt`
    loads it; written aside and renamed, so a copy taken meanwhile (remote sync) is never torn."""
    tmp_best = rd.checkpoint_best.with_suffix(".pt.tmp")
    torch.save(
        {
            "model": model.net.state_dict(),
            "coral": model.model.coral.state_dict(),
            "epoch": epoch,
            "metric": metric_name,
            "value": value,
            "config": config_mod.to_dict(cfg),
            "tasks": T.describe(data.tasks),
        },
        tmp_best,
    )
    os.replace(tmp_best, rd.checkpoint_best)


def save_last(
    rd: RunDir, cfg: TrainConfig, model: Model, loop: Loop, dev: Device, progress: Progress, epoch: int
) -> None:
    """``checkpoint_last.pt`` (what a re-run resumes from), then the protocol's ``checkpoint`` line."""
    ck = {
        "model": model.model.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "schedule": loop.schedule.state_dict(),
        "swa": loop.swa.state_dict() if loop.swa else None,
        "epoch": epoch,
        "global_step": progress.global_step,
        "history": progress.history,
        "best": progress.best,
        "rng": rng_state(loop, dev),
        "config": config_mod.to_dict(cfg),
    }
    tmp = rd.checkpoint_last.with_suffix(".pt.tmp")
    torch.save(ck, tmp)
    os.replace(tmp, rd.checkpoint_last)
    protocol.checkpoint(epoch + 1, rd.checkpoint_last.name)  # a remote trial's controller copies it back now


# ---------------------------------------------------------------------------------------------------------
# the final model, test metrics, summary
def finish(
    rd: RunDir,
    cfg: TrainConfig,
    data: Data,
    model: Model,
    loop: Loop,
    dev: Device,
    progress: Progress,
    logger: Logger,
    metric_name: str,
    refused: Any,
) -> None:
    final, swa_used = final_model(rd, cfg, data, model, loop, dev)
    with determinism.refuse_nondeterministic(str(dev.device), cfg.backbone, refused):
        test, test_preds = evaluate(
            cfg,
            data,
            model,
            loop,
            dev,
            final,
            data.splits["test"],
            "test",
            oversample_test=cfg.oversample_test,
        )
    best = progress.best
    summary: dict[str, Any] = {k: v for k, v in reported(best["metrics"]).items() if k.startswith("val/")}
    summary.update(
        {"best_epoch": best["epoch"], "epochs_run": len(progress.history), metric_name: best["value"]}
    )
    val_final, val_preds = evaluate(
        cfg, data, model, loop, dev, final, data.splits["val"], "val_swa" if swa_used else "val"
    )
    if swa_used:  # the averaged model's own val metrics (the per-epoch ones are the running model's)
        summary.update(reported(val_final))
    summary.update(reported(test))
    protocol.summary(summary)
    write_confusions(rd, data, test_preds, val_preds)
    log_predictions(cfg, data, logger, test_preds, val_preds)
    logger.wait()
    protocol.emit("info", wandb_run=logger.run_path)  # known now: wandb.init ran beside the first epoch
    logger.finish({**test, **summary})
    print("summary: " + json.dumps(summary, default=str))


def final_model(
    rd: RunDir, cfg: TrainConfig, data: Data, model: Model, loop: Loop, dev: Device
) -> tuple[torch.nn.Module, bool]:
    """The model the test metrics are computed with: the SWA average, else the best epoch's weights."""
    swa = loop.swa
    if swa is not None and swa.updates > 0:
        bn_loader = DeviceLoader(data.images, data.targets, data.train_idx, loop.eval_bs, **loop.loader_kw)
        return swa.finish(bn_loader, dev.device), True
    if cfg.save_best and rd.checkpoint_best.exists():
        best_ck = torch.load(rd.checkpoint_best, map_location="cpu", weights_only=False)
        model.net.load_state_dict(best_ck["model"])
        model.model.coral.load_state_dict(best_ck["coral"])
    return model.model, False
