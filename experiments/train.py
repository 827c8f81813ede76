"""Train one face-attribute CNN: ``python -m experiments.train RUN_DIR``.

Reads ``RUN_DIR/trial.json`` (written by the controller, or by hand), resolves the config (``TrainConfig``
defaults + the trial's params), writes ``RUN_DIR/config.json``, trains, and reports on stdout with the
``@orchestrate`` protocol: one ``metrics`` line per epoch (val metrics, train/loss, lr) and one ``summary``
line at the end (every val metric at the best epoch, ``best_epoch``, test metrics). ``checkpoint_last.pt``
is written every epoch and a re-run of the same RUN_DIR continues from it; ``checkpoint_best.pt`` holds the
best epoch's weights, which the test metrics are computed with (the SWA average when ``swa``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from experiments import config as config_mod
from orchestrator.trial import protocol
from orchestrator.trial.errors import OrchestrateError
from orchestrator.trial.rundir import RunDir, atomic_write_json

# ---------------------------------------------------------------------------------------------------------
# the trial and its config (checked before the heavy imports, so bad input fails at once with exit code 2)
if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0 if len(sys.argv) == 2 else 2)
rd = RunDir(sys.argv[1])
try:
    trial = rd.read_trial()
except (OSError, ValueError) as exc:
    print(f"error: cannot read {rd.trial_json}: {exc}", file=sys.stderr)
    sys.exit(2)
try:
    cfg = config_mod.resolve(trial.get("params") or {})
except config_mod.SpecError as exc:
    print(f"error: {exc.render()}", file=sys.stderr)
    sys.exit(2)
if cfg.data_root is None and trial.get("data_root"):
    # the sweep file's data_root: a folder with one sub-folder per dataset (<data_root>/adience, …/celeba),
    # or the dataset's own root
    base = Path(trial["data_root"]).expanduser()
    cfg.data_root = str(base / cfg.dataset) if (base / cfg.dataset).is_dir() else str(base)
if cfg.seed is None:
    cfg.seed = int(trial["seed"]) if isinstance(trial.get("seed"), int) else 42
metric_spec = trial.get("metric") or {}
task_names = config_mod.active_tasks(cfg)
metric_name = metric_spec.get("name") or config_mod.default_metric(cfg)
goal = metric_spec.get("goal") or config_mod.default_goal(metric_name)
if metric_name not in config_mod.metric_names(cfg):
    print(
        f"error: this trial does not report {metric_name!r}; it reports {config_mod.metric_names(cfg)}",
        file=sys.stderr,
    )
    sys.exit(2)
atomic_write_json(rd.config_json, config_mod.to_dict(cfg))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import backbones  # noqa: E402
import datasets  # noqa: E402
from datasets.pipeline import Augment, DeviceLoader, oversample  # noqa: E402
from experiments import determinism  # noqa: E402
from experiments import metrics as M  # noqa: E402
from experiments import tasks as T  # noqa: E402
from experiments.optim import SWA, LRSchedule, build_optimizer  # noqa: E402
from experiments.wandb_log import Logger  # noqa: E402

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

# ---------------------------------------------------------------------------------------------------------
# data: labels and splits first (the model's heads depend on the classes), images once the size is known
root = cfg.data_root
if root is None:  # synthetic data in the dataset's real layout, made once per cache
    root = datasets.ensure_synthetic(
        cfg.dataset, limit=cfg.synthetic_limit, size=cfg.synthetic_size, seed=cfg.synthetic_seed
    )
load_opts: dict[str, Any] = dict(cfg.dataset_args)
if cfg.layout is not None:
    load_opts["layout"] = cfg.layout
if cfg.age_mapping is not None:
    load_opts["age_mapping"] = cfg.age_mapping
try:
    ds = datasets.open_dataset(cfg.dataset, root, **load_opts)
except OrchestrateError as exc:  # DataError: missing root, label files, images
    print(f"error: {exc.render()}", file=sys.stderr)
    sys.exit(exc.exit_code)
age_bins = cfg.age_bins
if config_mod.year_ranks(cfg):  # one rank per year of age_range (CORAL: 21..60 → 40 ranks, errors in years)
    assert cfg.age_range is not None
    age_bins = [float(a) for a in range(cfg.age_range[0] + 1, cfg.age_range[1] + 1)]
tasks = T.build_tasks(task_names, ds.classes, age_bins=age_bins, loss_weights=cfg.loss_weights)
if config_mod.year_ranks(cfg) and cfg.age_range is not None:
    for t in tasks:
        if t.label == "age_group":
            t.classes = [str(a) for a in range(cfg.age_range[0], cfg.age_range[1] + 1)]
multi = len(tasks) > 1
if multi:
    required = None  # samples need at least one of the tasks' labels (below)
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
    splits = ds.split(**split_opts)
except OrchestrateError as exc:  # DataError: e.g. no file of a split list under the root
    print(f"error: {exc.render()}", file=sys.stderr)
    sys.exit(exc.exit_code)
if cfg.age_range is not None:  # only ages lo..hi (inclusive), in every split
    lo, hi = cfg.age_range
    ages = np.asarray(ds.labels["age"], dtype=np.float64)
    for name, idx in splits.items():
        splits[name] = idx[(ages[idx] >= lo) & (ages[idx] <= hi)]
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
for name, idx in (("train", train_idx), ("val", splits["val"]), ("test", splits["test"])):
    if len(idx) == 0:
        print(f"error: the {name} split is empty (dataset {cfg.dataset}, {len(ds)} images)", file=sys.stderr)
        sys.exit(2)
print(
    f"data: {cfg.dataset} at {root}: train {len(train_idx)}, val {len(splits['val'])}, test {len(splits['test'])}"
)

# ---------------------------------------------------------------------------------------------------------
# model
backbone_kwargs = dict(cfg.backbone_args)
if (
    cfg.image_size
    and backbones.is_registered(cfg.backbone)
    and "img_size" in backbones.factory_options(cfg.backbone)
):
    backbone_kwargs.setdefault("img_size", cfg.image_size)
if cfg.dropout is not None:
    backbone_kwargs["drop_rate"] = cfg.dropout
# pretrained: a path may be a previous trial's checkpoint_best.pt (two-stage: CelebA gender → Adience age)
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
    print(f"error: backbone {cfg.backbone!r}: {exc}", file=sys.stderr)
    sys.exit(2)
dcfg = backbones.data_config(net)
image_size = cfg.image_size or int(dcfg["input_size"][-1])
mean, std = (dcfg["mean"], dcfg["std"]) if cfg.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
model = T.TaskModel(net, tasks, greyscale=cfg.greyscale, mean=mean, std=std).to(
    device=device, memory_format=memory_format
)
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
optimizer = build_optimizer(cfg, groups)
head_group = next(  # the group whose lr is reported (the heads'; param groups may scale the trunk's)
    (i for i, g in enumerate(optimizer.param_groups) if g.get("name", "").startswith("head")), -1
)
fwd = torch.compile(model) if cfg.compile else model
n_params = sum(p.numel() for p in model.parameters())
print(f"model: {cfg.backbone} ({n_params / 1e6:.2f} M params), {image_size} px, device {device}")

# Levi–Hassner geometry: faces stored at crop_from (256 for 227) and cropped, never rescaled, so training
# (random crops), validation (centre crop) and the 10-crop test all see faces at one scale
stored_size = image_size
if cfg.random_crop:
    stored_size = cfg.crop_from or round(image_size * 256 / 227)
    if stored_size <= image_size:
        print(
            f"error: crop_from: {stored_size} must be larger than the input size {image_size} (image_size)",
            file=sys.stderr,
        )
        sys.exit(2)
    print(
        f"input: faces at {stored_size} px; random {image_size} px crops (train), the centre crop (val)"
        + (", 10 crops (test)" if cfg.oversample_test else ", the centre crop (test)")
    )
try:
    images = datasets.decoded(ds, stored_size)  # (N, H, W, 3) uint8, decoded once per host and shared
except OrchestrateError as exc:  # DataError: too many undecodable images
    print(f"error: {exc.render()}", file=sys.stderr)
    sys.exit(exc.exit_code)
# images that are missing or cannot be decoded are rows of zeros in the cache: never train or test on them
bad_mask = np.asarray(ds.info.get("bad_mask", np.zeros(len(ds), dtype=bool)), dtype=bool)
if bad_mask.any():
    dropped = {}
    for name in ("train", "val", "test"):
        idx = train_idx if name == "train" else splits[name]
        keep = ~bad_mask[idx]
        dropped[name] = int((~keep).sum())
        if name == "train":
            train_idx = idx[keep]
        else:
            splits[name] = idx[keep]
    n_bad = sum(dropped.values())
    print(
        f"data: dropped {n_bad} undecodable images ("
        + ", ".join(f"{k} {v}" for k, v in dropped.items())
        + f"; {int(bad_mask.sum())} in the whole dataset, e.g. "
        + ", ".join(str(ds.paths[i]) for i in np.flatnonzero(bad_mask)[:3])
        + ")"
    )
    print(
        f"data: {cfg.dataset} at {root}: train {len(train_idx)}, val {len(splits['val'])}, "
        f"test {len(splits['test'])}"
    )
    protocol.emit("info", undecodable_images=n_bad, undecodable_by_split=dropped)
    for name, idx in (("train", train_idx), ("val", splits["val"]), ("test", splits["test"])):
        if len(idx) == 0:
            print(f"error: the {name} split is empty once undecodable images are dropped", file=sys.stderr)
            sys.exit(2)
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
primary = next((t for t in tasks if t.kind != "regression"), None)
loader_kw: dict[str, Any] = {"device": device, "mean": mean, "std": std, "tasks": [t.name for t in tasks]}
if cfg.random_crop:  # every loader takes an image_size window of the stored faces (random when training)
    loader_kw.update(input_size=image_size, crop="random")
train_loader = DeviceLoader(
    images,
    targets,
    train_idx,
    cfg.batch_size,
    train=True,
    augment=augment or False,
    seed=cfg.seed,
    balance=primary.name if (cfg.weighted_sampler and primary) else None,
    drop_last=len(train_idx) > cfg.batch_size,
    **loader_kw,
)
loss_w = {
    t.name: train_loader.class_weights(t.name, t.num_classes)
    for t in tasks
    if cfg.weighted_loss and t.kind == "classification"
}
steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))
schedule = LRSchedule(cfg, optimizer, steps_per_epoch)
swa = SWA(cfg, model, optimizer) if cfg.swa else None
eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
loss_kw = {
    "label_smoothing": cfg.label_smoothing,
    "regression_loss": cfg.loss,
    "age_scale": cfg.age_scale,
    "weights": loss_w,
}


def evaluate(
    m: torch.nn.Module, idx: np.ndarray, split: str, oversample_test: bool = False
) -> tuple[dict[str, float], dict[str, Any]]:
    """Loss and metrics of model ``m`` on ``idx``; also the raw predictions per task (for plots and tables)."""
    m.eval()
    outs: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    with torch.no_grad(), autocast:
        kw = dict(loader_kw)
        if oversample_test:  # Levi–Hassner: the whole stored face (256), cropped 10 times at image_size (227)
            kw.update(input_size=stored_size, crop=None)
        for x, _ in DeviceLoader(images, targets, idx, eval_bs, **kw):
            if oversample_test:  # 4 corners + centre and their mirrors, probabilities averaged
                out = T.average_outputs(
                    m(oversample(x, image_size).contiguous(memory_format=memory_format)), tasks, 10
                )
            else:
                out = m(x.contiguous(memory_format=memory_format))
            for t in tasks:
                outs[t.name].append(out[t.name].float())
    out = {k: torch.cat(v) for k, v in outs.items()}
    tgt = {t.name: torch.as_tensor(targets[t.name][idx], device=out[t.name].device) for t in tasks}
    loss, _ = T.compute_loss(out, tgt, tasks, **{**loss_kw, "label_smoothing": 0.0, "weights": None})
    res: dict[str, float] = {f"{split}/loss": float(loss)}
    preds: dict[str, Any] = {}
    accs, maes = [], []
    for t in tasks:
        pred, probs = T.decode(out[t.name], t, cfg.age_scale)
        y = targets[t.name][idx]
        preds[t.name] = (y, pred, probs)
        p = f"{split}/{T.metric_prefix(t, multi)}"
        if t.kind == "regression":
            r = M.regression_metrics(y, pred)
            maes.append(r["mae"])
        else:
            r = M.classification_metrics(
                y, pred, t.num_classes, ordinal=t.ordinal, class_names=t.classes, per_class=True
            )
            accs.append(r["acc"])
            if t.label == "age_group" and config_mod.year_ranks(cfg):  # ranks are years: MAE in years
                ok = np.asarray(y) >= 0
                r["mae"] = float(np.abs(np.asarray(pred)[ok] - np.asarray(y)[ok]).mean()) if ok.any() else 0.0
        res.update({p + k: v for k, v in r.items()})
    if multi:  # aggregates, so the default sweep metrics (val/acc, val/mae) exist for multitask too
        if accs:
            res[f"{split}/acc"] = float(np.mean(accs))
        if maes:
            res[f"{split}/mae"] = float(np.mean(maes))
    return res, preds


kinds = {t.name: t.kind for t in tasks}


def train_hits(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """(correct, labelled) predictions of one training batch, on the device (read once per epoch)."""
    out = out.detach().float()
    pred = T.coral_decode(out)[0] if kind == "coral" else out.argmax(dim=1)
    y = y.reshape(-1)
    keep = y >= 0
    return torch.stack((((pred.reshape(-1) == y) & keep).sum(), keep.sum())).float()


def train_accuracy(hits: dict[str, torch.Tensor]) -> dict[str, float]:
    """``train/acc`` (the mean over classification tasks, as ``val/acc``) and, multitask, each task's."""
    accs: dict[str, float] = {}
    for t in tasks:
        if t.name in hits:
            correct, n = (float(v) for v in hits[t.name])
            if n:
                accs[f"train/{T.metric_prefix(t, multi)}acc"] = correct / n
    if multi and accs:
        accs["train/acc"] = float(np.mean(list(accs.values())))
    return accs


