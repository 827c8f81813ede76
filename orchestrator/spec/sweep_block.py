"""One sweep (an item of ``sweeps:``, or a whole W&B sweep file): its keys, name, method and run options."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

from orchestrator.spec.chains import parse_init_from, with_init_rank
from orchestrator.spec.command_block import check_experiment, parse_command
from orchestrator.spec.context import Ctx, closest, join_key, kind_of
from orchestrator.spec.defaults_block import wandb_mode
from orchestrator.spec.model import Defaults, SweepSpec
from orchestrator.spec.objective import parse_objective
from orchestrator.spec.param_block import parse_params
from orchestrator.spec.params import Param, ParamSpace
from orchestrator.spec.slurm_block import parse_slurm
from orchestrator.spec.yamlio import LineDict, as_number

WANDB_SWEEP_KEYS = (
    "name",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "program",
    "command",
    "run_cap",
    "description",
    "project",
    "entity",
)
OUR_SWEEP_KEYS = (
    "experiment",
    "pruner",
    "retries",
    "wandb",
    "data_root",
    "folds",
    "seeds",
    "depends_on",
    "init_from",
    "on_oom",
    "slurm",
    "timeout",
    "retry_on_timeout",
)
SWEEP_KEYS = WANDB_SWEEP_KEYS + OUR_SWEEP_KEYS
#: W&B keys that only mean something to W&B's cloud/launch: accepted, ignored, noticed
WANDB_ONLY_KEYS = (
    "controller",
    "job",
    "image_uri",
    "imageUri",
    "launch",
    "apiVersion",
    "kind",
    "scheduler",
    "resume",
)
METHODS = ("grid", "random", "bayes")

#: a sweep name becomes a study name and (through rundir.safe_name, which also replaces '/') a folder name:
#: at most this long, no control characters. '/' is allowed: real W&B sweep names hold it
MAX_NAME = 100


def _check_name(ctx: Ctx, name: str | None, line: int | None, key: str) -> None:
    if name is None or not name.strip():
        ctx.fail("the sweep name is empty", line, key, hint="give the sweep a short name, e.g. name: lr-grid")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        ctx.fail(
            f"the sweep name {name!r} holds the control character {bad!r}",
            line,
            key,
            hint="sweep names become folder and study names: use letters, digits, '-', '_' and '.'",
        )
    if len(name) > MAX_NAME:
        ctx.fail(
            f"the sweep name is {len(name)} characters long (at most {MAX_NAME})",
            line,
            key,
            hint="sweep names become folder and study names: shorten it",
        )


def parse_sweep(
    ctx: Ctx, raw: Any, line: int | None, prefix: str, defaults: Defaults, default_name: str | None
) -> SweepSpec:
    """One sweep at ``prefix`` (``sweeps[i]``, or ``""`` for a plain W&B sweep file named ``default_name``)."""
    d, name = _sweep_head(ctx, raw, line, prefix, default_name)
    method = _parse_method(ctx, d, prefix)
    metric, pruner = parse_objective(ctx, d, prefix, method)
    space, names = _parse_space(ctx, d, prefix, method)
    experiment, program, command = _parse_program(ctx, d, prefix, name)
    options = _parse_options(ctx, d, prefix, defaults, experiment, names)
    init_from = options["init_from"]
    if init_from is not None and init_from > 1:
        space = with_init_rank(space, init_from, d.line_of("init_from"))
    return SweepSpec(
        name=name,
        method=method,  # type: ignore[arg-type]
        metric=metric,
        parameters=space,
        experiment=experiment,
        program=program,
        command=command,
        pruner=pruner,
        project=ctx.string(d, "project", prefix) or defaults.project,
        entity=ctx.string(d, "entity", prefix) or defaults.entity,
        file=str(ctx.file),
        line=d.line,
        wandb=wandb_mode(ctx, d, prefix) or defaults.wandb,
        key=prefix or None,
        slurm=(parse_slurm(ctx, d, prefix, defaults.slurm) if d.get("slurm") is not None else defaults.slurm),
        **options,
    )


def _sweep_head(
    ctx: Ctx, raw: Any, line: int | None, prefix: str, default_name: str | None
) -> tuple[LineDict, str]:
    """The sweep's mapping (known keys only; W&B-only keys noticed) and its name."""
    what = prefix or "the sweep"
    d = ctx.mapping(raw, line, prefix, what)
    ctx.unknown_keys(
        d,
        SWEEP_KEYS,
        prefix,
        f"{what} (W&B sweep keys and experiment/pruner/retries/wandb/data_root)",
        ignored=WANDB_ONLY_KEYS + ("metrics",),
    )
    if "metrics" in d:
        ctx.fail(
            "multi-objective 'metrics' is not supported",
            d.line_of("metrics"),
            join_key(prefix, "metrics"),
            hint="optimise one metric with 'metric: {name: …, goal: …}'",
        )
    for k in d:
        if k in WANDB_ONLY_KEYS:
            ctx.notice(
                f"{ctx.file}:{d.line_of(k)}: {join_key(prefix, k)}: W&B-only key, ignored by orchestrate"
            )

    name = ctx.string(d, "name", prefix, optional=default_name is not None)
    if name is None:
        name = default_name
    _check_name(ctx, name, d.line_of("name"), join_key(prefix, "name"))
    assert name is not None
    return d, name


