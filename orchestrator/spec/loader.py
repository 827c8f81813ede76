"""``load_sweeps(path)``: read a sweeps file (ours or a plain W&B sweep file) and validate all of it.

Every problem is a :class:`orchestrator.trial.errors.SpecError` naming the file, the line and the key path
(``sweeps[0].parameters.lr.min``; list indices count from 0) with a hint saying what to do next. Keys that only
matter to W&B's cloud (``controller``, ``job``, ``image_uri`` …) are accepted and reported in
``SweepFile.notices``.

One module per block of the file: ``context`` (the parse context, key paths, typed readers), ``defaults_block``,
``sweep_block``, ``param_block``, ``objective`` (metric, early_terminate, pruner), ``command_block`` (command,
experiment), ``hosts_block``, ``slurm_block`` and ``chains`` (depends_on, init_from). The names below are
re-exported from them.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec.chains import SPLIT_PARAMS as SPLIT_PARAMS
from orchestrator.spec.chains import check_cycles, check_dependencies
from orchestrator.spec.command_block import COMMAND_MACROS
from orchestrator.spec.command_block import ENVVAR as ENVVAR
from orchestrator.spec.context import Ctx, kind_of
from orchestrator.spec.defaults_block import DEFAULT_KEYS as DEFAULT_KEYS
from orchestrator.spec.defaults_block import parse_defaults
from orchestrator.spec.hosts_block import HOST_KEYS as HOST_KEYS
from orchestrator.spec.model import Defaults, SweepFile, SweepSpec
from orchestrator.spec.objective import HYPERBAND_KEYS as HYPERBAND_KEYS
from orchestrator.spec.objective import METRIC_KEYS as METRIC_KEYS
from orchestrator.spec.objective import optuna_pruner_class
from orchestrator.spec.param_block import PARAM_KEYS as PARAM_KEYS
from orchestrator.spec.slurm_block import SLURM_KEYS as SLURM_KEYS
from orchestrator.spec.sweep_block import MAX_NAME as MAX_NAME
from orchestrator.spec.sweep_block import METHODS as METHODS
from orchestrator.spec.sweep_block import OUR_SWEEP_KEYS as OUR_SWEEP_KEYS
from orchestrator.spec.sweep_block import SWEEP_KEYS, WANDB_ONLY_KEYS, parse_sweep
from orchestrator.spec.sweep_block import WANDB_SWEEP_KEYS as WANDB_SWEEP_KEYS
from orchestrator.spec.sweep_block import parse_duration as parse_duration
from orchestrator.spec.yamlio import LineDict, LineList, load_yaml
from orchestrator.trial.rundir import safe_name

__all__ = ["load_sweeps", "EXPERIMENTS_DIR", "COMMAND_MACROS", "optuna_pruner_class"]

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"

FILE_KEYS = ("defaults", "sweeps")


def load_sweeps(path: str | Path, *, experiments_dir: str | Path | None = None) -> SweepFile:
    """Read and validate a sweeps file: ours (``defaults:`` + ``sweeps:``) or one plain W&B sweep.

    ``experiments_dir`` is where ``experiment: NAME`` must find ``NAME.py`` (default: the project's
    ``experiments/``). Raises SpecError on the first problem.
    """
    path = Path(path)
    ctx = Ctx(path, Path(experiments_dir) if experiments_dir is not None else EXPERIMENTS_DIR)
    data = load_yaml(path)
    if data is None:
        ctx.fail(
            "the file is empty",
            None,
            None,
            hint="write a W&B sweep (method:, parameters:) or a 'sweeps:' list",
        )
    if not isinstance(data, LineDict):
        ctx.fail(f"the top level must be a mapping, not {kind_of(data)}", getattr(data, "line", 1), None)

    items: LineList | None = None
    if "sweeps" in data or "defaults" in data:
        defaults, items = _parse_file(ctx, data)
        sweeps = [
            parse_sweep(ctx, item, items.line_of(i), f"sweeps[{i}]", defaults, default_name=None)
            for i, item in enumerate(items)
        ]
    else:
        defaults = Defaults()
        sweeps = [parse_sweep(ctx, data, data.line or 1, "", defaults, default_name=path.stem)]
    _check_names(ctx, sweeps, ours=items is not None)
    check_cycles(ctx, sweeps)
    check_dependencies(ctx, sweeps, items)
    return SweepFile(path=path, defaults=defaults, sweeps=sweeps, notices=ctx.notices)


def _parse_file(ctx: Ctx, data: LineDict) -> tuple[Defaults, LineList]:
    """Our layout: ``defaults:`` and a non-empty ``sweeps:`` list, nothing else at the top."""
    for k in data:
        if k in FILE_KEYS:
            continue
        if isinstance(k, str) and (k in SWEEP_KEYS or k in WANDB_ONLY_KEYS):
            ctx.fail(
                f"'{k}' belongs to a sweep, but this file lists its sweeps under 'sweeps:'",
                data.line_of(k),
                str(k),
                hint="move it into one item of 'sweeps:' (or into 'defaults:' for project/entity/retries/wandb)",
            )
        ctx.unknown_keys(data, FILE_KEYS, "", "the file")
    defaults = parse_defaults(ctx, data.get("defaults"), data.line_of("defaults"))
    items = data.get("sweeps")
    if "sweeps" not in data or items is None:
        ctx.fail("'sweeps' is required: a list of sweeps", data.line_of("sweeps"), "sweeps")
    if isinstance(items, LineDict):
        ctx.fail(
            "'sweeps' must be a list, not a mapping",
            data.line_of("sweeps"),
            "sweeps",
            hint="start each sweep with '- name: …' under 'sweeps:'",
        )
    if not isinstance(items, LineList) or not items:
        ctx.fail(
            f"'sweeps' must be a non-empty list, not {kind_of(items) if items != [] else 'an empty list'}",
            data.line_of("sweeps"),
            "sweeps",
        )
    return defaults, items


def _check_names(ctx: Ctx, sweeps: list[SweepSpec], *, ours: bool) -> None:
    """Every sweep has its own name, and its own folder name (``rundir.safe_name``)."""
    seen: dict[str, SweepSpec] = {}
    safe_seen: dict[str, SweepSpec] = {}
    for i, sweep in enumerate(sweeps):
        key = f"sweeps[{i}].name" if len(sweeps) > 1 or ours else "name"
        if sweep.name in seen:
            ctx.fail(
                f"duplicate sweep name '{sweep.name}' (first on line {seen[sweep.name].line})",
                sweep.line,
                key,
                hint="give every sweep its own name",
            )
        safe = safe_name(sweep.name)
        if safe in safe_seen:
            ctx.fail(
                f"sweep names '{safe_seen[safe].name}' and '{sweep.name}' share the folder name '{safe}'",
                sweep.line,
                key,
                hint="rename one of them",
            )
        seen[sweep.name] = sweep
        safe_seen[safe] = sweep
