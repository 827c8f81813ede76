"""Benchmark 1: slot utilisation of ``orchestrate launch`` vs the bare-shell baseline ``xargs -P``.

    python bench/utilisation.py [--trials 64] [--slots 8] [--duration 2] [--quick]

Runs ``--trials`` trials of a fixed-duration program (``bench/programs/fixed.py``, a fresh process per trial,
as a user's ``program:``) through the real ``orchestrate launch`` on ``--slots`` CPU slots, then the same
commands with ``xargs -P <slots>``, in the same run. Each trial appends its own clock (start at its first
line, end before exit), so the figures do not depend on the controller's own accounting:

* utilisation = sum of trial durations / (slots × wall): ``steady`` over first trial start → last trial end,
  ``whole`` over the whole command (controller start-up, study creation and shutdown included);
* ``median_gap_s``: median time between one trial ending and the next starting on the same slot (orchestrate:
  the slot recorded in the study; xargs: inferred, each start takes the slot that freed last before it);
* accounting: every point ran exactly once (clock file, and for orchestrate also the study: N trials, N
  COMPLETE, N distinct points).

Hot launches: with the zygote kept (``ORCHESTRATE_ZYGOTE``, the default), ``orchestrate launch`` is forked by
a pre-imported controller that the first launch starts. ``--heat`` (the default then) runs one short launch
first and waits until that controller zygote listens, so the measured launch is the hot one a user gets from
their second launch on; ``--no-heat`` measures whatever state the machine is in. The JSON says which
(``controller``).

Targets: orchestrate steady ≥ 0.98 × xargs steady, whole ≥ 0.88 (issue 18: ≥ 0.95 hot), exact accounting.
``--quick``: 8 trials of 0.3 s on 2 slots (smoke test; the targets are then not meaningful).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _common import controller_zygote, emit, machine_load, run_orchestrate_fixed, run_xargs_fixed


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="8 trials of 0.3 s on 2 slots")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument(
        "--heat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one short launch first, so the measured one is forked hot (default: when the zygote is kept)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.slots, args.duration = 8, 2, 0.3
    load_before = machine_load()
    kept = os.environ.get("ORCHESTRATE_ZYGOTE", "1").strip().lower() not in ("0", "false", "no", "off")
    heat = kept if args.heat is None else args.heat and kept
    controller = "per launch"
    with tempfile.TemporaryDirectory(prefix="bench-util-") as tmp:
        base = args.workdir or Path(tmp)
        if heat:
            run_orchestrate_fixed(base / "heat", 2, 2, 0.1)
            controller = "hot" if controller_zygote(60.0) else "heated, but no controller zygote listened"
        elif kept:
            controller = "hot" if controller_zygote(0.0) else "cold (its first launch)"
        print("controller:", controller, flush=True)
        ours = run_orchestrate_fixed(base / "orchestrate", args.trials, args.slots, args.duration)
        print("orchestrate:", ours, flush=True)
        xargs = run_xargs_fixed(base / "xargs", args.trials, args.slots, args.duration)
        print("xargs:", xargs, flush=True)
    ratio = ours["steady"] / xargs["steady"] if xargs["steady"] else 0.0
    targets = {
        "steady_vs_xargs": {"target": ">= 0.98", "value": round(ratio, 4), "met": ratio >= 0.98},
        "whole": {"target": ">= 0.88", "value": ours["whole"], "met": ours["whole"] >= 0.88},
        "exact_accounting": {
            "target": True,
            "value": ours["accounting"]["exact"],
            "met": ours["accounting"]["exact"],
        },
    }
    result = {
        "benchmark": "utilisation",
        "quick": args.quick,
        "trials": args.trials,
        "slots": args.slots,
        "duration_s": args.duration,
        "orchestrate": ours,
        "xargs": xargs,
        "steady_ratio_vs_xargs": round(ratio, 4),
        "controller": controller,
        "targets": targets,
        "met": all(t["met"] for t in targets.values()),
        "load": {"before": load_before, "after": machine_load()},
    }
    emit(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
