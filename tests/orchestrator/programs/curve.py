"""A stand-in training script: prints a learning curve through the protocol, W&B-agent style arguments.

value(epoch) = quality * (1 - 0.5 ** (epoch + 1)), so a low-quality configuration is worse at every epoch
(built to be prunable). ``--fail=true`` exits 3 with a message on stderr; ``--sleep`` sets seconds per epoch;
``--hang=true`` ignores SIGTERM (for the kill path).
"""

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from orchestrator import protocol  # noqa: E402


def flag(text: str) -> bool:
    return str(text).lower() in ("1", "true", "yes")


parser = argparse.ArgumentParser()
parser.add_argument("--quality", type=float, default=1.0)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--fail", type=flag, default=False)
parser.add_argument("--hang", type=flag, default=False)
parser.add_argument("--nan", type=flag, default=False)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

if args.hang:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("starting", json.dumps(vars(args)))  # an ordinary line: goes to stdout.log only
start = time.time()
for epoch in range(args.epochs):
    time.sleep(args.sleep)
    if args.fail and epoch == 1:
        print("boom: simulated crash in epoch 1", file=sys.stderr)
        sys.exit(3)
    value = float("nan") if args.nan and epoch == 1 else args.quality * (1 - 0.5 ** (epoch + 1))
    protocol.report(epoch, {"score": value, "loss": 1 - value})
protocol.summary({"score": args.quality * (1 - 0.5**args.epochs), "elapsed": time.time() - start})
