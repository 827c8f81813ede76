"""Per-trial start overhead over SSH vs local, on a real sshd on 127.0.0.1.

Runs the same grid of short trials (``tests/orchestrator/programs/curve.py``, 1 epoch, no sleep) through the real
``orchestrate launch`` on one local CPU slot, then on one SSH host (``--slots hosts``), and compares the trial
durations the controller records (start of the job → its exit, copy-back included). Also times a bare
``ssh HOST true`` with a new handshake and over the multiplexed connection. Last line: one JSON object.

    .venv/bin/python bench/ssh_overhead.py [--trials 8]
"""

from __future__ import annotations

import argparse
import json
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
from tests.orchestrator.remote.conftest import have_sshd, sshd_boxes  # noqa: E402


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


def ssh_true(box: object, ctl: Path | None, n: int) -> float:
    from orchestrator import hosts as hs
    from orchestrator.spec.model import HostSpec

    b = box  # an SSHBox
    host = HostSpec(
        name="bench",
        ssh=b.dest,  # type: ignore[attr-defined]
        port=b.port,  # type: ignore[attr-defined]
        identity_file=str(b.key),  # type: ignore[attr-defined]
        known_hosts=str(b.known_hosts),  # type: ignore[attr-defined]
    )
    if ctl is not None:
        hs.reachable(host, ctl)  # opens the master
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert hs.reachable(host, ctl)
        times.append(time.perf_counter() - t0)
    if ctl is not None:
        hs.close_master(host, ctl)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    if not have_sshd():
        raise SystemExit("needs openssh-server (apt-get install -y openssh-server)")
    n = args.trials
    grid = ", ".join(str(round(0.5 + i / (2 * n), 4)) for i in range(n))
    with sshd_boxes(("box",)) as (box,), tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        from orchestrator import hosts as hs

        handshake = ssh_true(box, None, 5)
        ctl = hs.control_dir()
        mux = ssh_true(box, ctl, 5)
        shutil.rmtree(ctl, ignore_errors=True)
        results = {}
        for mode in ("local", "ssh"):
            work = Path(tmp) / mode
            work.mkdir()
            spec = work / "sweeps.yaml"
            hosts = "  hosts:\n" + textwrap.indent(box.host_yaml(), "    ") if mode == "ssh" else ""
            spec.write_text(
                "defaults:\n  wandb: disabled\n  retries: 0\n  slots: cpu:1\n"
                + hosts
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
            wall = launch(work, spec, *(["--slots", "hosts"] if mode == "ssh" else []))
            d = durations(work, "overhead")
            results[mode] = {
                "wall_s": round(wall, 2),
                "first_trial_s": round(d[0], 3),  # SSH: includes the code sync and opening the connection
                "median_trial_s": round(statistics.median(d[1:] or d), 3),
            }
    overhead = results["ssh"]["median_trial_s"] - results["local"]["median_trial_s"]
    out = {
        "benchmark": "ssh_overhead",
        "trials": n,
        "ssh_true_new_handshake_s": round(handshake, 3),
        "ssh_true_multiplexed_s": round(mux, 3),
        "local": results["local"],
        "ssh": results["ssh"],
        "per_trial_start_overhead_s": round(overhead, 3),
        "ratio_ssh_vs_local": round(results["ssh"]["median_trial_s"] / results["local"]["median_trial_s"], 2),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