def reported(metrics: dict[str, float]) -> dict[str, float]:
    """The protocol's subset: no per-class precision/recall (those go to W&B)."""
    return {
        k: v
        for k, v in metrics.items()
        if "precision/" not in k and "recall/" not in k and k not in ("epoch_time", "train/img_s")
    }


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda:
        st["cuda"] = torch.cuda.get_rng_state_all()
    st["loader"] = train_loader.gen.get_state()  # the augmentation draws
    return st


# ---------------------------------------------------------------------------------------------------------
# resume
start_epoch, global_step, history = 0, 0, []
best: dict[str, Any] = {"value": None, "epoch": None, "metrics": {}}
resumed = rd.checkpoint_last.exists()
if resumed:
    ck = torch.load(rd.checkpoint_last, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    schedule.load_state_dict(ck["schedule"])
    if swa is not None and ck.get("swa"):
        swa.load_state_dict(ck["swa"])
    start_epoch, global_step, history, best = ck["epoch"] + 1, ck["global_step"], ck["history"], ck["best"]
    random.setstate(ck["rng"]["python"])
    np.random.set_state(ck["rng"]["numpy"])
    torch.set_rng_state(ck["rng"]["torch"])
    if cuda and "cuda" in ck["rng"]:
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    train_loader.gen.set_state(ck["rng"]["loader"])
    print(f"resuming from {rd.checkpoint_last} after epoch {start_epoch}")
    protocol.emit("info", resumed_from_epoch=start_epoch)
    for h in history:  # re-report, so a fresh controller attempt sees the whole curve
        protocol.report(h["epoch"], reported(h["metrics"]))

logger = Logger.start(config_mod.to_dict(cfg), rd.path, metric_name, goal, resume=resumed)


def _stopped(signum: int, frame: object) -> None:
    """Pruned or interrupted by the controller (SIGTERM): close the W&B run properly, then exit.

    Pruned (the controller said so in ``stop.json``): the run is *finished* (exit code 0) with the tag and the
    summary field ``pruned``, as a run W&B's own sweep controller stopped. Otherwise: interrupted (exit 143)."""
    why = protocol.stop_reason(rd.path)
    if why.get("reason") == "pruned":
        epochs = len(history)
        logger.finish({"pruned": True, "pruned_at_epoch": epochs, "epochs_run": epochs}, tags=("pruned",))
    else:
        logger.finish({"stopped_by": signal.Signals(signum).name}, exit_code=128 + signum)
    sys.stdout.flush()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _stopped)
