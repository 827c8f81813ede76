"""End to end: ``python -m experiments.train RUN_DIR`` on tiny synthetic data, as the controller runs it.

Real subprocesses, the real datasets/backbones packages, W&B offline (never online) and read back with
``wandb leet inspect``. Tiny images (32 px), a ~20 k-parameter CNN, 2–3 epochs: each run takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.trial.protocol import parse_line
from orchestrator.trial.rundir import RunDir
from orchestrator.trial.spec import TrialSpec

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "image_size": 32,
    "synthetic_limit": 240,
    "synthetic_size": 32,
    "backbone_args": {"base_features": 8, "num_layers": 2, "hidden": 16},
    "batch_size": 16,
    "epochs": 2,
    "log_samples": 4,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("train-env")
    e = dict(os.environ)
    e.update(
        ORCHESTRATE_CACHE_DIR=str(base / "cache"),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
        WANDB_CONFIG_DIR=str(base / "wandb-config"),
        WANDB_CACHE_DIR=str(base / "wandb-cache"),
        WANDB_DATA_DIR=str(base / "wandb-data"),
        WANDB_PROJECT="faces-test",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",
    )
    for k in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_API_KEY"):
        e.pop(k, None)
    return e


def make_run(path: Path, params: dict[str, Any], metric: dict[str, str] | None = None) -> RunDir:
    rd = RunDir(path).create()
    rd.write_trial(
        TrialSpec.from_dict(
            {
                "sweep": "t",
                "trial": 1,
                "attempt": 1,
                "experiment": "train",
                "params": params,
                "metric": metric or {"name": "val/acc", "goal": "maximize"},
                "project": "faces-test",
                "data_root": None,
                "seed": 3,
            }
        )
    )
    return rd


def train(rd: RunDir, env: dict[str, str], **extra: str) -> tuple[int, list[dict[str, Any]], str]:
    e = {**env, "WANDB_DIR": str(rd.path), **extra}
    p = subprocess.run(
        [sys.executable, "-m", "experiments.train", str(rd.path)],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    events = [ev for ev in (parse_line(line) for line in p.stdout.splitlines()) if ev is not None]
    return p.returncode, events, p.stdout + p.stderr


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


@pytest.fixture(scope="module")
def gender_run(
    env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunDir, list[dict[str, Any]]]:
    rd = make_run(tmp_path_factory.mktemp("runs") / "00001", {**TINY, "task": "gender"})
    rc, events, out = train(rd, env)
    assert rc == 0, out
    return rd, events


def test_protocol_summary_and_files(gender_run: tuple[RunDir, list[dict[str, Any]]]) -> None:
    rd, events = gender_run
    assert not [e for e in events if e["event"] == "invalid"]
    metrics = of(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(m["metrics"]) == {"val/loss", "val/acc", "val/f1", "train/loss", "train/acc", "lr"}
        assert 0.0 <= m["metrics"]["train/acc"] <= 1.0
        assert 0.0 <= m["metrics"]["val/acc"] <= 1.0
    (summary,) = of(events, "summary")
    s = summary["metrics"]
    best = max(metrics, key=lambda m: m["metrics"]["val/acc"])  # first best on ties, like the trainer
    best = next(m for m in metrics if m["metrics"]["val/acc"] == best["metrics"]["val/acc"])
    assert s["best_epoch"] == best["step"]
    for k in ("val/loss", "val/acc", "val/f1"):
        assert s[k] == pytest.approx(best["metrics"][k])
    assert {"test/acc", "test/f1", "test/loss"} <= set(s)
    cfg = json.loads(rd.config_json.read_text())
    assert cfg["image_size"] == 32 and cfg["seed"] == 3 and cfg["lr"] == 1e-3
    last = torch.load(rd.checkpoint_last, map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and {"model", "optimizer", "schedule", "rng", "best"} <= set(last)
    best_ck = torch.load(rd.checkpoint_best, map_location="cpu", weights_only=False)
    assert best_ck["epoch"] + 1 == s["best_epoch"]


def test_wandb_offline_run(gender_run: tuple[RunDir, list[dict[str, Any]]], env: dict[str, str]) -> None:
    rd, events = gender_run
    (run_dir,) = rd.wandb_runs()
    assert run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb"))
    info = [e for e in of(events, "info") if e.get("wandb_run")]
    assert info and Path(info[-1]["wandb_run"]) == run_dir  # reported once wandb.init (in the background) ran
    wandb_cli = Path(sys.executable).parent / "wandb"
    p = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["state"] == "finished" and data["project"] == "faces-test"
    assert data["config"]["task"] == "gender" and data["config"]["backbone_args"]["base_features"] == 8
    summary = data["summary"]
    (ev,) = of(events, "summary")
    assert summary["test/acc"] == pytest.approx(ev["metrics"]["test/acc"])
    assert summary["val/acc"] == pytest.approx(ev["metrics"]["val/acc"])  # best, not last
    assert "test/precision/male" in summary
    assert summary["test/gender_confusion_table"]["_type"] == "table-file"
    assert summary["val/gender_confusion_table"]["_type"] == "table-file"
    assert summary["test/predictions"]["_type"] == "table-file" and summary["test/predictions"]["nrows"] == 4
    p = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    history = [
        json.loads(line) for line in p.stdout.splitlines() if '"type":"history"' in line.replace(" ", "")
    ]
    assert len(history) >= 2


def test_resume_from_checkpoint_last(
    gender_run: tuple[RunDir, list[dict[str, Any]]], env: dict[str, str]
) -> None:
    rd, first = gender_run
    trial = rd.read_trial()
    rd.write_trial(dataclasses.replace(trial, params={**trial.params, "epochs": 3}))
    rc, events, out = train(rd, env)
    assert rc == 0, out
    assert any(e.get("resumed_from_epoch") == 2 for e in of(events, "info"))
    steps = [m["step"] for m in of(events, "metrics")]
    assert steps == [1, 2, 3]  # the first two re-reported from the checkpoint's history, then epoch 3
    old = {m["step"]: m["metrics"] for m in of(first, "metrics")}
    new = {m["step"]: m["metrics"] for m in of(events, "metrics")}
    assert new[1] == old[1] and new[2] == old[2]
    assert torch.load(rd.checkpoint_last, map_location="cpu", weights_only=False)["epoch"] == 2
    (s,) = of(events, "summary")
    assert s["metrics"]["epochs_run"] == 3


def test_multitask_options_and_pretrained_trunk(
    gender_run: tuple[RunDir, list[dict[str, Any]]], env: dict[str, str], tmp_path: Path
) -> None:
    """CORAL (3 age bins) + gender + age regression with most options on, from the gender run's trunk."""
    params = {
        **TINY,
        "task": "multitask",
        "tasks": ["coral", "gender", "age"],
        "loss_weights": {"coral": 1, "gender": 2, "age": 1},
        "pretrained": str(gender_run[0].checkpoint_best),
        "oversample_test": True,
        "random_crop": True,
        "swa": True,
        "swa_start": 1,
        "weighted_sampler": True,
        "weighted_loss": True,
        "greyscale": True,
        "optimizer": "sgd",
        "nesterov": True,
        "lr": 0.01,
        "schedule": "onecycle",
        "grad_clip": 1.0,
        "label_smoothing": 0.1,
        "crop_scale": 0.8,
        "rotate": 10.0,
        "brightness": 0.2,
        "contrast": 0.2,
        "max_steps_per_epoch": 3,
        "early_stopping_patience": 5,
        "dropout": 0.2,
        "age_bins": [15, 30],
        "freeze": "until:block1",
        "backbone_lr_mult": 0.5,
        "warmup_epochs": 0.5,
    }
    rd = make_run(tmp_path / "00002", params, {"name": "val/mae", "goal": "minimize"})
    rc, events, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 0, out
    # Levi–Hassner geometry: faces stored at round(32 * 256 / 227) = 36 px, cropped (never rescaled) to 32
    assert "input: faces at 36 px; random 32 px crops (train), the centre crop (val), 10 crops (test)" in out
    assert not (rd.path / "wandb").exists()
    m = of(events, "metrics")[0]["metrics"]
    assert set(m) == {
        "val/loss", "val/coral_acc", "val/coral_f1", "val/coral_one_off", "val/gender_acc", "val/gender_f1",
        "val/age_mae", "val/acc", "val/mae", "train/loss", "train/coral_acc", "train/gender_acc", "train/acc", "lr",
    }  # fmt: skip
    s = of(events, "summary")[0]["metrics"]
    assert not [k for k in s if "precision" in k or "recall" in k]  # per-class values go to W&B only
    assert {"test/coral_one_off", "test/age_mae", "test/gender_f1", "val_swa/age_mae"} <= set(s)
    assert s["val/mae"] == min(e["metrics"]["val/mae"] for e in of(events, "metrics"))


