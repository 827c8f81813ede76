"""A stand-in training script: prints a learning curve through the protocol, W&B-agent style arguments.

value(epoch) = quality * (1 - 0.5 ** (epoch + 1)), so a low-quality configuration is worse at every epoch
(built to be prunable). ``--fail=true`` exits 3 with a message on stderr; ``--sleep`` sets seconds per epoch;
``--hang=true`` ignores SIGTERM (for the kill path). ``--fold`` shifts the quality a little per fold;
``--init_checkpoint`` starts from a parent's stand-in checkpoint (a JSON file this script writes);
``--oom_above=N`` crashes like a CUDA out-of-memory error when ``--batch_size`` exceeds N.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from orchestrator.trial import protocol  # noqa: E402


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
parser.add_argument("--fold", type=int, default=None)
parser.add_argument("--batch_size", type=int, default=32)
parser.add_argument("--backbone", default=None)  # accepted, so a stand-in "architecture comparison" can run
parser.add_argument("--oom_above", type=int, default=None)
parser.add_argument("--init_checkpoint", default=None)
args = parser.parse_args()

if args.fold is not None:  # folds differ a little, deterministically
    args.quality *= 1 + 0.01 * (args.fold - 1)
if args.init_checkpoint is not None:  # a fine-tune starts from its parent's checkpoint: inherit its quality
    args.quality = min(1.0, json.loads(Path(args.init_checkpoint).read_text())["quality"] + 0.05)
if args.oom_above is not None and args.batch_size > args.oom_above:  # what torch prints on a full GPU
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)
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
run_dir = Path(os.environ.get("ORCHESTRATE_RUN_DIR", "."))
(run_dir / "checkpoint_best.pt").write_text(json.dumps({"quality": args.quality}))  # a stand-in checkpoint
protocol.summary({"score": args.quality * (1 - 0.5**args.epochs), "elapsed": time.time() - start})
