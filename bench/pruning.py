"""Benchmark 3: pruning efficiency on real learning curves (a small CNN on scikit-learn's digits, CPU).

    python bench/pruning.py [--orders 3] [--epochs 30] [--slots 4] [--pruners none,median,...] [--quick]
                            [--extra 'NAME={"pruner": {...}}'] …

32 configurations (``bench/programs/digits_trial.py``: optimizer × lr × width × batch size; real images,
fixed split, deterministic) are run for ``--epochs`` epochs each, for real, through ``orchestrate launch`` on
``--slots`` CPU slots, as a module command (``command: [${interpreter}, -m, bench.programs.digits_trial,
${args}]``, so each slot has a warm worker), once per pruner and per trial order (``--orders`` random
permutations of the configurations, the same for every pruner). ``none`` runs every trial to the end: the
baseline of each order, and the exhaustive best.

Per pruner and order: epochs consumed and wall time relative to ``none`` in the same order (``wall``: the
whole launch command; ``steady``: the first trial's own start → the last trial's end in the study, i.e.
without the controller's and the warm workers' start-up), the best value found
(``val_acc`` in percent, best epoch of a completed trial), how far it is from the exhaustive best, and whether
the exhaustive best configuration (any config tied for it) completed. Targets (issue 8): epochs ≤ 0.33×,
wall ≤ 0.4×, best within 1 point, in every order. The pruners run are ``presets()`` (each with its defaults,
plus ``wandb_hyperband_min2``, the tuned setting); ``--extra`` adds more (a sweep-file fragment as JSON:
``{"pruner": {...}}`` or ``{"early_terminate": {...}}``); ``--workers fresh`` measures without warm workers.

``--replay RUNS_JSON`` searches settings fast: it replays the ``none`` curves saved by an earlier run
(``--workdir DIR`` writes ``DIR/runs.json``) through the real pruners on simulated slots (each epoch one time
unit, no start-up cost), over ``--orders`` orders, and prints epochs/time ratios; no training.

Zygote. With ``--workers warm`` and the zygote kept between launches (the default; ``ORCHESTRATE_ZYGOTE=0``
gives each launch its own), the first launch would pay the imports and every later one find them done, which
would favour whichever runs later. So ``--heat`` (the default then) first runs one short launch (one config,
one epoch, on as many slots: their thread count is part of the key) that starts the daemon, and every measured launch, ``none`` included, starts hot; ``--no-heat``
skips it. The JSON says which (``zygote``). Its launches set ``ORCHESTRATE_ZYGOTE_IDLE_S=60``: the bench's
daemon is its own, and leaves a minute after the last run.

``--quick``: 6 configurations × 3 epochs, 2 slots, one order, pruners none/median/wandb_hyperband.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    child_env,
    controller_zygote,
    emit,
    fresh_dir,
    launch,
    load_trials,
    machine_load,
    read_clocks,
)


def presets(epochs: int) -> dict[str, dict[str, Any] | None]:
    """Each pruner with its default settings (Optuna's own defaults; W&B's usual ``min_iter: 3, eta: 3``)."""
    return {
        "none": None,
        "median": {"pruner": {"type": "median"}},  # n_startup_trials=5, n_warmup_steps=0
        "percentile": {"pruner": {"type": "percentile", "percentile": 25.0}},
        "wandb_hyperband": {"early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3}},
        "optuna_hyperband": {
            "pruner": {"type": "hyperband", "min_resource": 1, "max_resource": epochs, "reduction_factor": 3}
        },
        # tuned (found with --replay over 20 orders, then run for real): W&B's rule judging from the 2nd report
        "wandb_hyperband_min2": {"early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3}},
    }


def sweep_yaml(order: list[int], epochs: int, fragment: dict[str, Any] | None) -> str:
    lines = [
        "defaults: {wandb: disabled}",
        "sweeps:",
        "  - name: digits",
        '    command: ["${interpreter}", "-m", "bench.programs.digits_trial", "${args}"]',
        "    method: grid",
        "    metric: {name: val_acc, goal: maximize}",
    ]
    for key, value in (fragment or {}).items():
        lines.append(f"    {key}: {json.dumps(value)}")
    lines += [
        "    parameters:",
        f"      config: {{values: {json.dumps(order)}}}",
        f"      epochs: {{value: {epochs}}}",
    ]
    return "\n".join(lines) + "\n"


def run_one(
    workdir: Path,
    order: list[int],
    epochs: int,
    slots: int,
    fragment: dict[str, Any] | None,
    workers: str = "warm",
) -> dict:
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), ORCHESTRATE_ZYGOTE_IDLE_S="60")
    wall, _ = launch(
        workdir, sweep_yaml(order, epochs, fragment), slots, env=env, extra=["--workers", workers]
    )
    trials = load_trials(workdir, "digits")
    starts = [c["start"] for c in read_clocks(clock)]  # the trials' own clocks (after warm-worker start-up)
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]  # local time, as recorded
    steady = max(ends) - min(starts) if starts and ends else 0.0
    per_config: dict[int, dict[str, Any]] = {}
    for t in trials:
        cfg = int(json.loads(t.user_attrs["orchestrate.point"])["config"])
        per_config[cfg] = {
            "state": t.state.name,
            "value": t.value,
            "epochs": int(t.user_attrs.get("orchestrate.epochs", 0)),
            "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        }
    complete = {
        c: r["value"] for c, r in per_config.items() if r["state"] == "COMPLETE" and r["value"] is not None
    }
    best = max(complete.values()) if complete else None
    return {
        "wall_s": round(wall, 2),
        "steady_s": round(steady, 2),
        "epochs": sum(r["epochs"] for r in per_config.values()),
        "trials": len(trials),
        "pruned": sum(1 for r in per_config.values() if r["state"] == "PRUNED"),
        "failed": sum(1 for r in per_config.values() if r["state"] == "FAIL"),
        "best": best,
        "best_configs": sorted(c for c, v in complete.items() if v == best),
        "complete_configs": sorted(complete),
        "per_config": per_config,
    }


def replay(
    curves: dict[int, list[float]],
    order: list[int],
    fragment: dict[str, Any] | None,
    slots: int,
    epoch_s: float = 1.0,
    start_s: float = 0.0,
) -> dict[str, Any]:
    """Replay recorded learning curves through the real pruner on ``slots`` simulated slots (no training):
    trials start in ``order`` as slots free, each epoch takes ``epoch_s`` after ``start_s`` of start-up, and
    Optuna's ``report``/``should_prune`` decide exactly as in the controller. For searching settings fast;
    the benchmark's figures come from real runs."""
    import heapq
    from types import SimpleNamespace

    import optuna

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from orchestrator.pruners import get_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    frag = fragment or {}
    if "early_terminate" in frag:
        opts = {k: v for k, v in frag["early_terminate"].items() if k != "type"}
        spec = SimpleNamespace(type="hyperband", options=opts, source="early_terminate")
    elif "pruner" in frag:
        opts = {k: v for k, v in frag["pruner"].items() if k != "type"}
        spec = SimpleNamespace(type=frag["pruner"]["type"], options=opts, source="pruner")
    else:
        spec = None
    study = optuna.create_study(direction="maximize", pruner=get_pruner(spec))
    queue = list(order)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, config, epoch)
    trials: dict[int, Any] = {}
    seq, now, epochs, free = 0, 0.0, 0, slots
    done: dict[int, str] = {}

    def start(t: float) -> None:
        nonlocal seq, free
        while free and queue:
            cfg = queue.pop(0)
            trials[cfg] = study.ask()
            free -= 1
            seq += 1
            heapq.heappush(events, (t + start_s + epoch_s, seq, cfg, 0))

    start(0.0)
    while events:
        now, _, cfg, ep = heapq.heappop(events)
        trial, curve = trials[cfg], curves[cfg]
        epochs += 1
        trial.report(curve[ep], ep)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            done[cfg] = "PRUNED"
        elif ep + 1 >= len(curve):
            study.tell(trial, max(curve))
            done[cfg] = "COMPLETE"
        else:
            seq += 1
            heapq.heappush(events, (now + epoch_s, seq, cfg, ep + 1))
            continue
        free += 1
        start(now)
    complete = {c: max(curves[c]) for c, st in done.items() if st == "COMPLETE"}
    best = max(complete.values()) if complete else None
    return {"epochs": epochs, "time": now, "best": best, "complete_configs": sorted(complete)}


