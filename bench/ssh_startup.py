"""Remote trial start-up, fresh vs warm: the built-in experiment on one SSH host (a real sshd on 127.0.0.1).

The same tiny sweep as bench/startup.py (synthetic Adience, 1 epoch) runs through the real ``orchestrate launch
--slots hosts`` on one ``cpu:1`` host, with ``--workers fresh`` (the remote launcher starts a new Python per
trial) and ``--workers warm`` (the host's zygote daemon forks each trial; the first trial runs fresh while the
daemon it started imports). A first fresh trial fills the host's dataset cache for both. Reported per trial:
``orchestrate.startup_s`` (slot given → the trial's first line: ssh, imports, data, model), and the load average.
Last line: one JSON object.

    .venv/bin/python bench/ssh_startup.py [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.startup import SWEEP  # noqa: E402
from tests.orchestrator.remote.conftest import have_sshd, sshd_boxes  # noqa: E402


def run(work: Path, hosts: str, mode: str, trials: int, cache: Path) -> dict[str, object]:
    import optuna

    work.mkdir()
    lrs = [round(1e-3 * (1 + i / 10), 6) for i in range(trials)]
    text = SWEEP.format(slots=1, wandb="disabled", lrs=lrs)
    text = text.replace("project: bench-startup}", "project: bench-startup, hosts: hosts.yaml}")
    (work / "sweeps.yaml").write_text(text)
    (work / "hosts.yaml").write_text("hosts:\n" + textwrap.indent(hosts, "  "))
    env = dict(os.environ, ORCHESTRATE_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WANDB_API_KEY", None)
    load = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", "sweeps.yaml", "--plain", "--slots", "hosts"]
        + ["--workers", mode],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"launch failed:\n{proc.stdout}\n{proc.stderr}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="startup", storage=f"sqlite:///{work / 'runs' / 'orchestrate.db'}")
    trials_ = sorted(study.trials, key=lambda t: t.number)
    assert all(t.state.name == "COMPLETE" for t in trials_), [t.state for t in trials_]
    return {
        "startup_s": [round(float(t.user_attrs["orchestrate.startup_s"]), 2) for t in trials_],
        "wall_s": round(wall, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    if not have_sshd():
        raise SystemExit("needs openssh-server (apt-get install -y openssh-server)")
    with sshd_boxes(("box",)) as (box,), tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        cache = Path(tmp) / "cache"
        hosts = box.host_yaml()
        run(Path(tmp) / "prime", hosts, "fresh", 1, cache)  # the host's dataset cache, for both
        out = {m: run(Path(tmp) / m, hosts, m, args.trials, cache) for m in ("fresh", "warm")}
    fresh = statistics.median(out["fresh"]["startup_s"])  # type: ignore[arg-type]
    later = out["warm"]["startup_s"][1:]  # type: ignore[index]
    warm = statistics.median(later) if later else float("nan")
    for mode, r in out.items():
        print(
            f"{mode:5}: start-up per trial {r['startup_s']} s, wall {r['wall_s']} s, load {r['load_before']}"
        )
    print(f"median start-up: fresh {fresh:.2f} s, warm (after the first trial) {warm:.2f} s")
    print(json.dumps({"benchmark": "ssh_startup", "trials": args.trials, **out}))


if __name__ == "__main__":
    main()
