"""Settings every test runs under, whatever the developer's shell says: W&B never goes online (a logged-in
machine would otherwise upload test runs, and a bad key hangs ~100 s), and timm never asks the hub."""

from __future__ import annotations

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