def _span(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=3, help="random trial orders (the same for every pruner)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--configs", type=int, default=32, help="the first N of the 32 configurations")
    ap.add_argument("--pruners", default=None, help="comma-separated preset names (default: all presets)")
    ap.add_argument(
        "--extra", action="append", default=[], help="NAME=JSON sweep fragment, e.g. tuned settings"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", choices=("warm", "fresh"), default="warm", help="orchestrate's --workers")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--heat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one short launch first, so every measured launch finds the kept zygote hot (default: when kept)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--replay",
        type=Path,
        default=None,
        help="runs.json of an earlier --workdir run: replay its 'none' curves through each pruner over "
        "--orders orders (simulated slots, no training) and print the ratios; for searching settings",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.orders, args.epochs, args.slots, args.configs = 1, 3, 2, 6
        args.pruners = args.pruners or "none,median,wandb_hyperband"
    table = presets(args.epochs)
    for item in args.extra:
        name, _, text = item.partition("=")
        table[name] = json.loads(text)
    names = args.pruners.split(",") if args.pruners else list(table)
    names += [item.partition("=")[0] for item in args.extra if item.partition("=")[0] not in names]
    if "none" not in names:
        names.insert(0, "none")
    names.remove("none")
    names.insert(0, "none")
    if args.replay:
        return replay_main(args, table, names)
    load_before = machine_load()
    started = datetime.now().isoformat(timespec="seconds")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    orders = []
    kept = args.workers == "warm" and os.environ.get("ORCHESTRATE_ZYGOTE", "1").lower() not in (
        "0",
        "false",
        "no",
        "off",
    )
    heat = kept if args.heat is None else args.heat and kept
    zygote = "kept, heated by one launch first" if heat else ("kept, not heated" if kept else "per launch")
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        base = args.workdir or Path(tmp)
        if heat:
            r = run_one(base / "heat", [0], 1, args.slots, None, args.workers)  # slots: the same threads
            hot = controller_zygote(60.0)  # and the controller zygote it started for the next launches
            print(f"heat: {r['wall_s']} s (the zygote's imports); controller zygote: {hot}", flush=True)
        for k in range(args.orders):
            order = list(range(args.configs))
            random.Random(args.seed + k).shuffle(order)
            orders.append(order)
            for name in names:
                r = run_one(
                    base / f"order{k}" / name, order, args.epochs, args.slots, table[name], args.workers
                )
                runs[name].append(r)
                brief = {
                    key: r[key] for key in ("wall_s", "steady_s", "epochs", "pruned", "best", "best_configs")
                }
                print(f"order {k} {name}: {brief}", flush=True)
    results: dict[str, Any] = {}
    budget = args.configs * args.epochs
    for name in names:
        per_order = []
        for k, r in enumerate(runs[name]):
            base_run = runs["none"][k]
            exhaustive = base_run["best"]
            survived = bool(set(base_run["best_configs"]) & set(r["complete_configs"]))
            gap = None if exhaustive is None or r["best"] is None else round(exhaustive - r["best"], 3)
            per_order.append(
                {
                    "epochs": r["epochs"],
                    "epochs_ratio": round(r["epochs"] / budget, 4),
                    "wall_s": r["wall_s"],
                    "wall_ratio": round(r["wall_s"] / base_run["wall_s"], 4),
                    "steady_ratio": round(r["steady_s"] / base_run["steady_s"], 4)
                    if base_run["steady_s"]
                    else None,
                    "pruned": r["pruned"],
                    "failed": r["failed"],
                    "best": None if r["best"] is None else round(r["best"], 3),
                    "best_gap_points": gap,
                    "exhaustive_best_survived": survived,
                }
            )
        er = [o["epochs_ratio"] for o in per_order]
        wr = [o["wall_ratio"] for o in per_order]
        sr = [o["steady_ratio"] for o in per_order if o["steady_ratio"] is not None]
        within = all(o["best_gap_points"] is not None and o["best_gap_points"] <= 1.0 for o in per_order)
        targets = {
            "epochs_ratio<=0.33": max(er) <= 0.33,
            "wall_ratio<=0.4": max(wr) <= 0.4,
            "best_within_1_point": within,
        }
        results[name] = {
            "settings": table[name],
            "epochs_ratio": _span(er),
            "wall_ratio": _span(wr),
            "steady_ratio": _span(sr) if sr else None,
            "best_within_1_point": within,
            "exhaustive_best_survived": f"{sum(o['exhaustive_best_survived'] for o in per_order)}/{len(per_order)}",
            "targets": targets,
            "met": all(targets.values()),
            "per_order": per_order,
        }
    result = {
        "benchmark": "pruning",
        "quick": args.quick,
        "started": started,
        "configs": args.configs,
        "epochs": args.epochs,
        "slots": args.slots,
        "orders": args.orders,
        "workers": args.workers,
        "zygote": zygote,
        "exhaustive_best": runs["none"][0]["best"],
        "exhaustive_best_configs": runs["none"][0]["best_configs"],
        "pruners": results,
        "met_by": [n for n in names if n != "none" and results[n]["met"]],
        "met": any(results[n]["met"] for n in names if n != "none"),
        "load": {"before": load_before, "after": machine_load()},
    }
    if args.workdir:
        (args.workdir / "runs.json").write_text(json.dumps({"orders": orders, "runs": runs}))
    emit(result)
    return result


def replay_main(args: argparse.Namespace, table: dict[str, Any], names: list[str]) -> dict:
    saved = json.loads(args.replay.read_text())
    curves = {int(c): r["curve"] for c, r in saved["runs"]["none"][0]["per_config"].items()}
    configs = sorted(curves)
    budget = sum(len(c) for c in curves.values())
    exhaustive = max(max(c) for c in curves.values())
    best_configs = {c for c, v in curves.items() if max(v) == exhaustive}
    out: dict[str, Any] = {}
    for name in names:
        er, tr, gaps, kept = [], [], [], 0
        for k in range(args.orders):
            order = list(configs)
            random.Random(args.seed + k).shuffle(order)
            base = replay(curves, order, None, args.slots)
            r = replay(curves, order, table[name], args.slots)
            er.append(r["epochs"] / budget)
            tr.append(r["time"] / base["time"])
            gaps.append(exhaustive - (r["best"] or 0.0))
            kept += bool(best_configs & set(r["complete_configs"]))
        out[name] = {
            "settings": table[name],
            "epochs_ratio": _span(er),
            "time_ratio": _span(tr),
            "max_gap_points": round(max(gaps), 3),
            "best_kept": f"{kept}/{args.orders}",
        }
        print(name, json.dumps(out[name]), flush=True)
    result = {"benchmark": "pruning-replay", "orders": args.orders, "slots": args.slots, "pruners": out}
    emit(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
