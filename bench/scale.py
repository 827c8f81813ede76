"""Controller scale: many trials on many simulated slots — is the controller ever the bottleneck?

The real controller (orchestrator.scheduler.Controller: Optuna study in SQLite, pruner, attributes, result
files) runs a random sweep of N trials on S slots, but the slots are simulated: a trial "runs" instantly by
putting its E metric lines and its exit on the controller's event queue, so everything measured is the
controller's own work. Reported: controller CPU per trial and per event (start, metric line, exit), storage
size, and the leaderboard's latency on the result. In the same run, the baseline is plain Optuna doing the
same bookkeeping the minimal way (ask, suggest, E × report + should_prune, tell) on the same storage type.

    .venv/bin/python bench/scale.py [--trials 10000] [--slots 64] [--epochs 5]

Last line: one JSON object. Target: ≤ 5 ms of controller CPU per trial event.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.executors._base import Executor, Job  # noqa: E402
from orchestrator.live import PlainDisplay  # noqa: E402
from orchestrator.scheduler import Controller, LaunchOptions  # noqa: E402
from orchestrator.slots import parse_slots  # noqa: E402
from orchestrator.spec import load_sweeps  # noqa: E402
from orchestrator.trial import protocol  # noqa: E402

TARGET_MS_PER_EVENT = 5.0

SWEEP = """
defaults: {{wandb: disabled, retries: 0}}
sweeps:
  - name: scale
    program: noop.py
    method: random
    run_cap: {trials}
    metric: {{name: acc, goal: maximize}}
    pruner: {{type: median, n_startup_trials: 5, n_warmup_steps: 2}}
    parameters:
      lr: {{distribution: log_uniform_values, min: 0.0001, max: 0.1}}
      dropout: {{values: [0.0, 0.25, 0.5]}}
      batch_size: {{values: [32, 64, 128]}}
"""


class SimExecutor(Executor):
    """A slot that 'runs' a trial instantly: the trial's metric lines and exit go straight to the queue."""

    def __init__(self, events: queue.Queue[tuple[str, Job, Any]], epochs: int) -> None:
        super().__init__(events)
        self.epochs = epochs
        self.submitted = 0

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        self.submitted += 1
        job.run_dir.create()
        lr = float(json.loads(job.run_dir.trial_json.read_text())["params"]["lr"])
        quality = 1.0 - abs(lr - 0.01) * 5  # a smooth objective, so the pruner has something to do
        job.started = time.time()
        for e in range(self.epochs):
            self.events.put(
                (
                    "event",
                    job,
                    {"event": protocol.EVENT_METRICS, "step": e, "metrics": {"acc": quality * (e + 1)}},
                )
            )
        job.ended = time.time()
        self.events.put(("exit", job, 0))

    def stop(self, job: Job, grace: float = 10.0) -> None:
        pass  # its events are already queued; the controller records the prune decision


class Quiet(PlainDisplay):
    def _say(self, text: str) -> None:
        pass


def run_controller(work: Path, trials: int, slots: int, epochs: int) -> dict[str, Any]:
    (work / "sweeps.yaml").write_text(SWEEP.format(trials=trials))
    (work / "noop.py").write_text("")
    specs = load_sweeps(work / "sweeps.yaml").sweeps
    db = work / "scale.db"
    opts = LaunchOptions(
        storage=f"sqlite:///{db}",
        runs_dir=work / "runs",
        slots=parse_slots(f"cpu:{slots}", cores=slots),
        wandb_mode="disabled",
        workers="fresh",
        cache_dir=work / "cache",
    )
    controller = Controller(specs, opts, Quiet())
    sim = SimExecutor(controller.events, epochs)
    controller.executor = sim
    cpu0, wall0 = time.process_time(), time.time()
    outcome = controller.run()
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    events = sim.submitted * (epochs + 2)  # start + metric lines + exit
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "trials": sim.submitted,
        "events": events,
        "counts": outcome.counts["scale"],
        "db_mb": db.stat().st_size / 1e6,
        "storage": opts.storage,
    }


def run_optuna_baseline(work: Path, trials: int, epochs: int) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{work / 'baseline.db'}",
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    )
    cpu0 = time.process_time()
    for _ in range(trials):
        t = study.ask()
        lr = t.suggest_float("lr", 1e-4, 0.1, log=True)
        t.suggest_categorical("dropout", [0.0, 0.25, 0.5])
        t.suggest_categorical("batch_size", [32, 64, 128])
        quality = 1.0 - abs(lr - 0.01) * 5
        pruned = False
        for e in range(epochs):
            t.report(quality * (e + 1), e)
            if t.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, quality * epochs)
    return {"cpu_s": time.process_time() - cpu0, "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--baseline-trials", type=int, default=None, help="trials for the plain-Optuna baseline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    ours = run_controller(work, args.trials, args.slots, args.epochs)
    base_n = args.baseline_trials or min(args.trials, 1000)
    base = run_optuna_baseline(work, base_n, args.epochs)

    from orchestrator import leaderboard

    t0 = time.time()
    leaderboard.build(ours["storage"])
    board_s = time.time() - t0

    ms_trial = ours["cpu_s"] / ours["trials"] * 1000
    ms_event = ours["cpu_s"] / ours["events"] * 1000
    base_ms_trial = base["cpu_s"] / base["trials"] * 1000
    print(
        f"controller: {ours['trials']} trials on {args.slots} simulated slots in {ours['wall_s']:.1f} s wall, "
        f"{ours['cpu_s']:.1f} s CPU = {ms_trial:.1f} ms/trial, {ms_event:.2f} ms/event; storage {ours['db_mb']:.1f} MB"
    )
    print(f"plain Optuna bookkeeping (ask/suggest/report/should_prune/tell): {base_ms_trial:.1f} ms/trial")
    print(f"leaderboard on {ours['trials']} trials: {board_s:.2f} s")
    result = {
        "benchmark": "scale",
        "trials": ours["trials"],
        "slots": args.slots,
        "epochs": args.epochs,
        "controller_cpu_s": round(ours["cpu_s"], 2),
        "ms_per_trial": round(ms_trial, 2),
        "ms_per_event": round(ms_event, 3),
        "optuna_ms_per_trial": round(base_ms_trial, 2),
        "ratio_vs_optuna": round(ms_trial / base_ms_trial, 2),
        "storage_mb": round(ours["db_mb"], 2),
        "leaderboard_s": round(board_s, 3),
        "counts": ours["counts"],
        "target_ms_per_event": TARGET_MS_PER_EVENT,
        "met": ms_event <= TARGET_MS_PER_EVENT,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
