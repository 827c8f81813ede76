"""The W&B side of a trial, without importing wandb in the controller.

Every trial is one W&B run. The controller does not call wandb: it gives the child the environment a W&B agent
would (project, group = sweep, name, run id, tags, mode, directories) and the child's own ``wandb.init()`` picks
it up. Offline by default (files under the run directory, ``orchestrate sync`` uploads them later); online when
the user is logged in; ``--no-wandb`` disables it.

What a W&B agent gives a run (``wandb/wandb_agent.py``: ``Agent._command_run``, ``agents/pyagent.py``), and we
give too: ``WANDB_RUN_ID``; ``WANDB_SWEEP_PARAM_PATH``, a YAML file ``wandb_version: 1`` + ``{key: {value: v}}``
of the run's (nested) parameters at ``WANDB_DIR/wandb/sweep-<id>/config-<run id>.yaml`` — ``wandb.init()``
reads it (``wandb_setup.config`` → ``config_util.dict_from_config_file``) and merges it into ``wandb.config``
*locked* (user "sweep"), so it wins over the script's own defaults and ``config=`` as under an agent; and
``WANDB_SWEEP_ID`` (an 8-character id kept in the study, stable across resumes). With a sweep id W&B ignores
the ``project``, ``entity`` and ``id`` a script passes to ``wandb.init`` (``clear_run_path_if_sweep_or_launch``),
so the run lands in the sweep's project under our run id, as under an agent. Group and name come from
``WANDB_RUN_GROUP``/``WANDB_NAME`` (an agent sets neither; a name/group passed to ``wandb.init`` still wins).

``WANDB_SWEEP_ID`` is given to offline (and disabled) runs only: online, W&B's server attaches the run to that
sweep, which does not exist on the server (orchestrate's sweeps are not W&B server sweeps).
"""

from __future__ import annotations

import netrc
import os
import secrets
from pathlib import Path
from typing import Any

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


SWEEP_ID_ATTR = "orchestrate.wandb_sweep_id"  # study user attr holding the sweep's W&B sweep id


def new_sweep_id() -> str:
    """A W&B-style sweep id (8 lowercase alphanumerics)."""
    return new_run_id()


def sweep_param_path(wandb_dir: Path, sweep_id: str, run_id: str) -> Path:
    """Where a W&B agent writes a run's sweep parameters: ``WANDB_DIR/wandb/sweep-<id>/config-<run>.yaml``."""
    return Path(wandb_dir) / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"


def write_sweep_params(path: Path, params: dict[str, Any]) -> Path:
    """Write ``params`` (nested) as W&B's agent does (``config_util.save_config_file_from_dict``)."""
    import yaml

    text = "wandb_version: 1"
    if params:
        body = {str(k): {"value": v} for k, v in params.items()}
        text += "\n\n" + yaml.safe_dump(body, default_flow_style=False, allow_unicode=True, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


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
    sweep_id: str | None = None,
    param_path: Path | None = None,
    job_type: str | None = None,
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
    if job_type:
        env["WANDB_JOB_TYPE"] = job_type
    if param_path is not None:
        env["WANDB_SWEEP_PARAM_PATH"] = str(param_path)
    if sweep_id and mode != "online":
        env["WANDB_SWEEP_ID"] = sweep_id
    if project:
        env["WANDB_PROJECT"] = project
    if entity:
        env["WANDB_ENTITY"] = entity
    if mode != "online":
        # keep every file of an offline run inside the run/cache dirs; never touch the network
        env["WANDB_CONFIG_DIR"] = str(cache_dir / "wandb-config")
    return env
