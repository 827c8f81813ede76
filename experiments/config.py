"""The typed configuration of the built-in ``train`` experiment, and its validation.

A sweep file holds only the changes; the resolved config is ``TrainConfig()`` defaults + the trial's params.
Keys are flat (``lr``, ``batch_size``, ``backbone``, ``dataset``, ``fold``, ``task`` …) so sweep files read
naturally. Unknown keys and wrong types raise ``orchestrator.trial.errors.SpecError`` naming the key, with a
close-match suggestion.

This module must not import torch (nor numpy): the controller imports it to validate sweep parameters during
``orchestrate launch --dry-run``, before anything starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from orchestrator.trial.errors import SpecError

TASKS = ("gender", "age_group", "age", "ethnicity", "multitask", "coral")
SINGLE_TASKS = ("gender", "age_group", "age", "ethnicity", "coral")
DATASETS = ("adience", "celeba", "utkface")
OPTIMIZERS = ("adam", "adamw", "nadam", "sgd", "rmsprop", "adamax", "adadelta")
SCHEDULES = ("none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau")
LOSSES = ("mse", "l1", "smooth_l1")

# Allowed values of string keys (validated like types).
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "task": TASKS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "loss": LOSSES,
}


@dataclass
class TrainConfig:
    """Every option of ``python -m experiments.train``; the defaults give a quick, sane CPU run."""

    # --- data --------------------------------------------------------------------------------------------
    dataset: str = "adience"  # adience | celeba | utkface
    data_root: str | None = None  # None → trial.json's data_root; still None → synthetic data
    layout: str | None = None  # on-disk layout variant (Adience: aligned | faces | auto)
    dataset_args: dict[str, Any] = field(default_factory=dict)  # other loader options (open_dataset **opts)
    fold: int = 0  # Adience: the held-out test fold (subject-exclusive 5-fold protocol)
    val_fraction: float = 0.1  # Adience: user-exclusive validation share of the training folds
    # UTKFace: train/val/test fractions (loader default 0.7/0.1/0.2); CelebA: a seeded random split instead of
    # the official partition (the MobileNetV2 report's 90:10: [0.81, 0.09, 0.1])
    split_fractions: list[float] | None = None
    split_seed: int = 0  # seed of the val/test split: fixed, so every trial sees the same test set
    # UTKFace: a published fixed split instead ("coral": CORAL's train/test lists, val from train)
    split_lists: str | None = None
    age_range: list[int] | None = None  # [lo, hi] inclusive: only these ages (CORAL: [21, 60]); with task
    # coral/age_group and no age_bins, one class (rank) per year, and coral reports MAE in years (val/mae)
    age_mapping: str | None = None  # how raw age labels map to groups (datasets' label schemes)
    age_bins: list[float] | None = None  # bin edges for age_group/coral from numeric ages (UTKFace style)
    synthetic_limit: int = 600  # images per synthetic dataset (data_root null)
    synthetic_size: int = 64  # side of the synthetic images (px)
    synthetic_seed: int = 0
    image_size: int | None = None  # None → the backbone's data_config input size
    data_fraction: float = 1.0  # fraction of the training split used (report: DATA_RATIO)
    normalize: bool = True  # subtract mean / divide std from the backbone's data_config (else scale to 0..1)
    # augmentation (training batches only, on the device)
    augment: bool = True  # master switch (report: USE_TRANSFORMS)
    flip: bool = True  # random horizontal flip
    crop_scale: float = 1.0  # random resized crop: smallest crop side as a fraction of the image (1 = off)
    translate: bool = True  # the crop lands anywhere in the image (else centred)
    rotate: float = 0.0  # max rotation in degrees (±)
    brightness: float = 0.0  # multiplicative brightness jitter ± (0 = off)
    contrast: float = 0.0  # contrast jitter ± (0 = off)
    greyscale: bool = False  # every image (train and eval) to greyscale, still 3 channels
    weighted_sampler: bool = False  # sample training images inversely to their class frequency
    weighted_loss: bool = False  # weight the loss inversely to class frequency
    # Levi & Hassner's geometry: faces resized to crop_from (None → round(image_size * 256 / 227): 256 for 227),
    # training on a random image_size crop of them (whole-pixel offsets, + flip), validation on the centre crop
    random_crop: bool = False
    crop_from: int | None = None
    # 10-crop (4 corners + centre, and flips) test-time averaging, on the crop_from faces (needs random_crop)
    oversample_test: bool = False

    # --- task ----------------------------------------------------------------------------------------------
    task: str = "gender"  # gender | age_group | age | ethnicity | multitask | coral
    tasks: list[str] | None = None  # multitask: e.g. [gender, age_group]
    loss_weights: dict[str, float] | None = None  # multitask: {age_group: 1, gender: 100}
    loss: str = "mse"  # age regression loss: mse | l1 | smooth_l1
    age_scale: float = 100.0  # age regression predicts age / age_scale (MAE is reported in years)

    # --- model ---------------------------------------------------------------------------------------------
    backbone: str = "basic_cnn"
    backbone_args: dict[str, Any] = field(default_factory=dict)  # neurons, num_layers, base_features …
    pretrained: bool | str = False  # false | true (timm cache) | path to weights
    # a `pretrained:` file (e.g. init_from's checkpoint) gives the trunk; its heads are replaced by fresh ones
    # (fine-tuning, as the reports did) unless pretrained_heads: true (then loaded where their sizes fit)
    pretrained_heads: bool = False
    freeze: str = "none"  # none | backbone | until:<layer>
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 1.0  # the heads' (last layer's) lr = lr × this (Levi–Hassner fine-tuning: 10)
    bias_lr_mult: float = 1.0  # biases' lr = their layer's lr × this (Caffe's lr_mult 2 on biases)
    dropout: float | None = (
        None  # dropout before the heads (backbone drop_rate); None → the backbone's default
    )

    # --- optimisation --------------------------------------------------------------------------------------
    optimizer: str = "adam"  # adam | adamw | nadam | sgd | rmsprop | adamax | adadelta
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam family
    eps: float = 1e-8
    amsgrad: bool = False
    rmsprop_alpha: float = 0.99
    centered: bool = False  # rmsprop
    schedule: str = "none"  # none | step | multistep | exponential | cosine | onecycle | plateau
    step_size: int = 10  # step: epochs between decays
    step_iters: int | None = (
        None  # step: iterations (training steps) between decays instead (Caffe's stepsize)
    )
    milestones: list[int] = field(default_factory=list)  # multistep: epochs where lr *= gamma
    gamma: float = 0.1  # step / multistep / exponential decay factor; plateau: reduction factor
    min_lr: float = 0.0  # cosine floor
    plateau_patience: int = 3  # plateau: epochs without improvement of val/loss before lr *= gamma
    pct_start: float = 0.3  # onecycle: fraction of steps spent increasing lr
    warmup_epochs: float = 0.0  # linear warm-up (per step) from 0 to lr
    label_smoothing: float = 0.0
    batch_size: int = 32
    eval_batch_size: int | None = None  # None → 2 × batch_size
    epochs: int = 3
    early_stopping_patience: int | None = None  # epochs without improvement of the trial metric
    grad_clip: float | None = None  # max gradient norm
    swa: bool = False
    swa_start: int | None = None  # first SWA epoch (0-based); None → 75 % of epochs
    swa_lr: float | None = None  # None → lr / 10
    max_steps_per_epoch: int | None = None  # cap on training steps per epoch (smoke tests)

    # --- runtime -------------------------------------------------------------------------------------------
    seed: int | None = None  # None → trial.json's seed (the sweep's: 42 unless seed/seeds is swept), else 42
    deterministic: bool = False
    # cuDNN autotuning: faster steps, but each fresh trial process pays it once per input shape (seen on an
    # H100: the first epoch of mobilenetv2 at 224 px ran at ~80 img/s vs ~3,100 after); off for short trials
    cudnn_benchmark: bool = True
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    log_samples: int = 16  # sample predictions (with images) in the W&B table
    save_best: bool = True  # write checkpoint_best.pt


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against the annotation ``tp``; return (ok, value converted where lossless)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_tp,) = typing.get_args(tp) or (Any,)
        out = []
        for item in value:
            ok, conv = _coerce(item, item_tp)
            if not ok:
                return False, value
            out.append(conv)
        return True, out
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        out_d = {}
        for k, v in value.items():
            ok_k, ck = _coerce(k, key_tp)
            ok_v, cv = _coerce(v, val_tp)
            if not (ok_k and ok_v):
                return False, value
            out_d[ck] = cv
        return True, out_d
    return isinstance(value, tp), value


def _suggest(name: str, candidates: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None


def _flatten(params: dict[str, Any]) -> dict[str, Any]:
    """Accept nested groups (``{"model": {"backbone": …}}``) and dotted names (``model.backbone``).

    A key that is itself a config key is kept as is (``loss_weights``, ``backbone_args`` are dict-valued);
    otherwise a dict value is a group whose members are merged, and a dotted name keeps its last part.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        key = str(key)
        if key in _TRAIN_FIELDS:
            flat[key] = value
        elif (
            isinstance(value, dict) and value and all(str(k) in _TRAIN_FIELDS or "." in str(k) for k in value)
        ):
            flat.update(_flatten({str(k): v for k, v in value.items()}))
        elif "." in key and key.rsplit(".", 1)[1] in _TRAIN_FIELDS:
            flat[key.rsplit(".", 1)[1]] = value
        else:
            flat[key] = value
    return flat


