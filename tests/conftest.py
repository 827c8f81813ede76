"""Settings every test runs under, whatever the developer's shell says: W&B never goes online (a logged-in
machine would otherwise upload test runs, and a bad key hangs ~100 s), timm never asks the hub, and launches
never leave a zygote daemon behind (the tests of that feature turn it on)."""

from __future__ import annotations

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ORCHESTRATE_ZYGOTE"] = "0"  # inherited by every CLI and controller the tests start