protocol.emit("info", wandb_run=logger.run_path, device=str(device), epochs=cfg.epochs, tasks=task_names)

# ---------------------------------------------------------------------------------------------------------
# training
bad_epochs = 0 if best["epoch"] is None else (start_epoch - best["epoch"])


def _refused(message: str) -> None:
    logger.finish({"error": message}, exit_code=2)


with determinism.refuse_nondeterministic(str(device), cfg.backbone, _refused):
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
            print(f"early stop: no better {metric_name} for {bad_epochs} epochs")
            break
        t0 = time.time()
        model.train()
        swa_on = swa is not None and swa.on(epoch)
        schedule.active = not swa_on
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        n_seen = 0
        hits = {
            t.name: torch.zeros(2, device=device) for t in tasks if t.kind != "regression"
        }  # correct, known
        train_loader.epoch = epoch  # the epoch's order is seeded by (seed, epoch): reproducible and resumable
        for step, (x, y) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            x = x.contiguous(memory_format=memory_format)
            lr = schedule.step(global_step)
            with autocast:
                out = fwd(x)
            loss, _ = T.compute_loss(out, y, tasks, **loss_kw)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            global_step += 1
            total += loss.detach().float() * len(x)
            n_seen += len(x)
            with torch.no_grad():
                for name, h in hits.items():
                    h += train_hits(out[name], y[name], kinds[name])
        train_loss = float(total) / max(1, n_seen)  # waits for the epoch's queued GPU work
        train_s = time.time() - t0
        if swa_on:
            swa.epoch_end(model)
        val, _ = evaluate(fwd, splits["val"], "val")
        schedule.epoch_end(val.get("val/loss"))
        metrics = {
            **val,
            "train/loss": train_loss,
            **train_accuracy(hits),
            "train/img_s": n_seen / max(train_s, 1e-9),  # training throughput (images/s, sync at epoch end)
            "lr": optimizer.param_groups[head_group]["lr"] / (cfg.head_lr_mult or 1.0),  # the schedule's lr
            "epoch_time": time.time() - t0,
        }
        history.append({"epoch": epoch + 1, "metrics": metrics})
        logger.log(
            epoch + 1, metrics
        )  # queued first: a prune decision (SIGTERM) may follow the report at once
        protocol.report(epoch + 1, reported(metrics))
        improved = M.is_better(metrics[metric_name], best["value"], goal)
        if improved:
            best = {"value": metrics[metric_name], "epoch": epoch + 1, "metrics": metrics}
            bad_epochs = 0
            if cfg.save_best:
                # "model" holds the backbone's own keys, so `pretrained: <run>/checkpoint_best.pt` loads it
                # written aside and renamed: a copy taken meanwhile (remote sync) is never torn
                tmp_best = rd.checkpoint_best.with_suffix(".pt.tmp")
                torch.save(
                    {
                        "model": net.state_dict(),
                        "coral": model.coral.state_dict(),
                        "epoch": epoch,
                        "metric": metric_name,
                        "value": best["value"],
                        "config": config_mod.to_dict(cfg),
                        "tasks": T.describe(tasks),
                    },
                    tmp_best,
                )
                os.replace(tmp_best, rd.checkpoint_best)
        else:
            bad_epochs += 1
        ck = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "swa": swa.state_dict() if swa else None,
            "epoch": epoch,
            "global_step": global_step,
            "history": history,
            "best": best,
            "rng": rng_state(),
            "config": config_mod.to_dict(cfg),
        }
        tmp = rd.checkpoint_last.with_suffix(".pt.tmp")
        torch.save(ck, tmp)
        os.replace(tmp, rd.checkpoint_last)
        protocol.checkpoint(
            epoch + 1, rd.checkpoint_last.name
        )  # a remote trial's controller copies it back now
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: "
            + " ".join(f"{k}={v:.4g}" for k, v in reported(metrics).items())
        )

