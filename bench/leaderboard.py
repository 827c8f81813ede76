"""Benchmark: ``orchestrate leaderboard`` on a 10,000-trial study, ours (direct SQL) vs the Optuna API.

    python bench/leaderboard.py [--trials 10000] [--epochs 20] [--repeat 3]

Builds, once, a study in a temporary SQLite file the way ``orchestrate launch`` leaves it: Optuna creates the
study, its schema and one template trial (so the distributions and enum encodings are Optuna's own), then the
other trials are bulk-inserted with SQL — complete and pruned trials, with intermediate values for every epoch
run and orchestrate's user attributes (nested params, summary metrics, epochs, duration, slot, W&B run …).
Inserting 10,000 trials through ``study.add_trial`` would take minutes.

Then it times, in the same process, the whole leaderboard (load + rank + render the CSV of every trial):

* ours: ``leaderboard.build(url)`` (a few SQL queries, stdlib sqlite3);
* optuna_api: the same rows from ``optuna.load_study(...).get_trials()`` (what the first leaderboard did);

checks that both give the same CSV, and prints as its last line one JSON object:
``{"benchmark": "leaderboard", "trials": N, "ours_s": …, "optuna_api_s": …, "ratio": …, "target_s": 1.0, "met": …}``
(best of ``--repeat`` runs each; ``met`` = ours_s < target_s).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import leaderboard as lb  # noqa: E402
from orchestrator import storage as st  # noqa: E402

BACKBONES = ["basic_cnn", "levi_hassner", "resnet18", "mobilenetv2_100"]
BATCH = [32, 64, 128]


def build_study(path: Path, n: int, epochs: int, seed: int = 0) -> str:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="bench", storage=url, direction="maximize")
    study.set_user_attr(st.ATTR_METRIC, {"name": "val/acc", "goal": "maximize"})
    study.set_user_attr(st.ATTR_SPEC, {"name": "bench", "method": "random", "trials": n})
    t = study.ask()
    t.suggest_float("lr", 1e-5, 1e-1, log=True)
    t.suggest_categorical("batch_size", BATCH)
    t.suggest_categorical("model.backbone", BACKBONES)
    t.suggest_int("seed", 0, 2)
    study.tell(t, 0.5)
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    (study_id,) = db.execute("SELECT study_id FROM studies WHERE study_name='bench'").fetchone()
    dists = dict(db.execute("SELECT param_name, distribution_json FROM trial_params"))
    db.execute("DELETE FROM trial_params")
    db.execute("DELETE FROM trial_values")
    db.execute("DELETE FROM trial_user_attributes")
    db.execute("DELETE FROM trial_system_attributes")
    db.execute("DELETE FROM trials")
    trials, values, params, attrs, inter = [], [], [], [], []
    t0 = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)
    for i in range(n):
        tid = i + 1
        sd = i % 3  # each configuration is run with seeds 0, 1, 2 (the leaderboard shows mean ± std)
        if sd == 0:
            lr = 10 ** rng.uniform(-5, -1)
            bi, mi = rng.randrange(3), rng.randrange(4)
            quality = 0.5 + 0.4 * rng.random()
        pruned = rng.random() < 0.4
        quality += rng.gauss(0, 0.01)
        run = rng.randint(2, epochs // 2) if pruned else epochs
        curve = [quality * (1 - 0.6 ** (e + 1)) + rng.gauss(0, 0.01) for e in range(run)]
        best = max(range(run), key=lambda e: curve[e])
        start = t0 + timedelta(seconds=60 * i)
        dur = 30.0 * run
        trials.append(
            (tid, i, study_id, "PRUNED" if pruned else "COMPLETE", start, start + timedelta(seconds=dur))
        )
        if not pruned:
            values.append((tid, 0, curve[best], "FINITE"))
        params += [
            (tid, "lr", lr, dists["lr"]),
            (tid, "batch_size", float(bi), dists["batch_size"]),
            (tid, "model.backbone", float(mi), dists["model.backbone"]),
            (tid, "seed", float(sd), dists["seed"]),
        ]
        summary = {
            "val/acc": curve[best],
            "val/one_off": min(1.0, curve[best] + 0.2),
            "val/f1": curve[best] - 0.05,
            "val/loss": 1 - curve[best],
            "test/acc": curve[best] - 0.02,
            "best_epoch": best + 1,
        }
        ua = {
            st.ATTR_POINT: f'{{"lr": {lr}}}',
            st.ATTR_PARAMS: {
                "lr": lr,
                "batch_size": BATCH[bi],
                "model": {"backbone": BACKBONES[mi]},
                "seed": sd,
            },
            st.ATTR_ATTEMPT: 1,
            st.ATTR_CONTROLLER: "benchhost:1:1",
            st.ATTR_RUN_DIR: f"/nonexistent/runs/bench/{i:05d}",
            st.ATTR_SLOT: f"gpu{i % 8}",
            st.ATTR_HOST: "local",
            st.ATTR_WANDB: f"{i:08d}",
            st.ATTR_EPOCHS: run,
            st.ATTR_DURATION: dur,
            st.ATTR_BEST_STEP: best,
            st.ATTR_LAST_VALUE: curve[-1],
            lb.ATTR_COST: 1.2,
        }
        if not pruned:
            ua[st.ATTR_SUMMARY] = summary
        attrs += [(tid, k, json.dumps(v)) for k, v in ua.items()]
        inter += [(tid, e, curve[e], "FINITE") for e in range(run)]
    db.executemany(
        "INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(a, b, c, d, e.isoformat(" "), f.isoformat(" ")) for a, b, c, d, e, f in trials],
    )
    db.executemany(
        "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, ?, ?, ?)", values
    )
    db.executemany(
        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?, ?, ?, ?)",
        params,
    )
    db.executemany("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)", attrs)
    db.executemany(
        "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) "
        "VALUES (?, ?, ?, ?)",
        inter,
    )
    db.commit()
    db.close()
    return url


def ours(url: str) -> str:
    return lb.render(lb.build(url), "csv")


def optuna_api(url: str) -> str:
    return lb.render(lb.build(url, studies=lb._load_optuna(url, None)), "csv")


def best_of(fn: object, url: str, repeat: int) -> tuple[float, str]:
    best = float("inf")
    out = ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(url)  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        url = build_study(Path(tmp) / "bench.db", args.trials, args.epochs)
        build_s = time.perf_counter() - t0
        ours_s, ours_csv = best_of(ours, url, args.repeat)
        api_s, api_csv = best_of(optuna_api, url, max(1, min(args.repeat, 2)))
        same = ours_csv == api_csv
        print(
            f"built {args.trials} trials ({args.epochs} epochs max, ~40% pruned) in {build_s:.1f}s; "
            f"{len(ours_csv.splitlines()) - 1} rows (configurations × 3 seeds); ours and optuna_api CSV identical: {same}",
            file=sys.stderr,
        )
    ratio = api_s / ours_s
    print(
        json.dumps(
            {
                "benchmark": "leaderboard",
                "trials": args.trials,
                "ours_s": round(ours_s, 3),
                "optuna_api_s": round(api_s, 3),
                "ratio": round(ratio, 1),
                "target_s": 1.0,
                "met": ours_s < 1.0,
                "identical_output": same,
            }
        )
    )


if __name__ == "__main__":
    main()
