"""The leaderboard on studies built directly with Optuna and orchestrate's attributes (fast: no launch)."""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator import leaderboard as lb
from orchestrator import storage as st
from tests.orchestrator.conftest import ROOT, cli_env, run_cli

BACKBONES = ["basic_cnn", "levi_hassner", "resnet18"]
LRS = [1e-3, 1e-4]
QUALITY = {("basic_cnn", 1e-3): 0.70, ("basic_cnn", 1e-4): 0.60, ("levi_hassner", 1e-3): 0.78}
QUALITY |= {("levi_hassner", 1e-4): 0.80, ("resnet18", 1e-3): 0.88, ("resnet18", 1e-4): 0.84}
CLASSES = ["female", "male"]


def make_study(tmp: Path, name: str = "arch", seeds: int = 3, epochs: int = 6, running: int = 0) -> str:
    """backbone × lr × seed grid; seed noise; the worst configurations pruned; one failed trial; run dirs with
    metrics.jsonl; a confusion matrix in each complete trial's summary. Returns the storage URL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp / 'lb.db'}"
    study = optuna.create_study(study_name=name, storage=url, direction="maximize", load_if_exists=True)
    study.set_user_attr(st.ATTR_METRIC, {"name": "val/acc", "goal": "maximize"})
    n_planned = len(BACKBONES) * len(LRS) * seeds + 2
    study.set_user_attr(st.ATTR_SPEC, {"name": name, "method": "grid", "trials": n_planned})
    dists = {
        "model.backbone": CategoricalDistribution(BACKBONES),
        "lr": FloatDistribution(1e-5, 1e-2, log=True),
        "seed": IntDistribution(0, 9),
    }
    k = 0
    for b in BACKBONES:
        for lr in LRS:
            for seed in range(seeds):
                q = QUALITY[(b, lr)] + 0.01 * (seed - 1) * (1 + BACKBONES.index(b))
                study.enqueue_trial({"model.backbone": b, "lr": lr, "seed": seed})
                t = study.ask(fixed_distributions=dists)
                pruned = q < 0.65
                run = 2 if pruned else epochs
                rd = tmp / "runs" / name / f"{t.number:05d}"
                rd.mkdir(parents=True)
                lines = []
                curve = [q * (1 - 0.5 ** (e + 1)) for e in range(run)]
                curve[-2:] = [curve[-2], curve[-2] - 0.002] if run == epochs else curve[-2:]
                for e, v in enumerate(curve):
                    t.report(v, e)
                    lines.append(json.dumps({"step": e, "time": 1.0e9 + e, "val/acc": v, "loss": 1 - v}))
                (rd / "metrics.jsonl").write_text("\n".join(lines) + "\n")
                best = max(range(run), key=lambda e: curve[e])
                attrs: dict[str, Any] = {
                    st.ATTR_PARAMS: {"model": {"backbone": b}, "lr": lr, "seed": seed},
                    st.ATTR_ATTEMPT: 1,
                    st.ATTR_RUN_DIR: str(rd),
                    st.ATTR_SLOT: f"gpu{k % 2}",
                    st.ATTR_HOST: "local",
                    st.ATTR_WANDB: f"run{k:05d}",
                    st.ATTR_EPOCHS: run,
                    st.ATTR_DURATION: 36.0 * run,
                    st.ATTR_BEST_STEP: best,
                    st.ATTR_LAST_VALUE: curve[-1],
                    lb.ATTR_COST: 2.0,
                    st.ATTR_CONTROLLER: "nohost:1:1",
                }
                if not pruned:
                    n = 100
                    right = round(curve[best] * n)
                    attrs[st.ATTR_SUMMARY] = {
                        "val/acc": curve[best],
                        "val/f1": curve[best] - 0.03,
                        "val/loss": 1 - curve[best],
                        "test/acc": curve[best] - 0.01,
                        "best_epoch": best,
                        "test/gender_confusion": {
                            "classes": CLASSES,
                            "matrix": [
                                [right // 2, n // 2 - right // 2],
                                [n // 2 - (right - right // 2), right - right // 2],
                            ],
                        },
                    }
                for key, v in attrs.items():
                    t.set_user_attr(key, v)
                if pruned:
                    study.tell(t, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(t, curve[best])
                k += 1
    study.enqueue_trial(
        {"model.backbone": "resnet18", "lr": 0.004, "seed": 0}
    )  # fixed: tests stay deterministic
    t = study.ask(fixed_distributions=dists)
    t.set_user_attr(st.ATTR_REASON, "exit code 3")
    t.set_user_attr(st.ATTR_SLOT, "gpu0")
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    for _ in range(running):
        study.enqueue_trial({"model.backbone": "resnet18", "lr": 1e-3, "seed": 7})
        t = study.ask(fixed_distributions=dists)
        rd = tmp / "runs" / name / f"{t.number:05d}"
        rd.mkdir(parents=True)
        t.report(0.5, 0)
        t.report(0.6, 1)
        (rd / "metrics.jsonl").write_text(
            json.dumps({"step": 0, "time": 1.0, "val/acc": 0.5})
            + "\n"
            + json.dumps({"step": 1, "time": 2.0, "val/acc": 0.6})
            + "\n"
        )
        for key, v in {
            st.ATTR_SLOT: "gpu1",
            st.ATTR_HOST: "local",
            st.ATTR_RUN_DIR: str(rd),
            st.ATTR_CONTROLLER: f"{socket.gethostname()}:999999999:0",  # a controller that died
            st.ATTR_PARAMS: {"model": {"backbone": "resnet18"}, "lr": 1e-3, "seed": 7},
        }.items():
            t.set_user_attr(key, v)
    return url


@pytest.fixture(scope="module")
def board_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_study(tmp_path_factory.mktemp("lb"))


def _trials(url: str, name: str = "arch") -> list[Any]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def test_fast_path_equals_optuna_api(board_db: str) -> None:
    fast = lb.render(lb.build(board_db, per_trial=True), "csv")
    slow = lb.render(lb.build(board_db, per_trial=True, studies=lb._load_optuna(board_db, None)), "csv")
    assert fast == slow
    agg_fast = lb.render(lb.build(board_db), "json")
    agg_slow = lb.render(lb.build(board_db, studies=lb._load_optuna(board_db, None)), "json")
    assert agg_fast == agg_slow


def test_trial_rows_columns(board_db: str) -> None:
    (table,) = lb.build(board_db, per_trial=True)
    rows = {r["trial"]: r for r in table["rows"]}
    by_number = {t.number: t for t in _trials(board_db)}
    complete = [t for t in by_number.values() if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    top = table["rows"][0]
    assert top["trial"] == best.number and top["rank"] == 1 and top["value"] == pytest.approx(best.value)
    iv = best.intermediate_values
    assert top["best"] == pytest.approx(max(iv.values()))
    assert top["best_epoch"] == max(iv, key=iv.get)
    assert top["last"] == pytest.approx(iv[max(iv)])
    assert top["last"] < top["best"]  # the curve dips at the end
    assert top["val/f1"] == pytest.approx(best.value - 0.03) and "test/acc" in top
    assert top["epochs"] == 6 and top["duration_s"] == pytest.approx(216.0)
    assert top["gpu_hours"] == pytest.approx(216.0 / 3600, abs=1e-4) and top["cost"] == pytest.approx(
        2 * 0.06
    )
    assert top["host"] in ("gpu0", "gpu1") and top["attempt"] == 1
    assert top["wandb"].startswith("run")  # no W&B folder in the run dir: the run id
    pruned = [r for r in rows.values() if r["state"] == "PRUNED"]
    assert pruned and all(r["value"] is None and r["epochs"] == 2 for r in pruned)
    states = [r["state"] for r in table["rows"]]
    assert states == sorted(states, key=lambda s: lb.STATE_ORDER[s])
    assert table["params"] == ["model.backbone", "lr", "seed"]


def test_repeats_collapse_to_mean_and_std(board_db: str) -> None:
    (table,) = lb.build(board_db)
    assert table["repeats"] == ["seed"] and table["aggregated"]
    top = table["rows"][0]
    members = [
        t
        for t in _trials(board_db)
        if t.state.name == "COMPLETE" and t.params["model.backbone"] == "resnet18" and t.params["lr"] == 1e-3
    ]
    vals = [t.value for t in members]
    assert top["n"] == 3 and top["value"] == pytest.approx(statistics.fmean(vals))
    assert top["value_std"] == pytest.approx(statistics.stdev(vals))
    assert top["trials"] == ",".join(str(t.number) for t in sorted(members, key=lambda t: t.number))
    md = lb.render([table], "markdown")
    assert f"{top['value']:.4g} ± {top['value_std']:.4g}" in md
    assert "seed" not in md.splitlines()[2]  # the repeat parameter is not a column


def test_group_by_matches_a_hand_computation_from_the_storage(board_db: str) -> None:
    (table,) = lb.build(board_db, group_by="model.backbone")
    got = {r["_params"]["model.backbone"]: r for r in table["rows"]}
    # by hand, straight from the Optuna storage: configurations = (backbone, lr); mean over seeds
    trials = [t for t in _trials(board_db) if t.state.name == "COMPLETE"]
    for b in BACKBONES:
        configs: dict[float, list[float]] = {}
        for t in trials:
            if t.params["model.backbone"] == b:
                configs.setdefault(t.params["lr"], []).append(t.value)
        best_lr = max(configs, key=lambda lr: statistics.fmean(configs[lr]))
        vals = configs[best_lr]
        all_vals = [v for vs in configs.values() for v in vs]
        row = got[b]
        assert row["_params"]["lr"] == best_lr
        assert row["value"] == pytest.approx(statistics.fmean(vals))
        assert row["value_std"] == pytest.approx(statistics.stdev(vals))
        assert row["n"] == len(vals)
        assert row["group_mean"] == pytest.approx(statistics.fmean(all_vals))
        assert row["group_std"] == pytest.approx(statistics.stdev(all_vals))
        assert row["group_n"] == len(all_vals)
    assert [r["_params"]["model.backbone"] for r in table["rows"]] == [
        "resnet18",
        "levi_hassner",
        "basic_cnn",
    ]


def test_filters_sort_top_columns(board_db: str) -> None:
    (t,) = lb.build(board_db, per_trial=True, where=["lr<5e-4", "model.backbone==resnet18"])
    assert t["rows"] and all(
        r["_params"]["lr"] == 1e-4 and r["_params"]["model.backbone"] == "resnet18" for r in t["rows"]
    )
    (t,) = lb.build(board_db, per_trial=True, states=["pruned"])
    assert t["rows"] and {r["state"] for r in t["rows"]} == {"PRUNED"}
    (t,) = lb.build(board_db, per_trial=True, sort="-val/f1", top=3)
    f1 = [r["val/f1"] for r in t["rows"]]
    assert len(f1) == 3 and f1 == sorted(f1, reverse=True)
    (t,) = lb.build(board_db, per_trial=True, sort="duration_s")
    d = [r["duration_s"] for r in t["rows"] if r["duration_s"] is not None]
    assert d == sorted(d)
    text = lb.render([t], "csv", ["trial", "lr", "val/acc"])
    assert text.splitlines()[0] == "sweep,trial,lr,value"  # the objective, asked for by its name
    with pytest.raises(Exception, match="unknown column"):
        lb.render([t], "csv", ["nope"])
    with pytest.raises(Exception, match="--where"):
        lb.build(board_db, where=["lr"])
    with pytest.raises(Exception, match="no such parameter"):
        lb.build(board_db, group_by="nope")


def test_cli_formats_and_plain_text(board_db: str, tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "leaderboard", "--storage", board_db, "--format", "json", check=True)
    data = json.loads(proc.stdout)["sweeps"][0]
    assert data["repeats"] == ["seed"] and data["rows"][0]["value_std"] is not None
    proc = run_cli(
        tmp_path, "leaderboard", "--storage", board_db, "--format", "csv", "--per-trial", check=True
    )
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert (
        len(rows) == 19
        and rows[0]["rank"] == "1"
        and math.isclose(float(rows[0]["value"]), 0.91 * (1 - 0.5**5), rel_tol=1e-9)
    )
    proc = run_cli(tmp_path, "leaderboard", "--storage", board_db, "--group-by", "model.backbone", check=True)
    lines = proc.stdout.splitlines()
    assert "best per model.backbone" in lines[0] and "─" not in proc.stdout and "\x1b[" not in proc.stdout
    assert lines[1].split()[:3] == ["model.backbone", "rank", "trials"]
    assert lines[2].split()[0] == "resnet18"
    proc = run_cli(
        tmp_path, "leaderboard", "--storage", board_db, "--format", "markdown", "--top", "2", check=True
    )
    assert proc.stdout.count("\n| ") == 3  # header + 2 rows


def test_source_wandb_fails_fast_without_credentials(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    env = cli_env(tmp_path) | {"NETRC": str(netrc), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "leaderboard", "--source", "wandb", "--project", "me/faces"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "wandb login" in proc.stderr and "Traceback" not in proc.stderr


def test_leaderboard_status_report_import_neither_torch_nor_wandb(board_db: str, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from orchestrator import leaderboard as lb, status, report\n"
        f"lb.render(lb.build({board_db!r}), 'csv'); status.collect({board_db!r})\n"
        "bad = [m for m in ('torch', 'wandb') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_default_table_fits_a_terminal_and_wide_shows_the_rest(board_db: str, tmp_path: Path) -> None:
    for extra in ([], ["--per-trial"], ["--group-by", "model.backbone"]):
        proc = run_cli(tmp_path, "leaderboard", "--storage", board_db, *extra, check=True)
        lines = proc.stdout.splitlines()
        assert max(map(len, lines)) <= 120, (extra, max(map(len, lines)))
        head = lines[1].split()
        assert head[:1] == (["model.backbone"] if extra[:1] == ["--group-by"] else ["rank"])
        assert "value" in head and "lr" in head and "gpu_hours" not in head and "wandb" not in head
        metrics = [h for h in head if "/" in h]
        assert 2 <= len(metrics) <= 3 and metrics[0] == "test/acc"
    # the best configuration's value, as mean ± std over its 3 seeds (resnet18, lr 1e-3: 0.88 + 0.01·3·(s-1))
    proc = run_cli(tmp_path, "leaderboard", "--storage", board_db, check=True)
    row = proc.stdout.splitlines()[2]
    expected = [0.88 + 0.03 * (s - 1) for s in range(3)]
    values = [v * (1 - 0.5**5) for v in expected]  # the objective: the best epoch's value
    assert f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.4g}" in row
    wide = run_cli(tmp_path, "leaderboard", "--storage", board_db, "--wide", check=True).stdout
    assert {"gpu_hours", "best_epoch", "host", "wandb"} <= set(wide.splitlines()[1].split())


def test_unknown_where_state_and_sort_exit_2_with_a_suggestion(board_db: str, tmp_path: Path) -> None:
    cases = [
        (["--where", "backbone==resnet18"], "did you mean 'model.backbone'?"),
        (["--where", "val/acuracy>0.5"], "did you mean 'val/acc'?"),
        (["--state", "complet"], "did you mean 'COMPLETE'?"),
        (["--sort", "duraton_s"], "did you mean 'duration_s'?"),
    ]
    # the objective by its name filters on the value
    (t,) = lb.build(board_db, per_trial=True, where=["val/acc>0.8"])
    assert t["rows"] and all(r["value"] > 0.8 for r in t["rows"])
    assert len(t["rows"]) == len(lb.build(board_db, per_trial=True, where=["value>0.8"])[0]["rows"])
    for args, hint in cases:
        proc = run_cli(tmp_path, "leaderboard", "--storage", board_db, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert hint in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