@pytest.mark.parametrize(
    "params, metric, message",
    [
        ({"learning_rate": 0.1}, None, "unknown parameter 'learning_rate'"),
        ({**TINY, "task": "age_group"}, {"name": "val/gender_acc", "goal": "maximize"}, "val/gender_acc"),
        ({**TINY, "backbone": "resnet_18"}, None, "unknown backbone 'resnet_18'"),
    ],
)
def test_bad_input_exits_2(
    env: dict[str, str], tmp_path: Path, params: dict, metric: dict | None, message: str
) -> None:
    rd = make_run(tmp_path / "00004", params, metric)
    rc, events, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 2 and message in out and "Traceback" not in out
    assert not of(events, "metrics")


def test_utkface_ethnicity_early_stopping_and_data_options(env: dict[str, str], tmp_path: Path) -> None:
    """Early stopping on a metric that cannot improve (a constant lr), UTKFace splits, no normalisation."""
    params = {
        **TINY,
        "dataset": "utkface",
        "task": "ethnicity",
        "epochs": 4,
        "early_stopping_patience": 1,
        "data_fraction": 0.5,
        "normalize": False,
        "split_fractions": [0.6, 0.2, 0.2],
        "eval_batch_size": 7,
        "save_best": False,
        "augment": False,
        "optimizer": "rmsprop",
        "schedule": "step",
        "step_size": 1,
        "gamma": 0.5,
    }
    rd = make_run(tmp_path / "00005", params, {"name": "lr", "goal": "maximize"})
    rc, events, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 0, out
    metrics = of(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2]  # epoch 2 did not beat epoch 1's lr: stop (patience 1)
    assert [m["metrics"]["lr"] for m in metrics] == pytest.approx([1e-3, 5e-4])
    assert "early stop" in out and not rd.checkpoint_best.exists()
    s = of(events, "summary")[0]["metrics"]
    assert s["best_epoch"] == 1 and s["epochs_run"] == 2 and "test/acc" in s
    n_train = int(re.search(r"data: utkface at \S+: train (\d+)", out).group(1))
    assert 0 < n_train <= 0.5 * 0.6 * TINY["synthetic_limit"] + 1  # data_fraction of the 60 % train split


