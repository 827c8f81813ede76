"""A remote trial that proves it got the secret without ever printing it.

Writes ``probe.txt`` (the key's SHA-256, the host and the working directory) into its run directory — the
controller must copy it back — reports one metric, and sleeps ``--sleep`` seconds (so a test can read every
process's command line meanwhile).
"""

import argparse
import hashlib
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from orchestrator.trial import protocol  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--sleep", type=float, default=1.0)
parser.add_argument("--x", type=float, default=0.0)
args = parser.parse_args()
key = os.environ.get("ORCH_TEST_API_KEY", "")
run_dir = Path(os.environ["ORCHESTRATE_RUN_DIR"])
(run_dir / "probe.txt").write_text(
    f"{hashlib.sha256(key.encode()).hexdigest()}\n{socket.gethostname()}\n{Path.cwd()}\n{run_dir}\n"
)
time.sleep(args.sleep)
protocol.report(0, {"score": 1.0 if key else 0.0})
protocol.summary({"score": 1.0 if key else 0.0})
