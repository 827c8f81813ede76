"""A fixed-duration stand-in trial: sleeps ``--duration`` seconds and appends its own clock to a file.

    python bench/programs/fixed.py --point=7 --duration=2 [--log=FILE]

The clock file is ``--log`` or ``$BENCH_CLOCK_FILE``; one JSON line per run, written with a single
``O_APPEND`` write (atomic for lines this short, so concurrent trials never interleave):
``{"point": 7, "start": <time.time() at the first line of this script>, "end": <just before exit>,
"pid": …, "trial": <$ORCHESTRATE_TRIAL or null>, "runner": <$BENCH_RUNNER or null>}``.

It reports its metric through the orchestrate protocol (harmless when nobody reads stdout) so that it runs
unchanged under ``orchestrate launch``, ``xargs``, Optuna objectives and Ray.
"""

import time

START = time.time()  # the trial's own clock starts here, before any import

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _arg(argv: list[str], name: str, default: str | None = None) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return default


def main(argv: list[str]) -> None:
    point = int(_arg(argv, "point", "0") or 0)
    duration = float(_arg(argv, "duration", "2") or 2)
    log = _arg(argv, "log") or os.environ.get("BENCH_CLOCK_FILE")
    time.sleep(max(0.0, duration - (time.time() - START)))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from orchestrator.trial import protocol

    protocol.report(0, {"score": float(point)})
    protocol.summary({"score": float(point)})
    end = time.time()
    if log:
        line = {
            "point": point,
            "start": START,
            "end": end,
            "pid": os.getpid(),
            "trial": os.environ.get("ORCHESTRATE_TRIAL"),
            "runner": os.environ.get("BENCH_RUNNER"),
        }
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1:])