def _parse_method(ctx: Ctx, d: LineDict, prefix: str) -> str:
    if "method" not in d:
        ctx.fail(
            "'method' is required",
            d.line,
            join_key(prefix, "method"),
            hint="add 'method: grid', 'random' or 'bayes'",
        )
    method = d["method"]
    if method not in METHODS or not isinstance(method, str):
        best = closest(str(method), METHODS)
        hint = f"did you mean '{best}'?" if best else "use grid, random or bayes"
        if method == "custom":
            hint = "method: custom (W&B's custom schedulers) is not supported; use grid, random or bayes"
        ctx.fail(f"unknown method {method!r}", d.line_of("method"), join_key(prefix, "method"), hint)
    return method


def _parse_space(ctx: Ctx, d: LineDict, prefix: str, method: str) -> tuple[ParamSpace, dict[str, Param]]:
    """``parameters:`` (plus ``seed`` from ``seeds:``) as a ParamSpace, and its parameters by name."""
    if "parameters" not in d or d["parameters"] is None:
        ctx.fail(
            "'parameters' is required",
            d.line_of("parameters"),
            join_key(prefix, "parameters"),
            hint="add at least one parameter, e.g. 'parameters: {lr: {values: [0.01, 0.001]}}'",
        )
    pkey = join_key(prefix, "parameters")
    params = parse_params(ctx, d["parameters"], d.line_of("parameters"), pkey, ())
    names: dict[str, Param] = {}
    for p in params:
        if p.name in names:
            ctx.fail(
                f"parameter name '{p.name}' is defined twice (as a nested and as a dotted name)",
                p.line,
                pkey,
                hint="rename one of them",
            )
        names[p.name] = p
    seeds = _parse_seeds(ctx, d, prefix, method, names)
    if seeds is not None:  # one more grid dimension: the leaderboard shows each point's mean ± std over seeds
        params = [*params, Param(path=("seed",), kind="categorical", values=seeds, line=d.line_of("seeds"))]
        names["seed"] = params[-1]
    space = ParamSpace(params, file=str(ctx.file), key=pkey)
    if method == "grid":
        space.check_grid()
    return space, names


def _parse_program(
    ctx: Ctx, d: LineDict, prefix: str, name: str
) -> tuple[str | None, str | None, list[str] | None]:
    """What a trial runs: ``experiment``, or ``program`` and/or ``command`` (or nothing: a notice)."""
    experiment = ctx.string(d, "experiment", prefix)
    program = ctx.string(d, "program", prefix)
    command = parse_command(ctx, d, prefix, program)
    if experiment is not None:
        if program is not None or command is not None:
            ctx.fail(
                "give either 'experiment' or 'program'/'command', not both",
                d.line_of("experiment"),
                join_key(prefix, "experiment"),
                hint="experiment runs 'python -m experiments.NAME RUN_DIR'; program/command run your own script",
            )
        check_experiment(ctx, experiment, d.line_of("experiment"), join_key(prefix, "experiment"))
    elif program is None and command is None:
        ctx.notice(
            f"{ctx.file}:{d.line}: sweep '{name}' has no experiment, program or command: it loads, but cannot be "
            "launched (W&B runs such a sweep with wandb.agent(function=…))"
        )
    return experiment, program, command


