"""Per-trial overhead through Slurm vs local, on a real single-node Slurm started here (as the tests do).

Runs the same grid of short trials (``tests/orchestrator/programs/curve.py``, 1 epoch, no sleep) through the real
``orchestrate launch`` on one local CPU slot, then with ``--slots slurm`` (one srun job per trial, one at a time:
``max_concurrent: 1``), and compares the trial durations the controller records (slot given → the job's exit:
allocation, the job's launch on the node and its end included). Also times a bare ``srun true``. Needs
slurm-wlm and munge (``.ci/setup``) and root (munged, slurmd). Last line: one JSON object.

    .venv/bin/python bench/slurm_overhead.py [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.orchestrator.conftest import CURVE, cli_env  # noqa: E402
from tests.orchestrator.slurm.conftest import _start, _stop  # noqa: E402


def launch(workdir: Path, spec: Path, *extra: str) -> float:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", *extra],
        cwd=workdir,
        env=cli_env(workdir),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"launch failed:\n{proc.stdout}\n{proc.stderr}")
    return time.time() - t0


def durations(workdir: Path, sweep: str) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{workdir / 'runs' / 'orchestrate.db'}")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    return [float(t.user_attrs["orchestrate.duration_s"]) for t in trials]


def srun_true(n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["srun", "--mem=100", "true"], check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="3 trials")
    args = ap.parse_args()
    n = 3 if args.quick else args.trials
    grid = ", ".join(str(round(0.5 + i / (2 * n), 4)) for i in range(n))
    root = Path(tempfile.mkdtemp(prefix="orch-slurm-"))
    try:
        cluster = _start(root)
        os.environ["SLURM_CONF"] = str(cluster.conf)
        with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
            bare = srun_true(5)
            results = {}
            for mode in ("local", "slurm"):
                work = Path(tmp) / mode
                work.mkdir()
                spec = work / "sweeps.yaml"
                gres = "gpu:1" if cluster.gpus else "none"
                spec.write_text(
                    "defaults:\n  wandb: disabled\n  retries: 0\n  slots: cpu:1\n"
                    f"  slurm: {{gres: {gres}, cpus_per_trial: 1, mem_per_trial: 200M, max_concurrent: 1}}\n"
                    + textwrap.dedent(
                        f"""\
                        sweeps:
                          - name: overhead
                            program: {CURVE}
                            method: grid
                            metric: {{name: score, goal: maximize}}
                            parameters:
                              quality: {{values: [{grid}]}}
                              epochs: {{value: 1}}
                              sleep: {{value: 0}}
                        """
                    )
                )
                wall = launch(work, spec, *(["--slots", "slurm"] if mode == "slurm" else []))
                d = durations(work, "overhead")
                results[mode] = {
                    "wall_s": round(wall, 2),
                    "first_trial_s": round(d[0], 3),
                    "median_trial_s": round(statistics.median(d[1:] or d), 3),
                }
    finally:
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)
    overhead = results["slurm"]["median_trial_s"] - results["local"]["median_trial_s"]
    load = os.getloadavg()[0]
    print(
        f"local {results['local']['median_trial_s']:.3f} s per trial, slurm {results['slurm']['median_trial_s']:.3f} s "
        f"(+{overhead:.3f} s); bare srun true {bare:.3f} s; load {load:.1f}"
    )
    out = {
        "benchmark": "slurm_overhead",
        "quick": args.quick,
        "trials": n,
        "srun_true_s": round(bare, 3),
        "local": results["local"],
        "slurm": results["slurm"],
        "per_trial_overhead_s": round(overhead, 3),
        "ratio_slurm_vs_local": round(
            results["slurm"]["median_trial_s"] / results["local"]["median_trial_s"], 2
        ),
        "load": round(load, 2),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
