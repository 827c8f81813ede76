"""Evaluation in a training trial (experiments/trainer.py): metrics of a model on a split, the training
accuracy, the protocol's subset of the metrics, and the final confusion matrices and prediction samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datasets.pipeline import DeviceLoader, oversample
from experiments import config as config_mod
from experiments import metrics as M
from experiments import tasks as T
from experiments.config import TrainConfig
from experiments.trainer_data import Data
from experiments.wandb_log import Logger
from orchestrator.trial.rundir import RunDir, atomic_write_json

if TYPE_CHECKING:
    from experiments.trainer import Device, Loop, Model


def evaluate(
    cfg: TrainConfig,
    data: Data,
    model: Model,
    loop: Loop,
    dev: Device,
    m: torch.nn.Module,
    idx: np.ndarray,
    split: str,
    oversample_test: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Loss and metrics of model ``m`` on ``idx``; also the raw predictions per task (for plots and tables)."""
    tasks = data.tasks
    out = predict(data, model, loop, dev, m, idx, oversample_test)
    tgt = {t.name: torch.as_tensor(data.targets[t.name][idx], device=out[t.name].device) for t in tasks}
    loss, _ = T.compute_loss(out, tgt, tasks, **{**loop.loss_kw, "label_smoothing": 0.0, "weights": None})
    res: dict[str, float] = {f"{split}/loss": float(loss)}
    preds: dict[str, Any] = {}
    accs, maes = [], []
    for t in tasks:
        pred, probs = T.decode(out[t.name], t, cfg.age_scale)
        y = data.targets[t.name][idx]
        preds[t.name] = (y, pred, probs)
        p = f"{split}/{T.metric_prefix(t, data.multi)}"
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
    if data.multi:  # aggregates, so the default sweep metrics (val/acc, val/mae) exist for multitask too
        if accs:
            res[f"{split}/acc"] = float(np.mean(accs))
        if maes:
            res[f"{split}/mae"] = float(np.mean(maes))
    return res, preds


def predict(
    data: Data,
    model: Model,
    loop: Loop,
    dev: Device,
    m: torch.nn.Module,
    idx: np.ndarray,
    oversample_test: bool,
) -> dict[str, torch.Tensor]:
    """The outputs of ``m`` on ``idx``, per task (float32)."""
    m.eval()
    tasks = data.tasks
    outs: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    with torch.no_grad(), dev.autocast:
        kw = dict(loop.loader_kw)
        if oversample_test:  # Levi–Hassner: the whole stored face (256), cropped 10 times at image_size (227)
            kw.update(input_size=data.stored_size, crop=None)
        for x, _ in DeviceLoader(data.images, data.targets, idx, loop.eval_bs, **kw):
            if oversample_test:  # 4 corners + centre and their mirrors, probabilities averaged
                out = T.average_outputs(
                    m(oversample(x, model.image_size).contiguous(memory_format=dev.memory_format)), tasks, 10
                )
            else:
                out = m(x.contiguous(memory_format=dev.memory_format))
            for t in tasks:
                outs[t.name].append(out[t.name].float())
    return {k: torch.cat(v) for k, v in outs.items()}


def train_hits(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """(correct, labelled) predictions of one training batch, on the device (read once per epoch)."""
    out = out.detach().float()
    pred = T.coral_decode(out)[0] if kind == "coral" else out.argmax(dim=1)
    y = y.reshape(-1)
    keep = y >= 0
    return torch.stack((((pred.reshape(-1) == y) & keep).sum(), keep.sum())).float()


def train_accuracy(data: Data, hits: dict[str, torch.Tensor]) -> dict[str, float]:
    """``train/acc`` (the mean over classification tasks, as ``val/acc``) and, multitask, each task's."""
    accs: dict[str, float] = {}
    for t in data.tasks:
        if t.name in hits:
            correct, n = (float(v) for v in hits[t.name])
            if n:
                accs[f"train/{T.metric_prefix(t, data.multi)}acc"] = correct / n
    if data.multi and accs:
        accs["train/acc"] = float(np.mean(list(accs.values())))
    return accs


def reported(metrics: dict[str, float]) -> dict[str, float]:
    """The protocol's subset: no per-class precision/recall (those go to W&B)."""
    return {
        k: v
        for k, v in metrics.items()
        if "precision/" not in k and "recall/" not in k and k not in ("epoch_time", "train/img_s")
    }


def write_confusions(rd: RunDir, data: Data, test_preds: dict[str, Any], val_preds: dict[str, Any]) -> None:
    """Confusion matrices on disk too (the report draws them; W&B gets them as plots)."""
    confusions: dict[str, Any] = {}
    for t in data.tasks:
        if t.kind != "regression":
            for split, preds in (("test", test_preds), ("val", val_preds)):
                y, pred, _ = preds[t.name]
                matrix = M.confusion(np.asarray(y), np.asarray(pred), len(t.classes))
                confusions[f"{split}/{t.name}"] = {"classes": list(t.classes), "matrix": matrix.tolist()}
    atomic_write_json(rd.path / "confusion.json", confusions)


def log_predictions(
    cfg: TrainConfig, data: Data, logger: Logger, test_preds: dict[str, Any], val_preds: dict[str, Any]
) -> None:
    """W&B: the confusion plots and a table of the first test images with their true and predicted labels."""
    test_idx = data.splits["test"]
    n_show = min(cfg.log_samples, len(test_idx))
    columns: dict[str, list[Any]] = {}
    for t in data.tasks:
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
    logger.samples("test/predictions", np.asarray(data.images[test_idx[:n_show]]), columns)