def _err(message: str, key: str | None, hint: str | None, file: Any, line: int | None) -> SpecError:
    return SpecError(message, file=file, line=line, key=key, hint=hint)


def resolve(
    params: dict[str, Any] | None = None, *, file: Any = None, line: int | None = None
) -> TrainConfig:
    """Defaults + ``params`` → a checked ``TrainConfig``. Raises ``SpecError`` naming the offending key."""
    params = _flatten(dict(params or {}))
    values: dict[str, Any] = {}
    for key, value in params.items():
        if key not in _TRAIN_FIELDS:
            raise _err(
                f"unknown parameter {key!r} for experiment 'train'",
                key,
                _suggest(key, _TRAIN_FIELDS) or "see experiments/config.py (TrainConfig) for every key",
                file,
                line,
            )
        tp = _HINTS[key]
        ok, conv = _coerce(value, tp)
        if not ok:
            raise _err(
                f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}", key, None, file, line
            )
        if key in CHOICES and conv not in CHOICES[key]:
            raise _err(
                f"{conv!r} is not one of {', '.join(CHOICES[key])}",
                key,
                _suggest(str(conv), CHOICES[key]),
                file,
                line,
            )
        values[key] = conv
    cfg = TrainConfig(**values)
    _check(cfg, file, line)
    return cfg


