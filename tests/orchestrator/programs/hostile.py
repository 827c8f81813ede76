"""A trial that misbehaves on purpose (issue 14): bad protocol lines, leftover processes, never ending.

``--line=TEXT`` prints TEXT as a line after the first report (e.g. a protocol line of the wrong shape);
``--orphan=PATH`` starts a background ``sleep`` that inherits its stdout (and writes the sleep's pid to PATH),
then ends; ``--epochs``/``--sleep`` as curve.py; ``--started=DIR`` writes DIR/<pid>.started once it runs; ``--hold`` waits after the last report (tests wait on it).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from orchestrator.trial import protocol  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--line", default=None)
parser.add_argument("--orphan", default=None)
parser.add_argument("--started", default=None)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--quality", type=float, default=1.0)
parser.add_argument("--hold", type=float, default=0.0)  # seconds to wait after the last report
args = parser.parse_args()

if args.started:
    Path(args.started, f"{os.getpid()}.started").write_text(str(os.getpid()))
if args.orphan:  # a leftover process holding the trial's stdout (and ignoring SIGTERM, the worst case)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)",
        ]
    )
    Path(args.orphan).write_text(str(child.pid))
for epoch in range(args.epochs):
    time.sleep(args.sleep)
    protocol.report(epoch, {"score": args.quality * (epoch + 1) / args.epochs})
    if epoch == 0 and args.line is not None:
        print(args.line, flush=True)
time.sleep(args.hold)
protocol.summary({"score": args.quality})