# ---------------------------------------------------------------------------------------------------------
# the final model, test metrics, summary
final = model
swa_used = swa is not None and swa.updates > 0
if swa_used:
    final = swa.finish(DeviceLoader(images, targets, train_idx, eval_bs, **loader_kw), device)
elif cfg.save_best and rd.checkpoint_best.exists():
    best_ck = torch.load(rd.checkpoint_best, map_location="cpu", weights_only=False)
    net.load_state_dict(best_ck["model"])
    model.coral.load_state_dict(best_ck["coral"])
with determinism.refuse_nondeterministic(str(device), cfg.backbone, _refused):
    test, test_preds = evaluate(final, splits["test"], "test", oversample_test=cfg.oversample_test)
summary: dict[str, Any] = {k: v for k, v in reported(best["metrics"]).items() if k.startswith("val/")}
summary.update({"best_epoch": best["epoch"], "epochs_run": len(history), metric_name: best["value"]})
val_final, val_preds = evaluate(final, splits["val"], "val_swa" if swa_used else "val")
if swa_used:  # the averaged model's own val metrics (the per-epoch ones are the running model's)
    summary.update(reported(val_final))
summary.update(reported(test))
protocol.summary(summary)

# confusion matrices on disk too (the report draws them; W&B gets them as plots below)
confusions: dict[str, Any] = {}
for t in tasks:
    if t.kind != "regression":
        for split, preds in (("test", test_preds), ("val", val_preds)):
            y, pred, _ = preds[t.name]
            matrix = M.confusion(np.asarray(y), np.asarray(pred), len(t.classes))
            confusions[f"{split}/{t.name}"] = {"classes": list(t.classes), "matrix": matrix.tolist()}