def _check(cfg: TrainConfig, file: Any, line: int | None) -> None:
    """Cross-field checks (ranges and combinations)."""

    def bad(key: str, message: str, hint: str | None = None) -> None:
        raise _err(message, key, hint, file, line)

    positive = ("lr", "batch_size", "epochs", "synthetic_limit", "synthetic_size", "age_scale")
    for key in positive:
        if getattr(cfg, key) <= 0:
            bad(key, f"must be > 0, got {getattr(cfg, key)!r}")
    for key in ("image_size", "eval_batch_size", "max_steps_per_epoch", "early_stopping_patience"):
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            bad(key, f"must be > 0 (or null), got {value!r}")
    for key in ("dropout", "label_smoothing"):
        value = getattr(cfg, key)
        if value is not None and not 0.0 <= value < 1.0:
            bad(key, f"must be in [0, 1), got {value!r}")
    if not 0.0 < cfg.val_fraction < 1.0:
        bad("val_fraction", f"must be in (0, 1), got {cfg.val_fraction!r}")
    if cfg.split_fractions is not None and (len(cfg.split_fractions) != 3 or min(cfg.split_fractions) < 0):
        bad(
            "split_fractions",
            f"must be 3 non-negative numbers (train, val, test), got {cfg.split_fractions!r}",
        )
    if not 0.0 < cfg.data_fraction <= 1.0:
        bad("data_fraction", f"must be in (0, 1], got {cfg.data_fraction!r}")
    if not 0.0 < cfg.crop_scale <= 1.0:
        bad("crop_scale", f"must be in (0, 1], got {cfg.crop_scale!r}")
    if not 0.0 < cfg.pct_start < 1.0:
        bad("pct_start", f"must be in (0, 1), got {cfg.pct_start!r}")
    for key in ("weight_decay", "warmup_epochs", "rotate", "brightness", "contrast"):
        if getattr(cfg, key) < 0:
            bad(key, f"must be >= 0, got {getattr(cfg, key)!r}")
    if cfg.split_lists is not None and (cfg.dataset != "utkface" or cfg.split_lists != "coral"):
        bad("split_lists", f"only 'coral' (UTKFace: CORAL's fixed train/test lists), got {cfg.split_lists!r} "
            f"on {cfg.dataset}")  # fmt: skip
    if cfg.split_lists is not None and cfg.split_fractions is not None:
        bad("split_fractions", "give split_lists or split_fractions, not both")
    if cfg.age_range is not None and (
        len(cfg.age_range) != 2 or not 0 <= cfg.age_range[0] < cfg.age_range[1]
    ):
        bad("age_range", f"must be [lo, hi] with 0 <= lo < hi, got {cfg.age_range!r}", "e.g. [21, 60]")
    if cfg.age_range is not None and cfg.dataset not in ("utkface",):
        bad("age_range", f"needs numeric ages (utkface), the dataset is {cfg.dataset!r}")
    if cfg.fold < 0:
        bad("fold", f"must be >= 0, got {cfg.fold!r}")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        bad("betas", f"must be two numbers in [0, 1), got {cfg.betas!r}")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        bad("grad_clip", f"must be > 0 (or null), got {cfg.grad_clip!r}")
    if cfg.schedule == "step" and cfg.step_size <= 0:
        bad("step_size", f"must be > 0, got {cfg.step_size!r}")
    if cfg.schedule in ("step", "multistep", "exponential", "plateau") and not 0.0 < cfg.gamma <= 1.0:
        bad("gamma", f"must be in (0, 1], got {cfg.gamma!r}")
    if cfg.schedule == "multistep" and not cfg.milestones:
        bad("milestones", "schedule 'multistep' needs milestones (epochs), e.g. [10, 20]")
    if cfg.nesterov and cfg.optimizer != "sgd":
        bad("nesterov", f"only applies to optimizer 'sgd' (optimizer is {cfg.optimizer!r})")
    if cfg.nesterov and cfg.momentum <= 0:
        bad("nesterov", "nesterov momentum needs momentum > 0")
    if cfg.swa_start is not None and not 0 <= cfg.swa_start < cfg.epochs:
        bad("swa_start", f"must be in [0, epochs) = [0, {cfg.epochs}), got {cfg.swa_start!r}")
    if cfg.swa_lr is not None and cfg.swa_lr <= 0:
        bad("swa_lr", f"must be > 0, got {cfg.swa_lr!r}")
    if not (cfg.freeze in ("none", "backbone") or (cfg.freeze.startswith("until:") and len(cfg.freeze) > 6)):
        bad("freeze", f"expected none | backbone | until:<layer>, got {cfg.freeze!r}")
    for key in ("backbone_lr_mult", "head_lr_mult", "bias_lr_mult"):
        if getattr(cfg, key) < 0:
            bad(key, f"must be >= 0, got {getattr(cfg, key)!r}")
    if cfg.step_iters is not None and cfg.step_iters <= 0:
        bad("step_iters", f"must be > 0 (or null), got {cfg.step_iters!r}")
    if cfg.step_iters is not None and cfg.schedule != "step":
        bad("step_iters", f"only applies to schedule 'step' (schedule is {cfg.schedule!r})")
    if cfg.crop_from is not None and not cfg.random_crop:
        bad("crop_from", "only applies with random_crop: true")
    crop_ok = cfg.crop_from is None or cfg.image_size is None or cfg.crop_from > cfg.image_size
    if cfg.random_crop and not crop_ok:
        bad("crop_from", f"must be larger than image_size ({cfg.image_size}), got {cfg.crop_from}")
    if isinstance(cfg.pretrained, str) and not cfg.pretrained:
        bad("pretrained", "expected true, false or a path to weights, got an empty string")
    if cfg.age_bins is not None and (
        len(cfg.age_bins) < 1 or any(b >= a for b, a in zip(cfg.age_bins, cfg.age_bins[1:], strict=False))
    ):
        bad(
            "age_bins",
            f"must be increasing bin edges, got {cfg.age_bins!r}",
            "e.g. [20, 40, 60] → 4 groups",
        )
    # tasks
    if cfg.task == "multitask":
        if not cfg.tasks or len(cfg.tasks) < 2:
            bad("tasks", "task 'multitask' needs tasks: a list of at least two of " + ", ".join(SINGLE_TASKS))
        for t in cfg.tasks:
            if t not in SINGLE_TASKS:
                bad("tasks", f"{t!r} is not one of {', '.join(SINGLE_TASKS)}", _suggest(t, SINGLE_TASKS))
        if len(set(cfg.tasks)) != len(cfg.tasks):
            bad("tasks", f"duplicate task in {cfg.tasks!r}")
        if "coral" in cfg.tasks and "age_group" in cfg.tasks:
            bad("tasks", "coral and age_group predict the same labels; keep one")
    elif cfg.tasks is not None and cfg.tasks != [cfg.task]:
        bad("tasks", f"only used with task 'multitask' (task is {cfg.task!r})")
    active = cfg.tasks if cfg.task == "multitask" else [cfg.task]
    if cfg.loss_weights:
        for t, w in cfg.loss_weights.items():
            if t not in active:
                bad("loss_weights", f"{t!r} is not one of the active tasks {active}", _suggest(t, active))
            if w < 0:
                bad("loss_weights", f"weight of {t!r} must be >= 0, got {w!r}")
    if cfg.dataset == "celeba" and any(t in ("age_group", "age", "coral", "ethnicity") for t in active or []):
        bad("task", f"CelebA has no age or ethnicity labels (tasks: {active})", "use gender on celeba")
    if cfg.dataset == "adience" and any(t in ("ethnicity",) for t in active or []):
        bad("task", "Adience has no ethnicity labels", "use utkface for ethnicity")
    if (cfg.weighted_sampler or cfg.weighted_loss) and active == ["age"]:
        key = "weighted_sampler" if cfg.weighted_sampler else "weighted_loss"
        bad(key, "class weighting needs a classification task (task is 'age', a regression)")
    if cfg.dataset == "adience" and cfg.fold > 4:
        bad("fold", f"Adience has folds 0..4, got {cfg.fold}")
    if cfg.oversample_test and cfg.image_size is not None and cfg.image_size < 8:
        bad("oversample_test", "10-crop needs image_size >= 8")
    if cfg.oversample_test and not cfg.random_crop:
        bad(
            "oversample_test",
            "10-crop test averaging needs random_crop: true (train on crops of the faces the test crops come from)",
            "add random_crop: true (Levi–Hassner: random 227 crops of 256-px faces; 10 crops of them at test)",
        )
    need = min_image_size(cfg)
    if cfg.image_size is not None and need is not None and cfg.image_size < need:
        bad(
            "image_size",
            f"{_backbone_label(cfg)} needs image_size >= {need} px, got {cfg.image_size}",
            f"use image_size >= {need} (or null: the backbone's own input size)",
        )


