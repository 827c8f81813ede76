"""Check a sweep's parameters against its built-in experiment's config before anything starts.

The experiment's typed defaults and torch-free checks live in ``experiments/config.py``; the controller asks
them through one seam, ``python -m experiments.check`` (a subprocess speaking JSON), and never imports
experiment code. So it can reject an unknown key, a wrongly typed value or a configuration that cannot run
with the file, line and key — before any trial runs — and the experiment's rules run on one side only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchestrator.trial.errors import RunError, SpecError
from orchestrator.trial.rundir import PROJECT_ROOT

MAX_POINTS = 500
CHECKER = [sys.executable, "-m", "experiments.check"]


def ask_experiments(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One round trip to ``python -m experiments.check`` (see its docstring): one result per request."""
    if not requests:
        return []
    try:
        proc = subprocess.run(
            CHECKER,
            input=json.dumps({"requests": requests}, default=str),
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"the experiments' checker could not run: {exc}") from None
    try:
        results = json.loads(proc.stdout)["results"] if proc.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        results = None
    if not isinstance(results, list) or len(results) != len(requests):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RunError(
            f"the experiments' checker ({' '.join(CHECKER[1:])}) failed (exit {proc.returncode}): {tail[0]}",
            hint=f"run it by hand in {PROJECT_ROOT} to see the whole error",
        )
    return results


def candidate_points(space: Any, method: str, n: int = 20) -> list[dict[str, Any]]:
    """Parameter points that exercise every value of a sweep: the grid, or a few random samples."""
    if method == "grid":
        return list(space.grid()[:MAX_POINTS])
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(n):
        trial = study.ask()
        points.append(space.sample(trial, grid=False))
        study.tell(trial, 0.0)
    return points


def validate_runnable(specs: list[Any], cwd: Path | None = None) -> None:
    """What a launch would only find out when its first trial starts: a ``program:`` file that is not there
    (relative to ``cwd``, where trials start), or a ``${envvar:NAME}`` of the command with NAME unset."""
    from orchestrator.spec.loader import ENVVAR

    root = cwd or Path.cwd()
    for spec in specs:
        where = _where(spec)
        program = getattr(spec, "program", None)
        if program and not (Path(program) if Path(program).is_absolute() else root / program).is_file():
            raise SpecError(
                f"program {program!r} does not exist (looked for {root / program})",
                file=spec.file,
                line=spec.line,
                key=".".join(filter(None, [where, "program"])),
                hint="trials start in the current directory: run from the project's folder, or give the path",
            )
        for i, word in enumerate(getattr(spec, "command", None) or []):
            for name in ENVVAR.findall(str(word)):
                if name not in os.environ:
                    raise SpecError(
                        f"the command uses ${{envvar:{name}}} but the environment variable {name} is not set",
                        file=spec.file,
                        line=spec.line,
                        key=".".join(filter(None, [where, f"command[{i}]"])),
                        hint=f"export {name}=… before launching",
                    )


def validate_experiments(specs: list[Any]) -> None:
    """Every sweep of a built-in experiment, checked at a few points (the grid, or random samples) in one
    round trip to the experiments' checker; the first problem raises ``SpecError`` at the sweep's file:line."""
    asked: list[tuple[Any, dict[str, Any]]] = []
    for spec in specs:
        if not getattr(spec, "experiment", None):
            continue
        for flat in candidate_points(spec.parameters, spec.method):
            params = spec.parameters.nest(flat)
            if getattr(spec, "init_from", None):
                params.pop("init_rank", None)  # the controller turns it into the parent's checkpoint path
                params["pretrained"] = "<checkpoint of the parent sweep>"
            asked.append((spec, params))
    results = ask_experiments(
        [{"op": "validate", "experiment": spec.experiment, "params": params} for spec, params in asked]
    )
    for (spec, _), res in zip(asked, results, strict=True):
        if res.get("ok"):
            try:
                _check_weights(res.get("pretrained"))
            except SpecError as exc:
                res = {"ok": False, "message": exc.detail, "key": exc.key, "hint": exc.hint}
        if not res.get("ok"):
            key = str(res.get("key") or "")
            raise SpecError(
                str(res.get("message")),
                file=spec.file,
                line=_param_line(spec, key),
                key=".".join(filter(None, [_where(spec), "parameters", key]))
                if key
                else _where(spec) or None,
                hint=res.get("hint"),
            )
        reported = list(res.get("reported") or [])
        if spec.metric is not None and spec.metric.name not in reported:
            raise SpecError(
                f"metric {spec.metric.name!r} is never reported by experiment {spec.experiment!r} "
                f"with these parameters",
                file=spec.file,
                line=spec.line,
                key=".".join(filter(None, [_where(spec), "metric", "name"])),
                hint="it reports: " + ", ".join(reported),
            )


def _check_weights(value: Any) -> None:
    """A weights file a trial starts from (``pretrained: <path>``) must exist on this machine: trials read it
    here, and remote hosts get their copy from here (``datasync.weight_units``). Relative paths are the
    children's, from the project root. The parent checkpoint of an ``init_from`` sweep is not made yet."""
    if not isinstance(value, str) or value.lower() in ("true", "false") or value.startswith("<"):
        return
    from orchestrator.datasync import _local

    if not _local(value).is_file():
        raise SpecError(
            f"no such weights file: {value}",
            key="pretrained",
            hint="the path of a .pt/.pth file on this machine (relative paths start at the project root), "
            "or pretrained: true for the timm weights",
        )


def _where(spec: Any) -> str:
    """The sweep's key path in its file (``sweeps[1]``); a plain W&B file's sweep is the top level."""
    return str(getattr(spec, "key", None) or "")


def _param_line(spec: Any, key: str) -> int | None:
    """The line of a parameter (or of its top-level group, for a nested key) in the sweep file."""
    space = spec.parameters
    for name in (key, key.split(".")[0]):
        if name in space:
            line = space[name].line
            if line is not None:
                return int(line)
    return getattr(spec, "line", None)