atomic_write_json(rd.path / "confusion.json", confusions)

n_show = min(cfg.log_samples, len(splits["test"]))
columns: dict[str, list[Any]] = {}
for t in tasks:
    y, pred, probs = test_preds[t.name]
    if t.kind == "regression":
        columns[f"{t.name} true"] = [float(v) for v in y[:n_show]]
        columns[f"{t.name} pred"] = [round(float(v), 1) for v in pred[:n_show]]
    else:
        logger.confusion(f"test/{t.name}_confusion", y, pred, t.classes, f"{t.name} (test)")
        vy, vpred, _ = val_preds[t.name]
        logger.confusion(f"val/{t.name}_confusion", vy, vpred, t.classes, f"{t.name} (val, final model)")
        columns[f"{t.name} true"] = [t.classes[v] if v >= 0 else "?" for v in y[:n_show]]
        columns[f"{t.name} pred"] = [t.classes[v] for v in pred[:n_show]]
        columns[f"{t.name} conf"] = [round(float(probs[i].max()), 3) for i in range(n_show)]
logger.samples("test/predictions", np.asarray(images[splits["test"][:n_show]]), columns)
logger.wait()
protocol.emit("info", wandb_run=logger.run_path)  # known now: wandb.init ran beside the first epoch
logger.finish({**test, **summary})
print("summary: " + json.dumps(summary, default=str))