def min_image_size(cfg: TrainConfig) -> int | None:
    """The smallest input side a built-in backbone accepts, known without building it (the backbones raise
    the same at construction: ``backbones/levi_hassner.py`` 35 px; ``basic_cnn`` one 2x2 pooling per layer)."""
    if cfg.backbone == "levi_hassner":
        return 35
    if cfg.backbone == "basic_cnn":
        layers = cfg.backbone_args.get("num_layers", 4)
        return 2 ** int(layers) if isinstance(layers, int) and 0 < layers < 31 else None
    return None


def _backbone_label(cfg: TrainConfig) -> str:
    if cfg.backbone == "basic_cnn":
        return f"basic_cnn with num_layers {cfg.backbone_args.get('num_layers', 4)}"
    return cfg.backbone


def validate(
    experiment: str, params: dict[str, Any] | None, *, file: str | Path | None = None, line: int | None = None
) -> dict[str, Any]:
    """Resolve and check a trial's params for ``experiment``; the resolved config as a plain dict.

    Raises ``SpecError(message, key=<param>, hint=…)``; the caller may pass ``file``/``line`` of the sweep.
    """
    known = ("train",)
    if experiment not in known:
        raise SpecError(
            f"unknown experiment {experiment!r} (built-in: {', '.join(known)})",
            file=file,
            line=line,
            key="experiment",
            hint=_suggest(experiment, known),
        )
    return dataclasses.asdict(resolve(params, file=file, line=line))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def active_tasks(cfg: TrainConfig) -> list[str]:
    return list(cfg.tasks) if cfg.task == "multitask" and cfg.tasks else [cfg.task]