@pytest.mark.parametrize("pretrained_heads", [False, True])
def test_frozen_backbone_keeps_trunk_and_norm_stats_and_replaces_heads(
    gender_run: tuple[RunDir, list[dict[str, Any]]],
    env: dict[str, str],
    tmp_path: Path,
    pretrained_heads: bool,
) -> None:
    """Fine-tuning with `freeze: backbone` from a checkpoint: after an epoch every trunk tensor, BatchNorm running
    statistics included, is bit-for-bit the checkpoint's; the heads are fresh (replaced) unless
    `pretrained_heads: true`."""
    src = torch.load(gender_run[0].checkpoint_best, map_location="cpu", weights_only=False)["model"]
    params = {
        **TINY,
        "task": "gender",
        "pretrained": str(gender_run[0].checkpoint_best),
        "pretrained_heads": pretrained_heads,
        "freeze": "backbone",
        "epochs": 1,
        "lr": 1e-9,  # the heads barely move: what is left is how they were initialised
        "augment": False,
    }
    rd = make_run(tmp_path / "00009", params)
    rc, _, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 0, out
    got = torch.load(rd.checkpoint_best, map_location="cpu", weights_only=False)["model"]
    assert got.keys() == src.keys()
    trunk = [k for k in src if not k.startswith("head.")]
    assert any("running_mean" in k for k in trunk)
    for k in trunk:
        assert torch.equal(got[k], src[k]), k
    head_diff = max(float((got[k] - src[k]).abs().max()) for k in src if k.startswith("head."))
    if pretrained_heads:
        assert head_diff < 1e-6
    else:
        assert head_diff > 1e-3


