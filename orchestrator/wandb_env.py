"""The W&B side of a trial, without importing wandb in the controller.

Every trial is one W&B run. The controller does not call wandb: it gives the child the environment a W&B agent
would (project, group = sweep, name, run id, tags, mode, directories) and the child's own ``wandb.init()`` picks
it up. Offline by default (files under the run directory, ``orchestrate sync`` uploads them later); online when
the user is logged in; ``--no-wandb`` disables it.
"""

from __future__ import annotations

import netrc
import os
import secrets
from pathlib import Path

MODES = ("auto", "offline", "online", "disabled")


def logged_in() -> bool:
    """True when a W&B API key is available (env var or ~/.netrc), as ``wandb login`` leaves it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_mode(setting: str | None, no_wandb: bool = False) -> str:
    """``auto`` → online when logged in, else offline. WANDB_MODE in the environment wins over ``auto``."""
    if no_wandb:
        return "disabled"
    setting = (setting or "auto").lower()
    if setting == "auto":
        env = os.environ.get("WANDB_MODE", "").lower()
        if env in ("offline", "online", "disabled", "dryrun"):
            return "offline" if env == "dryrun" else env
        return "online" if logged_in() else "offline"
    if setting not in MODES:
        raise ValueError(f"wandb mode {setting!r}: use one of {', '.join(MODES)}")
    return setting


def new_run_id() -> str:
    """A W&B run id: 8 lowercase alphanumerics, unique enough across studies sharing a project."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def child_env(
    *,
    mode: str,
    run_dir: Path,
    project: str | None,
    entity: str | None,
    group: str,
    name: str,
    run_id: str,
    tags: list[str],
    cache_dir: Path,
) -> dict[str, str]:
    env = {
        "WANDB_MODE": mode,
        "WANDB_DIR": str(run_dir),
        "WANDB_RUN_GROUP": group,
        "WANDB_NAME": name,
        "WANDB_RUN_ID": run_id,
        "WANDB_TAGS": ",".join(t.replace(",", "_") for t in tags),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DATA_DIR": str(cache_dir / "wandb-data"),
        "WANDB_CACHE_DIR": str(cache_dir / "wandb-cache"),
        "WANDB_ARTIFACT_DIR": str(run_dir / "artifacts"),
    }
    if project:
        env["WANDB_PROJECT"] = project
    if entity:
        env["WANDB_ENTITY"] = entity
    if mode != "online":
        # keep every file of an offline run inside the run/cache dirs; never touch the network
        env["WANDB_CONFIG_DIR"] = str(cache_dir / "wandb-config")
    return env