def default_goal(name: str) -> str:
    """Minimize losses and errors, maximize the rest."""
    low = name.lower()
    return "minimize" if any(k in low for k in ("loss", "mae", "mse", "error", "rmse")) else "maximize"


def metric_names(cfg: TrainConfig, split: str = "val") -> list[str]:
    """The metrics ``experiments.train`` reports every epoch for this config (per-class precision/recall aside).

    One task: ``val/loss``, ``val/acc``, ``val/f1`` (+ ``val/one_off`` for age groups/CORAL) or ``val/mae``
    (age). Several: each task's prefixed (``val/gender_acc``, ``val/age_mae`` …) plus ``val/acc`` (mean over
    the classification tasks) and ``val/mae``. Plus ``train/loss`` and ``lr``.
    """
    names_ = active_tasks(cfg)
    multi = len(names_) > 1
    out = [f"{split}/loss"]
    for t in names_:
        p = f"{split}/{t}_" if multi else f"{split}/"
        if t == "age":
            out.append(p + "mae")
        else:
            out += [p + "acc", p + "f1"] + ([p + "one_off"] if t in ("age_group", "coral") else [])
            out += [p + "mae"] if year_ranks(cfg) and t in ("age_group", "coral") else []
    if multi:
        out += [f"{split}/acc"] * any(t != "age" for t in names_)
        out += [f"{split}/mae"] * ("age" in names_)
    # training accuracy over each epoch's batches, for the classification tasks (as the val/ ones)
    train = [f"train/{t}_acc" if multi else "train/acc" for t in names_ if t != "age"]
    train += ["train/acc"] * (multi and any(t != "age" for t in names_))
    return out + ["train/loss", *train, "lr"]


def year_ranks(cfg: TrainConfig) -> bool:
    """Age groups are single years (``age_range`` without ``age_bins``): their errors are in years."""
    return cfg.age_range is not None and not cfg.age_bins


def default_metric(cfg: TrainConfig) -> str:
    return "val/mae" if active_tasks(cfg) == ["age"] else "val/acc"


def reported_metrics(experiment: str, params: dict[str, Any] | None) -> list[str]:
    """For the controller: the per-epoch metric names a trial with ``params`` reports (SpecError if bad)."""
    validate(experiment, params)
    return metric_names(resolve(params))
