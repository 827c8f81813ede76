"""Plain Optuna as a user would script it with a persistent study: a fresh process, a SQLite study, a
``GridSampler`` over the points and ``n_jobs`` threads, each running the fixed-duration program.

    python bench/programs/optuna_threads.py --storage sqlite:///study.db --trials 64 --jobs 8 --duration 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import optuna

FIXED = Path(__file__).resolve().parent / "fixed.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--duration", type=float, default=2.0)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = list(range(args.trials))
    study = optuna.create_study(
        storage=args.storage, direction="maximize", sampler=optuna.samplers.GridSampler({"point": points})
    )

    def objective(trial: optuna.Trial) -> float:
        point = trial.suggest_categorical("point", points)
        subprocess.run(
            [sys.executable, str(FIXED), f"--point={point}", f"--duration={args.duration}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return float(point)

    study.optimize(objective, n_trials=args.trials, n_jobs=args.jobs)


if __name__ == "__main__":
    main()
