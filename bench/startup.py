"""Trial start-up: time from a slot being given to a trial until the child is training, cold vs warm.

The same tiny sweep of the built-in experiment (synthetic Adience, 1 epoch) runs twice through the real
``orchestrate launch``: with ``--workers fresh`` (a new Python process per trial: interpreter + torch + timm +
wandb imports every time) and with ``--workers warm`` (a pre-imported worker per slot forks each trial). The
controller records, per trial, the seconds from handing the slot to the first line the child prints once it
is set up (``orchestrate.startup_s``: imports, config, dataset open + decoded cache, model, W&B init).

Reported: median start-up of fresh trials; of warm trials (excluding the first trial on each slot, which
starts the worker); the ratio; the wall time of each launch. Last line: one JSON object.

    .venv/bin/python bench/startup.py [--trials 8] [--slots 2] [--wandb offline|disabled]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_WARM_S = 0.3

SWEEP = """
defaults: {{slots: "cpu:{slots}", wandb: {wandb}, retries: 0, project: bench-startup}}
sweeps:
  - name: startup
    experiment: train
    method: grid
    metric: {{name: val/acc, goal: maximize}}
    parameters:
      task: {{value: gender}}
      backbone: {{value: basic_cnn}}
      backbone_args: {{value: {{num_layers: 2, base_features: 8, hidden: 16}}}}
      image_size: {{value: 32}}
      synthetic_limit: {{value: 300}}
      synthetic_size: {{value: 48}}
      epochs: {{value: 1}}
      lr: {{values: {lrs}}}
"""


def run(mode: str, trials: int, slots: int, wandb: str, cache: Path) -> dict[str, object]:
    import optuna

    work = Path(tempfile.mkdtemp(prefix=f"bench-startup-{mode}-"))
    lrs = [round(1e-3 * (1 + i / 10), 6) for i in range(trials)]
    (work / "sweeps.yaml").write_text(SWEEP.format(slots=slots, wandb=wandb, lrs=lrs))
    env = dict(os.environ, ORCHESTRATE_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", "sweeps.yaml", "--plain", "--workers", mode],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.time() - t0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="startup", storage=f"sqlite:///{work / 'runs' / 'orchestrate.db'}")
    rows = sorted(
        (t.datetime_start, t.user_attrs.get("orchestrate.slot"), t.user_attrs.get("orchestrate.startup_s"))
        for t in study.trials
    )
    seen: set[object] = set()
    first, later = [], []
    for _, slot, s in rows:
        if s is None:
            continue
        (later if slot in seen else first).append(float(s))
        seen.add(slot)
    return {"wall_s": round(wall, 2), "first_per_slot_s": first, "later_s": later}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="bench-startup-cache-"))
    # synthesise and decode once, so both modes find the same warm dataset cache
    run("fresh", min(args.slots, args.trials), args.slots, "disabled", cache)
    fresh = run("fresh", args.trials, args.slots, args.wandb, cache)
    warm = run("warm", args.trials, args.slots, args.wandb, cache)
    fresh_all = fresh["first_per_slot_s"] + fresh["later_s"]  # type: ignore[operator]
    fresh_s = statistics.median(fresh_all)
    warm_s = statistics.median(warm["later_s"]) if warm["later_s"] else float("nan")  # type: ignore[arg-type]
    worker_s = statistics.median(warm["first_per_slot_s"])  # type: ignore[arg-type]
    print(f"fresh process per trial: median start-up {fresh_s:.2f} s, launch wall {fresh['wall_s']} s")
    print(
        f"warm workers:            median start-up {warm_s:.2f} s (first trial per slot {worker_s:.2f} s), "
        f"launch wall {warm['wall_s']} s"
    )
    result = {
        "benchmark": "startup",
        "trials": args.trials,
        "slots": args.slots,
        "wandb": args.wandb,
        "fresh_s": round(fresh_s, 3),
        "warm_s": round(warm_s, 3),
        "warm_worker_first_s": round(worker_s, 3),
        "ratio": round(fresh_s / warm_s, 2) if warm_s == warm_s and warm_s > 0 else None,
        "fresh_wall_s": fresh["wall_s"],
        "warm_wall_s": warm["wall_s"],
        "target_warm_s": TARGET_WARM_S,
        "met": bool(warm_s <= TARGET_WARM_S),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
