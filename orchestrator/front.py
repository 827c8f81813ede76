"""The ``orchestrate`` command's front: ``launch`` forked from a kept, pre-imported controller (hot launches).

A launch's own start-up is mostly imports (typer, rich, Optuna, SQLAlchemy, alembic and the controller's
modules: ≈0.6 s of a quiet core, seconds on a busy one), paid again by every launch. With the zygote kept
(``ORCHESTRATE_ZYGOTE``, on by default; executors/warm.py), ``orchestrate launch`` is forked by a **controller
zygote**: the zygote daemon (orchestrator/zygote/), run locally (``--local``) with the controller's modules as its
preload (``CONTROLLER_PRELOAD``), in the same per-user runtime directory and keyed the same way (interpreter,
start-up environment, a hash of the code and installed packages) as the trials' zygote. This front imports
only the standard library and orchestrator/zygote/; it sends the command line, environment and directory with
its stdout and stderr and a lifeline, relays Ctrl-C, SIGTERM and SIGHUP to the forked controller, and exits
with its exit status. The forked controller is the launch: its pid is the controller's, its trials die with it,
and when this front dies (even SIGKILLed) the lifeline ends and the controller stops as on SIGTERM (stopping
its trials), then is killed ``LIFELINE_GRACE_S`` later.

The first launch that finds no controller zygote starts one and runs as before, in this process (it does not
wait for the imports); the next launches are forked. Every other command, ``--help``, ``--workers fresh`` (the
safe mode: nothing forked) and ``ORCHESTRATE_ZYGOTE=0`` run in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

CONTROLLER_PRELOAD = (
    "orchestrator.cli",
    "orchestrator.scheduler",
    "orchestrator.spec",
    "orchestrator.validate",
    "orchestrator.live",
    "orchestrator.storage",
    "orchestrator.leases",
    "orchestrator.claims",
    "orchestrator.faults",
    "orchestrator.pruners",
    "orchestrator.wandb_env",
    "orchestrator.executors.warm",
    "orchestrator.command",
    "orchestrator.fingerprint",
    "orchestrator.leaderboard",
    "orchestrator.wandb_hyperband",
    "orchestrator.trial.wandb_bridge",
    "orchestrator.executors.ssh",
    "orchestrator.executors.slurm",
    "optuna",
    "optuna.storages",
    "optuna.storages._rdb.models",  # (what opening an RDB storage imports lazily: ≈0.2 s of a quiet core)
    "sqlalchemy",
    "sqlalchemy.orm",
    "sqlalchemy.future",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "alembic",
    "alembic.command",
    "alembic.config",
    "alembic.migration",
    "orchestrator.optuna_compat:warm_storage",  # Optuna's migration scripts read once, not per launch
    "typer._adapters",  # typer's parameter conversion (pydantic), imported when a command is invoked
    "typer._click.decorators",
    "pydantic.plugin._loader",
    "encodings.utf_8_sig",  # (the sweep file is read as utf-8-sig)
    "encodings.ascii",
    "rich.live",
    "rich.table",
)
LIFELINE_GRACE_S = 60.0  # the controller's own stop takes up to its trials' grace (10 s) and the storage's


def main() -> None:
    argv = sys.argv[1:]
    fresh = "--workers=fresh" in argv or any(
        a == "--workers" and b == "fresh" for a, b in zip(argv, argv[1:], strict=False)
    )
    if argv[:1] == ["launch"] and not {"--help", "-h"} & set(argv) and not fresh:
        code = _hot(argv)
        if code is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    from orchestrator.cli import main as cli_main

    cli_main()


def _hot(argv: list[str]) -> int | None:
    """The exit status of ``argv`` run by the controller zygote; None: run it here (none ready, or off)."""
    from orchestrator.zygote import client, forking, keys

    if not keys.keep_zygote() or not hasattr(socket, "send_fds"):
        return None
    root = keys.runtime_dir()
    if root is None:
        return None
    env = dict(os.environ)
    denv = {**env, "ORCHESTRATE_PRELOAD": ",".join(CONTROLLER_PRELOAD)}
    cwd = os.getcwd()
    try:
        place = keys.place(denv, "", keys.code_version(cwd, denv), root)
    except OSError:
        return None
    if place is None:
        return None
    folder, name = place
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(str(folder / f"{name}.sock"))
    except OSError:
        conn.close()
        _start(folder, name, denv, cwd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    trial = client.fork_trial(conn, "orchestrator.forked_cli", argv, env, cwd, LIFELINE_GRACE_S, 1, 2)
    if trial is None:
        conn.close()
        return None

    def relay(signum: int, frame: object) -> None:
        forking.kill_group(trial.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, relay)
    rc = trial.wait()
    return rc if rc >= 0 else 128 - rc


def _start(folder: Path, name: str, denv: dict[str, str], cwd: str) -> None:
    """Start the controller zygote for the next launches, unless one is starting (its lock is held)."""
    from orchestrator.zygote import client

    if client.locked(folder / f"{name}.lock"):
        return
    with contextlib.suppress(OSError):
        client.spawn_local(folder, name, denv, cwd)


if __name__ == "__main__":
    main()
