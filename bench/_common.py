"""Shared helpers of the benchmarks: run the real ``orchestrate launch`` CLI, read trial clocks, compute ratios.

Every benchmark prints, as its last line, one JSON object (``emit``), so that a script can collect them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "bench" / "programs"
FIXED = PROGRAMS / "fixed.py"


def orchestrate_argv() -> list[str]:
    """The real console script next to this interpreter (the venv's), else ``python -m orchestrator``;
    ``$BENCH_ORCHESTRATE_CMD`` (split like a shell) overrides it, e.g. to measure another checkout."""
    if os.environ.get("BENCH_ORCHESTRATE_CMD"):
        return shlex.split(os.environ["BENCH_ORCHESTRATE_CMD"])
    script = Path(sys.executable).parent / "orchestrate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
            "ORCHESTRATE_CACHE_DIR": str(workdir / "cache"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        }
    )
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


def launch(
    workdir: Path,
    sweep_yaml: str,
    slots: int,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Write the sweep file into ``workdir`` and run ``orchestrate launch`` on it; (wall seconds, process).

    Storage ``sqlite:///<workdir>/db``, runs under ``<workdir>/runs``, W&B disabled, plain output.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sweep.yaml"
    path.write_text(sweep_yaml)
    argv = [
        *orchestrate_argv(),
        "launch",
        str(path),
        "--plain",
        "--no-wandb",
        "--slots",
        f"cpu:{slots}",
        "--storage",
        storage_url(workdir),
        "--runs-dir",
        str(workdir / "runs"),
        *(extra or []),
    ]
    t0 = time.time()
    proc = subprocess.run(
        argv,
        cwd=workdir,
        env=env if env is not None else child_env(workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.time() - t0
    (workdir / "launch.stdout").write_text(proc.stdout)
    (workdir / "launch.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"orchestrate launch exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return wall, proc


def storage_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'db'}"


def load_trials(workdir: Path, sweep: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=sweep, storage=storage_url(workdir)).get_trials(deepcopy=False)


def read_clocks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def infer_gaps(intervals: list[tuple[float, float]], slots: int) -> list[float]:
    """Gaps between one run ending and the next starting on the same slot, when slot ids are unknown
    (xargs, threads, processes): each start takes the free slot that freed last before it."""
    free: list[float | None] = [None] * slots
    busy: list[float] = []
    gaps: list[float] = []
    for start, end in sorted(intervals):
        done = sorted(e for e in busy if e <= start)
        for e in done:
            busy.remove(e)
            free.append(e)
        if None in free:
            free.remove(None)
        elif free:
            last = max(e for e in free if e is not None)
            free.remove(last)
            gaps.append(start - last)
        elif busy:  # more overlap than slots (clock skew): the earliest to end
            first = min(busy)
            busy.remove(first)
            gaps.append(max(0.0, start - first))
        busy.append(end)
    return gaps


def slot_gaps(runs: list[tuple[str, float, float]]) -> list[float]:
    """Gaps between consecutive runs on each known slot: runs are (slot, start, end)."""
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for slot, start, end in runs:
        by_slot.setdefault(slot, []).append((start, end))
    gaps = []
    for items in by_slot.values():
        items.sort()
        gaps += [b[0] - a[1] for a, b in zip(items, items[1:], strict=False)]
    return gaps


def accounting(points: list[int], expected: int) -> dict[str, Any]:
    """Each of ``range(expected)`` should have run exactly once."""
    counts = Counter(points)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    missing = sum(1 for p in range(expected) if p not in counts)
    extra = sum(1 for p in counts if not 0 <= p < expected)
    return {
        "runs": len(points),
        "duplicated": duplicated,
        "missing": missing,
        "exact": duplicated == 0 and missing == 0 and extra == 0,
    }


def utilisation(clocks: list[dict[str, Any]], slots: int, whole_wall: float) -> dict[str, Any]:
    """Ratios from the trials' own clocks: busy = sum of durations; steady over first start → last end."""
    if not clocks:
        return {"busy_s": 0.0, "steady_s": 0.0, "whole_s": round(whole_wall, 3), "steady": 0.0, "whole": 0.0}
    busy = sum(c["end"] - c["start"] for c in clocks)
    steady = max(c["end"] for c in clocks) - min(c["start"] for c in clocks)
    return {
        "busy_s": round(busy, 3),
        "steady_s": round(steady, 3),
        "whole_s": round(whole_wall, 3),
        "steady": round(busy / (slots * steady), 4) if steady > 0 else 0.0,
        "whole": round(busy / (slots * whole_wall), 4) if whole_wall > 0 else 0.0,
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def machine_load() -> dict[str, Any]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return {}
    return {"cores": os.cpu_count(), "load_1m": round(one, 2), "load_5m": round(five, 2)}


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def emit(obj: dict[str, Any]) -> None:
    """The benchmark's result: its last line of output, one JSON object."""
    sys.stdout.flush()
    print(json.dumps(obj, separators=(", ", ": ")), flush=True)


# ----------------------------------------------------------------- the fixed-duration workload (benchmarks 1, 2)
def fixed_sweep(n: int, duration: float, name: str = "fixed") -> str:
    """A grid sweep of ``n`` points of ``bench/programs/fixed.py`` (a fresh process per trial, like a user's
    ``program:``)."""
    return (
        "defaults: {wandb: disabled}\n"
        "sweeps:\n"
        f"  - name: {name}\n"
        f"    program: {FIXED}\n"
        "    method: grid\n"
        "    metric: {name: score, goal: maximize}\n"
        "    parameters:\n"
        f"      point: {{values: {list(range(n))}}}\n"
        f"      duration: {{value: {duration}}}\n"
    )


def fixed_result(clocks: list[dict[str, Any]], n: int, slots: int, wall: float) -> dict[str, Any]:
    out = utilisation(clocks, slots, wall)
    gaps = infer_gaps([(c["start"], c["end"]) for c in clocks], slots)
    out["median_gap_s"] = median(gaps)
    out["accounting"] = accounting([int(c["point"]) for c in clocks], n)
    return out


def run_orchestrate_fixed(workdir: Path, n: int, slots: int, duration: float) -> dict[str, Any]:
    """``orchestrate launch`` on the fixed workload: ratios from the trials' clocks, gaps per real slot, and
    accounting from both the clocks and the study (``n`` COMPLETE trials, each point once)."""
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER="orchestrate")
    wall, _ = launch(workdir, fixed_sweep(n, duration), slots, env=env)
    clocks = read_clocks(clock)
    out = fixed_result(clocks, n, slots, wall)
    trials = load_trials(workdir, "fixed")
    slot_of = {t.number: str(t.user_attrs.get("orchestrate.slot")) for t in trials}
    runs = [(slot_of.get(int(c["trial"]), "?"), c["start"], c["end"]) for c in clocks if c.get("trial")]
    out["median_gap_s"] = median(slot_gaps(runs))  # the real slots, not inferred
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    study_acc = accounting([int(json.loads(t.user_attrs["orchestrate.point"])["point"]) for t in complete], n)
    out["study"] = {"trials": len(trials), "complete": len(complete), **study_acc}
    out["accounting"]["exact"] = bool(out["accounting"]["exact"] and study_acc["exact"] and len(trials) == n)
    return out


def run_xargs_fixed(workdir: Path, n: int, slots: int, duration: float) -> dict[str, Any]:
    """The bare-shell baseline (what simple_gpu_scheduler does): ``xargs -P slots`` over the same commands."""
    fresh_dir(workdir)
    clock = workdir / "clock.jsonl"
    env = child_env(workdir, BENCH_CLOCK_FILE=str(clock), BENCH_RUNNER="xargs")
    points = "".join(f"{i}\n" for i in range(n))
    t0 = time.time()
    subprocess.run(
        [
            "xargs",
            "-P",
            str(slots),
            "-I{}",
            sys.executable,
            str(FIXED),
            "--point={}",
            f"--duration={duration}",
        ],
        input=points,
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.time() - t0
    return fixed_result(read_clocks(clock), n, slots, wall)


def controller_zygote(wait_s: float) -> bool:
    """Whether a controller zygote listens (waiting up to ``wait_s`` for one that imports)."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.executors.warm import zygotes
    from orchestrator.front import CONTROLLER_PRELOAD

    deadline = time.monotonic() + wait_s
    while True:
        found = [z for z in zygotes() if z["env"].get("ORCHESTRATE_PRELOAD") == ",".join(CONTROLLER_PRELOAD)]
        if found or time.monotonic() >= deadline:
            return bool(found)
        time.sleep(0.2)
