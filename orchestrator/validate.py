"""Check a sweep's parameters against its built-in experiment's config before anything starts.

The experiment's typed defaults live in ``experiments/config.py`` (no torch import), so the controller can
reject an unknown key or a wrongly typed value with the file, line and key — before any trial runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.rundir import with_project_on_path

MAX_POINTS = 500


def _experiments_config() -> Any:
    with_project_on_path()
    return importlib.import_module("experiments.config")


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


def validate_experiments(specs: list[Any]) -> None:
    for spec in specs:
        if not getattr(spec, "experiment", None):
            continue
        config = _experiments_config()
        for flat in candidate_points(spec.parameters, spec.method):
            params = spec.parameters.nest(flat)
            if getattr(spec, "init_from", None):
                params.pop("init_rank", None)  # the controller turns it into the parent's checkpoint path
                params["pretrained"] = "<checkpoint of the parent sweep>"
            try:
                resolved = config.validate(spec.experiment, params)
                reported = config.reported_metrics(spec.experiment, params)
                _check_weights(resolved.get("pretrained"))
            except SpecError as exc:
                key = exc.key or ""
                raise SpecError(
                    exc.detail,
                    file=spec.file,
                    line=_param_line(spec, key),
                    key=".".join(filter(None, [_where(spec), "parameters", key]))
                    if key
                    else _where(spec) or None,
                    hint=exc.hint,
                ) from None
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
