"""Fast unit tests of the controller's small parts: protocol, slots, run dirs, pruners, W&B env."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from orchestrator.pruners import get_pruner
from orchestrator.slots import parse_slots
from orchestrator.trial import protocol
from orchestrator.trial.errors import SpecError, UsageError
from orchestrator.trial.rundir import RunDir, atomic_write_json, safe_name
from orchestrator.wandb_env import child_env, resolve_mode
from orchestrator.wandb_hyperband import WandbHyperbandPruner


def test_protocol_round_trip_and_other_lines() -> None:
    buf = io.StringIO()
    protocol.report(3, {"val/acc": 0.5, "nan": float("nan")}, stream=buf)
    protocol.summary({"val/acc": 0.75}, stream=buf)
    first, second = buf.getvalue().splitlines()
    ev = protocol.parse_line(first)
    assert ev == {"event": "metrics", "step": 3, "metrics": {"val/acc": 0.5, "nan": "nan"}}
    assert protocol.parse_line(second)["metrics"] == {"val/acc": 0.75}
    assert protocol.parse_line('{"step": 1}') is None  # plain JSON printed by a program is not ours
    assert protocol.parse_line("@orchestrate {broken")["event"] == "invalid"
    assert protocol.as_float("nan") != protocol.as_float("nan")  # NaN
    assert protocol.as_float("x") is None and protocol.as_float(2) == 2.0


def test_slots() -> None:
    cpu = parse_slots("cpu:2", cores=2)
    assert [s.id for s in cpu] == ["cpu0", "cpu1"]
    assert cpu[0].env() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    gpus = parse_slots("gpu:0,1x2", cores=16)
    assert [(s.id, s.gpu) for s in gpus] == [
        ("gpu0.0", "0"),
        ("gpu0.1", "0"),
        ("gpu1.0", "1"),
        ("gpu1.1", "1"),
    ]
    assert gpus[0].env()["CUDA_VISIBLE_DEVICES"] == "0" and gpus[0].threads == 4
    assert [s.gpu for s in parse_slots("gpu:3", cores=2)] == ["3"]
    for bad in ("gpu", "cpu:0", "gpu:0,0", "tpu:1", "gpu:0x0"):
        with pytest.raises(UsageError):
            parse_slots(bad)


def test_auto_slots_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert [s.gpu for s in parse_slots("auto", cores=8)] == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert all(s.kind == "cpu" for s in parse_slots("auto", cores=2))


def test_rundir_atomic_and_tail(tmp_path: Path) -> None:
    rd = RunDir.for_trial(tmp_path, "a/b c", 7).create()
    assert rd.path == tmp_path / "a_b_c" / "00007"
    rd.write_result({"state": "COMPLETE", "value": 0.5})
    assert rd.read_result() == {"state": "COMPLETE", "value": 0.5}
    assert not list(rd.path.glob(".*tmp"))
    rd.stderr_log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert rd.tail("stderr", 3) == "line 97\nline 98\nline 99"
    assert safe_name("../x") == "x"
    atomic_write_json(tmp_path / "deep" / "f.json", {"a": 1})
    assert json.loads((tmp_path / "deep" / "f.json").read_text()) == {"a": 1}


def _spec(type_: str, source: str = "pruner", **options):
    return SimpleNamespace(type=type_, options=options, source=source)


def test_pruner_factory() -> None:
    assert isinstance(get_pruner(None), optuna.pruners.NopPruner)
    assert isinstance(get_pruner(_spec("median", n_startup_trials=2)), optuna.pruners.MedianPruner)
    sh = get_pruner(_spec("successive_halving"))
    assert sh._min_resource == 1  # never 'auto': unsafe with parallel trials
    hb = get_pruner(_spec("hyperband", "early_terminate", min_iter=3, eta=3))
    assert isinstance(hb, WandbHyperbandPruner)  # W&B's own rule, not Optuna's HyperbandPruner
    assert hb.bands[:3] == [3, 9, 27] and hb.eta == 3 and hb.strict is True
    hb2 = get_pruner(_spec("hyperband", "early_terminate", max_iter=27, s=2, eta=3))
    assert hb2.bands == [3, 9]
    with pytest.raises(SpecError):
        get_pruner(_spec("median", bogus=1))
    with pytest.raises(SpecError):
        get_pruner(_spec("nope"))


def test_wandb_env_offline_keeps_files_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("auto", no_wandb=True) == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    env = child_env(
        mode="offline",
        run_dir=tmp_path,
        project="p",
        entity=None,
        group="g",
        name="g-1",
        run_id="abc",
        tags=["a", "b,c"],
        cache_dir=tmp_path / "cache",
    )
    assert (
        env["WANDB_DIR"] == str(tmp_path) and env["WANDB_RUN_GROUP"] == "g" and env["WANDB_TAGS"] == "a,b_c"
    )
    assert all(str(tmp_path) in env[k] for k in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"))
    assert os.environ.get("WANDB_API_KEY") not in env.values()


def test_controller_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, orchestrator.cli, orchestrator.scheduler, orchestrator.leaderboard, orchestrator.spec; "
        "bad = [m for m in ('torch', 'timm', 'torchvision', 'wandb') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_prune_view_gives_the_same_decisions_as_the_study() -> None:
    """The controller prunes on an in-memory view of the study (no database read per metric line); it must
    decide exactly as the pruner does on the real study."""
    from orchestrator.sweep import _PruneView
    from orchestrator.wandb_hyperband import WandbHyperbandPruner

    rng = __import__("random").Random(0)
    study = optuna.create_study(
        direction="maximize", storage=optuna.storages.RDBStorage("sqlite:///:memory:")
    )
    for i in range(12):  # finished trials with curves of different quality
        t = study.ask()
        q = rng.random()
        for step in range(6):
            t.report(q * (step + 1), step)
        study.tell(t, q * 6) if i % 3 else study.tell(t, state=optuna.trial.TrialState.PRUNED)
    live = {}
    for _ in range(4):  # running trials, some good, some bad
        t = study.ask()
        q = rng.random()
        for step in range(3):
            t.report(q * (step + 1), step)
        live[t._trial_id] = t
    view = _PruneView(SimpleNamespace(study=study, live=live))
    pruners = [
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        optuna.pruners.PercentilePruner(40.0),
        optuna.pruners.ThresholdPruner(lower=1.0),
        WandbHyperbandPruner(min_iter=1, eta=2),
    ]
    decisions = []
    for pruner in pruners:
        for t in live.values():
            real = pruner.prune(study, study._storage.get_trial(t._trial_id))
            assert pruner.prune(view, t._cached_frozen_trial) == real
            decisions.append(real)
    assert any(decisions) and not all(decisions)  # the comparison covered both answers