def test_undecodable_images_are_dropped_and_counted(env: dict[str, str], tmp_path: Path) -> None:
    """A corrupt JPEG in the real Adience layout is left out of training and evaluation (not a black frame),
    and the trial's log says how many were dropped from which split."""
    from datasets import open_dataset
    from datasets.synth import synthesize

    root = synthesize("adience", tmp_path / "adience", limit=240, size=32, seed=5)
    ds = open_dataset("adience", root)
    splits = ds.split(test_fold=0, val_fraction=0.1, seed=0, require="gender")
    broken = [int(splits["train"][3]), int(splits["train"][10]), int(splits["test"][0])]
    for i in broken:
        ds.abspath(i).write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    rd = make_run(tmp_path / "00010", {**TINY, "task": "gender", "data_root": str(root), "epochs": 1})
    rc, events, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 0, out
    n = {k: len(v) for k, v in splits.items()}
    assert f"train {n['train'] - 2}, val {n['val']}, test {n['test'] - 1}" in out
    assert "dropped 3 undecodable images (train 2, val 0, test 1;" in out
    info = [e for e in of(events, "info") if "undecodable_images" in e]
    assert info and info[0]["undecodable_images"] == 3


def test_deterministic_runs_reproduce_bit_for_bit(env: dict[str, str], tmp_path: Path) -> None:
    """Two runs with deterministic: true and the same seed report identical values (every epoch, the summary)."""
    params = {
        **TINY,
        "task": "age_group",
        "deterministic": True,
        "seed": 11,
        "crop_scale": 0.8,
        "rotate": 5.0,
    }
    runs = []
    for name in ("00020", "00021"):
        rd = make_run(tmp_path / name, params)
        rc, events, out = train(rd, env, WANDB_MODE="disabled")
        assert rc == 0, out
        runs.append([(e["event"], e.get("metrics")) for e in events if e["event"] in ("metrics", "summary")])
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_coral_protocol_fixed_lists_ages_21_60_mae_in_years(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CORAL as published: UTKFace's fixed train/test lists, ages 21-60 as 40 one-year ranks, MAE in years."""
    import numpy as np

    params = {**TINY, "dataset": "utkface", "task": "coral", "age_range": [21, 60], "split_lists": "coral",
              "epochs": 1}  # fmt: skip
    rd = make_run(tmp_path / "00030", params, {"name": "val/mae", "goal": "minimize"})
    rc, events, out = train(rd, env, WANDB_MODE="disabled")
    assert rc == 0, out
    s = of(events, "summary")[0]["metrics"]
    assert {"val/mae", "test/mae", "test/acc", "test/one_off"} <= set(s)
    conf = json.loads((rd.path / "confusion.json").read_text())["test/coral"]
    assert conf["classes"] == [str(a) for a in range(21, 61)]
    m = np.asarray(conf["matrix"])  # rows: true rank, columns: predicted rank (one year each)
    ranks = np.arange(40)
    by_hand = float((m * np.abs(ranks[:, None] - ranks[None, :])).sum() / m.sum())
    assert s["test/mae"] == pytest.approx(by_hand)
    # the test set is exactly the CORAL test list's files present in the synthetic root
    from datasets import ensure_synthetic, open_dataset

    monkeypatch.setenv("ORCHESTRATE_CACHE_DIR", env["ORCHESTRATE_CACHE_DIR"])
    root = ensure_synthetic("utkface", limit=240, size=32, seed=0)
    ds = open_dataset("utkface", root)
    expected = ds.split(lists="coral", val_fraction=0.1, seed=0)
    assert m.sum() == len(expected["test"])
    assert f"test {len(expected['test'])}" in out