def _parse_options(
    ctx: Ctx, d: LineDict, prefix: str, defaults: Defaults, experiment: str | None, names: dict[str, Param]
) -> dict[str, Any]:
    """The SweepSpec fields of how trials run: caps, retries, timeouts, folds and the sweep it starts from."""
    run_cap = ctx.integer(d, "run_cap", prefix, minimum=1)
    retries = ctx.integer(d, "retries", prefix, minimum=0)
    on_oom = d.get("on_oom")
    if on_oom is not None and on_oom not in ("retry", "halve_batch_size"):
        ctx.fail(
            f"on_oom must be 'retry' or 'halve_batch_size', not {on_oom!r}",
            d.line_of("on_oom"),
            join_key(prefix, "on_oom"),
            hint="halve_batch_size retries a CUDA out-of-memory crash with half the batch_size parameter",
        )
    timeout_s = _parse_timeout(ctx, d, prefix)
    retry_on_timeout = d.get("retry_on_timeout", False)
    if not isinstance(retry_on_timeout, bool):
        ctx.fail(
            f"must be true or false, not {kind_of(retry_on_timeout)} {retry_on_timeout!r}",
            d.line_of("retry_on_timeout"),
            join_key(prefix, "retry_on_timeout"),
        )
    description = d.get("description")
    if description is not None and not isinstance(description, str):
        description = str(description)
    data_root = ctx.string(d, "data_root", prefix)
    folds = _parse_folds(ctx, d, prefix, experiment, names)
    depends_on = ctx.string(d, "depends_on", prefix)
    init_from = parse_init_from(ctx, d, prefix, depends_on, experiment)
    return {
        "run_cap": run_cap,
        "retries": defaults.retries if retries is None else retries,
        "description": description,
        "data_root": data_root if data_root is not None else defaults.data_root,
        "folds": folds,
        "depends_on": depends_on,
        "init_from": init_from,
        "on_oom": on_oom or "retry",
        "timeout_s": timeout_s,
        "retry_on_timeout": retry_on_timeout,
    }


_DURATION = re.compile(
    r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)?\s*"
)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float | None:
    """``90``, ``90s``, ``30m``, ``2h``, ``1.5h``, ``1d`` → seconds (> 0, finite); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        num = as_number(value) if isinstance(value, str) else None
        if num is not None:
            seconds = float(num)
        else:
            match = _DURATION.fullmatch(str(value)) if isinstance(value, str) else None
            if match is None:
                return None
            seconds = float(match.group(1)) * _UNIT_S[(match.group(2) or "s")[0]]
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _parse_timeout(ctx: Ctx, d: LineDict, prefix: str) -> float | None:
    """``timeout: 2h``: a trial running longer is stopped and FAILED with reason 'timeout'."""
    if "timeout" not in d or d["timeout"] is None:
        return None
    seconds = parse_duration(d["timeout"])
    if seconds is None:
        ctx.fail(
            f"must be a positive duration, not {kind_of(d['timeout'])} {d['timeout']!r}",
            d.line_of("timeout"),
            join_key(prefix, "timeout"),
            hint="seconds (5400) or a number with a unit: 90s, 30m, 2h, 1d",
        )
    return seconds


def _parse_folds(
    ctx: Ctx, d: LineDict, prefix: str, experiment: str | None, names: dict[str, Param]
) -> tuple[int, ...] | None:
    """``folds: [0, 1, 2, 3, 4]``: each trial runs once per fold (the Adience protocol), in parallel.

    Each job gets the parameter ``fold`` (a program gets ``--fold=K``)."""
    if "folds" not in d or d["folds"] is None:
        return None
    key, line = join_key(prefix, "folds"), d.line_of("folds")
    raw = d["folds"]
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(f, int) and not isinstance(f, bool) for f in raw)
    ):
        ctx.fail(
            "'folds' must be a non-empty list of fold numbers", line, key, hint="e.g. folds: [0, 1, 2, 3, 4]"
        )
    if len(set(raw)) != len(raw):
        ctx.fail("a fold is listed twice", line, key)
    if "fold" in names:
        ctx.fail(
            "'fold' is both a parameter and set by 'folds'",
            names["fold"].line,
            join_key(prefix, "parameters.fold"),
            hint="remove the 'fold' parameter: 'folds' runs every fold of each configuration",
        )
    return tuple(int(f) for f in raw)


def _parse_seeds(
    ctx: Ctx, d: LineDict, prefix: str, method: str, names: dict[str, Param]
) -> tuple[int, ...] | None:
    """``seeds: [1, 2, 3]``: each grid point runs once per seed (parameter ``seed``); without it every trial of
    a sweep has the same seed (42), so grid points differ only in the swept values."""
    if "seeds" not in d or d["seeds"] is None:
        return None
    key, line = join_key(prefix, "seeds"), d.line_of("seeds")
    raw = d["seeds"]
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw)
    ):
        ctx.fail(
            "'seeds' must be a non-empty list of seeds (integers >= 0)",
            line,
            key,
            hint="e.g. seeds: [1, 2, 3]",
        )
    if len(set(raw)) != len(raw):
        ctx.fail("a seed is listed twice", line, key)
    if method != "grid":
        ctx.fail(
            f"'seeds' repeats every point of a grid; this sweep has method: {method}",
            line,
            key,
            hint="use method: grid, or sweep the parameter 'seed' itself",
        )
    if "seed" in names:
        ctx.fail(
            "'seed' is both a parameter and set by 'seeds'",
            names["seed"].line,
            join_key(prefix, "parameters.seed"),
            hint="remove the 'seed' parameter: 'seeds' runs every configuration once per seed",
        )
    return tuple(int(v) for v in raw)
