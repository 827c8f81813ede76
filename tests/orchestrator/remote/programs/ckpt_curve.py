"""A stand-in training script that checkpoints every epoch and resumes, like experiments/train.py does.

Per epoch: sleep ``--sleep`` seconds, report ``score`` (the curve of tests/orchestrator/programs/curve.py), write
``checkpoint_last.pt`` (JSON here: the epoch, the history, when it was written) atomically, and emit the
``checkpoint`` protocol event. A run that finds ``checkpoint_last.pt`` in its run directory says
``resumed_from_epoch``, re-reports the history and trains only the epochs after it. Every epoch it trains prints
``trained epoch E in CWD`` (an ordinary line: the controller's stdout.log shows where each epoch ran).
``--stall_after=K``: a run that did not resume stops making progress after epoch K's checkpoint (it sleeps, so
a test can take the host down at a known epoch).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from orchestrator.trial import protocol  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--quality", type=float, default=1.0)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--stall_after", type=int, default=0)
args = parser.parse_args()

run_dir = Path(os.environ.get("ORCHESTRATE_RUN_DIR", "."))
ckpt = run_dir / "checkpoint_last.pt"
start, history = 0, []
if ckpt.exists():
    state = json.loads(ckpt.read_text())
    start, history = state["epoch"], state["history"]
    protocol.emit("info", resumed_from_epoch=start)
    for h in history:
        protocol.report(h["epoch"], h["metrics"])
for epoch in range(start + 1, args.epochs + 1):
    time.sleep(args.sleep)
    value = args.quality * (1 - 0.5**epoch)
    metrics = {"score": value, "loss": 1 - value}
    history.append({"epoch": epoch, "metrics": metrics})
    print(f"trained epoch {epoch} in {Path.cwd()}", flush=True)
    protocol.report(epoch, metrics)
    tmp = ckpt.with_suffix(".pt.tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "history": history, "written_at": time.time()}))
    os.replace(tmp, ckpt)
    protocol.checkpoint(epoch, ckpt.name)
    if epoch == args.stall_after and start == 0:
        time.sleep(300)  # the test takes the host down meanwhile
protocol.summary({"score": history[-1]["metrics"]["score"], "epochs_trained_here": args.epochs - start})
