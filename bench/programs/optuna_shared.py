"""One of N plain-Optuna worker processes sharing one study (the "several processes on one SQLite" recipe).

    python bench/programs/optuna_shared.py STORAGE_URL STUDY N_TRIALS N_POINTS DURATION

``STORAGE_URL``: an Optuna URL (``sqlite:///…``) or ``journal:///path`` for a JournalStorage file.

Loads the study (its points were enqueued with ``enqueue_trial`` by the parent) and runs
``study.optimize(objective, n_trials=N_TRIALS)``; the objective runs ``bench/programs/fixed.py`` for the
trial's point as a subprocess, exactly as orchestrate would. The clock file comes from ``$BENCH_CLOCK_FILE``.
"""

import subprocess
import sys
from pathlib import Path

import optuna

FIXED = Path(__file__).resolve().parent / "fixed.py"


def open_storage(url: str) -> "optuna.storages.BaseStorage | str":
    """``journal:///path`` → a JournalStorage on that file; any other URL is Optuna's own (SQLite …)."""
    if url.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url[len("journal://") :]))
    return url


def main(url: str, name: str, n_trials: int, n_points: int, duration: float) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url))

    def objective(trial: optuna.Trial) -> float:
        point = trial.suggest_int("point", 0, n_points - 1)
        subprocess.run(
            [sys.executable, str(FIXED), f"--point={point}", f"--duration={duration}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return float(point)

    study.optimize(objective, n_trials=n_trials)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
