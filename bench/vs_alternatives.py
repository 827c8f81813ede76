"""Benchmark 2: orchestrate side by side with what users would pick instead, on the same workload.

    python bench/vs_alternatives.py [--trials 64] [--slots 8] [--duration 2] [--quick]

The workload of ``bench/utilisation.py``: ``--trials`` runs of a fixed-duration program
(``bench/programs/fixed.py``, one subprocess per trial, each point 0..N-1 once), ``--slots`` at a time. Each
trial appends its own clock, so every runner is measured the same way:

* ``optuna_threads``: plain Optuna in one process, ``study.optimize(objective, n_trials=N, n_jobs=slots)``
  over a ``GridSampler`` of the N points (in-memory storage); the objective runs the subprocess. It runs
  inside this benchmark's process, where Optuna is already imported, and keeps nothing on disk;
* ``optuna_threads_sqlite``: the same script as a command of its own (``python bench/programs/optuna_threads.py``)
  with a fresh SQLite study — what a user writes to keep results: it pays the interpreter, the imports and the
  schema creation, as ``orchestrate launch`` does;
* ``optuna_processes``: ``slots`` processes sharing one SQLite study with the N points enqueued
  (``enqueue_trial``), each running ``study.optimize(objective, n_trials=N/slots)``
  (``bench/programs/optuna_shared.py``) — duplicated and missing points counted;
* ``optuna_processes_journal``: the same with Optuna's ``JournalStorage`` on one file (``JournalFileBackend``,
  the storage Optuna recommends for several processes without a database server);
* ``ray_tune``: Ray Tune when ``import ray`` works (never installed here; reported "not installed" otherwise);
* ``orchestrate``: the real ``orchestrate launch`` (a grid sweep, ``program:``), as in ``bench/utilisation.py``.

Per runner: whole wall time (the whole command/call, start-up included), utilisation ``steady`` and ``whole``
(sum of trial durations / (slots × wall)), median gap on a slot, accounting. Target: orchestrate's whole
wall time ≤ each alternative's, with exact accounting. ``--quick``: 8 trials of 0.3 s on 2 slots.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    FIXED,
    PROGRAMS,
    child_env,
    emit,
    fixed_result,
    fresh_dir,
    machine_load,
    read_clocks,
    run_orchestrate_fixed,
)


def run_optuna_threads(workdir: Path, n: int, slots: int, duration: float) -> dict[str, Any]:
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER="optuna_threads")
    t0 = time.time()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.GridSampler({"point": list(range(n))})
    )

    def objective(trial: optuna.Trial) -> float:
        point = trial.suggest_categorical("point", list(range(n)))
        subprocess.run(
            [sys.executable, str(FIXED), f"--point={point}", f"--duration={duration}"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return float(point)

    study.optimize(objective, n_trials=n, n_jobs=slots)
    wall = time.time() - t0
    return fixed_result(read_clocks(clock), n, slots, wall)


def run_optuna_threads_sqlite(workdir: Path, n: int, slots: int, duration: float) -> dict[str, Any]:
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER="optuna_threads_sqlite")
    script = Path(__file__).resolve().parent / "programs" / "optuna_threads.py"
    t0 = time.time()
    subprocess.run(
        [sys.executable, str(script), f"--storage=sqlite:///{workdir / 'study.db'}", f"--trials={n}",
         f"--jobs={slots}", f"--duration={duration}"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.time() - t0
    return fixed_result(read_clocks(clock), n, slots, wall)


def run_optuna_processes(
    workdir: Path, n: int, slots: int, duration: float, storage: str = "sqlite"
) -> dict[str, Any]:
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER=f"optuna_processes_{storage}")
    url = f"sqlite:///{workdir / 'db'}" if storage == "sqlite" else f"journal://{workdir / 'journal.log'}"
    t0 = time.time()
    import optuna

    sys.path.insert(0, str(PROGRAMS))
    from optuna_shared import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="shared", storage=open_storage(url), direction="maximize")
    for p in range(n):
        study.enqueue_trial({"point": p})
    per = -(-n // slots)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(PROGRAMS / "optuna_shared.py"),
                url,
                "shared",
                str(per),
                str(n),
                str(duration),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"proc{i}.stderr", "wb"),  # noqa: SIM115
        )
        for i in range(slots)
    ]
    rcs = [p.wait() for p in procs]
    wall = time.time() - t0
    out = fixed_result(read_clocks(clock), n, slots, wall)
    out["process_exit_codes"] = rcs
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    out["study_states"] = states
    return out


def run_ray(workdir: Path, n: int, slots: int, duration: float) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
        from ray import tune
    except ImportError:
        return {"status": "not installed"}
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER="ray")

    def trainable(config: dict[str, Any]) -> dict[str, float]:
        subprocess.run(
            [sys.executable, str(FIXED), f"--point={config['point']}", f"--duration={duration}"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return {"score": float(config["point"])}

    t0 = time.time()
    import ray as _ray

    _ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"point": tune.grid_search(list(range(n)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0),
        )
        tuner.fit()
    finally:
        _ray.shutdown()
    wall = time.time() - t0
    out = fixed_result(read_clocks(clock), n, slots, wall)
    out["status"] = "ran"
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="8 trials of 0.3 s on 2 slots")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.slots, args.duration = 8, 2, 0.3
    n, slots, d = args.trials, args.slots, args.duration
    load_before = machine_load()
    runners: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-alt-") as tmp:
        base = args.workdir or Path(tmp)
        runners["orchestrate"] = run_orchestrate_fixed(base / "orchestrate", n, slots, d)
        runners["optuna_threads"] = run_optuna_threads(base / "optuna_threads", n, slots, d)
        runners["optuna_threads_sqlite"] = run_optuna_threads_sqlite(
            base / "optuna_threads_sqlite", n, slots, d
        )
        runners["optuna_processes"] = run_optuna_processes(base / "optuna_processes", n, slots, d)
        runners["optuna_processes_journal"] = run_optuna_processes(
            base / "optuna_processes_journal", n, slots, d, storage="journal"
        )
        runners["ray_tune"] = run_ray(base / "ray", n, slots, d)
        for name, r in runners.items():
            print(f"{name}:", r, flush=True)
    ours = runners["orchestrate"]
    targets: dict[str, Any] = {}
    for name, r in runners.items():
        if name == "orchestrate" or "whole_s" not in r:
            continue
        ratio = ours["whole_s"] / r["whole_s"] if r["whole_s"] else 0.0
        targets[f"as_fast_as_{name}"] = {
            "target": "orchestrate wall <= theirs",
            "wall_ratio": round(ratio, 4),
            "met": ours["whole_s"] <= r["whole_s"],
        }
    targets["exact_accounting"] = {
        "target": True,
        "value": ours["accounting"]["exact"],
        "met": ours["accounting"]["exact"],
    }
    summary = {
        name: (
            {k: r.get(k) for k in ("whole_s", "steady", "whole", "median_gap_s")}
            | {"duplicated": r["accounting"]["duplicated"], "missing": r["accounting"]["missing"]}
            if "accounting" in r
            else r
        )
        for name, r in runners.items()
    }
    result = {
        "benchmark": "vs_alternatives",
        "quick": args.quick,
        "trials": n,
        "slots": slots,
        "duration_s": d,
        "summary": summary,
        "runners": runners,
        "targets": targets,
        "met": all(t["met"] for t in targets.values()),
        "load": {"before": load_before, "after": machine_load()},
    }
    emit(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
