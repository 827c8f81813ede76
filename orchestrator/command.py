"""The command line of one trial, built as W&B's agent builds it (``wandb/wandb_agent.py`` +
``wandb/sdk/launch/sweeps/utils.py:create_sweep_command_args``).

Default command: ``${env} ${interpreter} ${program} ${args}``. A command item that is exactly a macro is
replaced by a list of words; ``${envvar:NAME}`` is replaced anywhere inside an item. Arguments come from the
*nested* run config in sorted key order (W&B's backend sends the config as a sorted JSON object):

* ``${args}``: ``--key=value``; ``${args_no_hyphens}``: ``key=value``; ``${args_no_equals}``: ``--key value``;
* ``${args_no_boolean_flags}``: ``--key=value``, but ``--key`` for True and nothing for False;
* ``${args_json}``: one word, ``json.dumps(config)``; ``${args_json_file}``: the path of a file holding it.

A value is written with Python's ``str()`` as the agent does (``True``, ``None``, ``[32, 32]``,
``{'backbone': 'x'}`` for a nested group). Differences from the W&B agent, on purpose:

* ``${interpreter}`` is ``sys.executable`` (W&B: ``python``), so trials run in orchestrate's environment.
* A float with an integral value is written as an int (``--epochs=3``), which is what W&B's agent receives
  after the backend's JSON round trip; we write the same.
* ``${envvar:NAME}`` with NAME unset is an error (W&B leaves the bare NAME in the command).
* An unknown whole-item macro is an error at load time (W&B silently drops it).
* ``${program}`` is resolved against ``program_path_root`` when relative.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.spec.loader import ENVVAR
from orchestrator.spec.model import SweepSpec
from orchestrator.trial.errors import SpecError

__all__ = ["DEFAULT_COMMAND", "build_command", "format_args", "format_value", "expand_envvars"]

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


def _normalize(value: Any) -> Any:
    """What the agent receives after W&B's JSON round trip: integral floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    return value


def format_value(value: Any) -> str:
    """One value as the W&B agent writes it (``str()`` of the value)."""
    return str(_normalize(value))


def format_args(params_nested: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every W&B args macro (name without ``${}``) → its list of words."""
    config = {k: _normalize(params_nested[k]) for k in sorted(params_nested)}
    args: list[str] = []
    no_hyphens: list[str] = []
    no_equals: list[str] = []
    no_booleans: list[str] = []
    for key, value in config.items():
        flag = f"{key}={value}"
        args.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{key}", str(value)]
        if isinstance(value, bool):
            if value:
                no_booleans.append("--" + key)
        else:
            no_booleans.append("--" + flag)
    return {
        "args": args,
        "args_no_hyphens": no_hyphens,
        "args_no_equals": no_equals,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(config)],
    }


def expand_envvars(word: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every ``${envvar:NAME}`` in ``word``; SpecError naming NAME when it is unset."""
    env = os.environ if environ is None else environ

    def repl(match: Any) -> str:
        name = match.group(1)
        if name not in env:
            raise SpecError(
                f"the command uses ${{envvar:{name}}} but the environment variable {name} is not set",
                key="command",
                hint=f"export {name}=… before launching",
            )
        return env[name]

    return ENVVAR.sub(repl, word)


def build_command(
    sweep: SweepSpec,
    params_nested: Mapping[str, Any],
    *,
    program_path_root: str | Path,
    args_json_file: str | Path,
    run_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv of one trial.

    For an ``experiment`` sweep: ``[sys.executable, "-m", "experiments.NAME", run_dir]`` (run_dir required).
    Otherwise the sweep's ``command`` (or W&B's default) with the macros filled in. When the command uses
    ``${args_json_file}``, the JSON of ``params_nested`` is written to ``args_json_file`` (as W&B's agent
    does). ``environ`` (default ``os.environ``) resolves ``${envvar:NAME}``.
    """
    if sweep.experiment:
        if run_dir is None:
            raise ValueError("an experiment sweep needs run_dir")
        return [sys.executable, "-m", f"experiments.{sweep.experiment}", str(run_dir)]
    template = list(sweep.command) if sweep.command else list(DEFAULT_COMMAND)
    if not sweep.command and sweep.program is None:
        raise SpecError(
            f"sweep '{sweep.name}' has no experiment, program or command, so there is nothing to run",
            file=sweep.file,
            line=sweep.line,
            key="program",
            hint="add 'program: train.py' or 'experiment: train'",
        )
    macros: dict[str, list[str]] = format_args(params_nested)
    macros["env"] = [] if sys.platform == "win32" else ["/usr/bin/env"]
    macros["interpreter"] = [sys.executable]
    if sweep.program is not None:
        program = sweep.program
        if not os.path.isabs(program):
            program = os.path.join(str(program_path_root), program)
        macros["program"] = [program]
    macros["args_json_file"] = [str(args_json_file)]
    out: list[str] = []
    for word in template:
        word = str(word)
        if word.startswith("${") and word.endswith("}") and not word.startswith("${envvar:"):
            name = word[2:-1]
            if name not in macros:
                raise SpecError(
                    f"unknown command macro '{word}'", file=sweep.file, line=sweep.line, key="command"
                )
            if name == "args_json_file":
                path = Path(args_json_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(macros["args_json"][0], encoding="utf-8")
            out.extend(macros[name])
        else:
            out.append(expand_envvars(word, environ))
    return out
