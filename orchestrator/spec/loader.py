"""``load_sweeps(path)``: read a sweeps file (ours or a plain W&B sweep file) and validate all of it.

Every problem is a :class:`orchestrator.trial.errors.SpecError` naming the file, the line and the key path
(``sweeps[0].parameters.lr.min``; list indices count from 0) with a hint saying what to do next. Keys that only
matter to W&B's cloud (``controller``, ``job``, ``image_uri`` …) are accepted and reported in
``SweepFile.notices``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import re
import shlex
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from orchestrator.leases import MIN_LEASE_S
from orchestrator.spec.model import (
    PRUNER_TYPES,
    WANDB_MODES,
    Defaults,
    HostSpec,
    MetricSpec,
    PrunerSpec,
    SlurmSpec,
    SweepFile,
    SweepSpec,
)
from orchestrator.spec.params import DISTRIBUTIONS, Param, ParamSpace
from orchestrator.spec.yamlio import LineDict, LineList, NumStr, as_number, load_yaml, plain
from orchestrator.trial.errors import SpecError
from orchestrator.trial.rundir import safe_name

__all__ = ["load_sweeps", "EXPERIMENTS_DIR", "COMMAND_MACROS", "optuna_pruner_class"]

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"

FILE_KEYS = ("defaults", "sweeps")
DEFAULT_KEYS = (
    "project",
    "entity",
    "storage",
    "runs_dir",
    "slots",
    "wandb",
    "retries",
    "data_root",
    "hosts",
    "lease",
    "slurm",
)
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
METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
PARAM_KEYS = (
    "distribution",
    "value",
    "values",
    "probabilities",
    "min",
    "max",
    "q",
    "mu",
    "sigma",
    "a",
    "b",
    "parameters",
)
METHODS = ("grid", "random", "bayes")
#: whole-item command macros (W&B agent); ``${envvar:NAME}`` may also appear inside an item
COMMAND_MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_no_equals",
    "args_json",
    "args_json_file",
)
ENVVAR = re.compile(r"\$\{envvar:([A-Za-z_][A-Za-z0-9_]*)\}")
_MACRO = re.compile(r"^\$\{([^}]*)\}$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SLOTS = re.compile(r"^(auto|hosts|slurm|cpu:[1-9]\d*|gpu:(all|\d+)(x[1-9]\d*)?(,\d+(x[1-9]\d*)?)*)$")
_MAX_GRID_AXIS = 1_000_000

# distribution -> the settings it takes (besides ``distribution``)
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values", "probabilities"),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform_values": ("min", "max"),
    "log_uniform": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "inv_log_uniform": ("min", "max"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
    "beta": ("a", "b"),
    "q_beta": ("a", "b", "q"),
}
_DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0, "a": 1.0, "b": 1.0}
_DEPRECATED = {
    "log_uniform": "log_uniform_values",
    "q_log_uniform": "q_log_uniform_values",
    "inv_log_uniform": "inv_log_uniform_values",
}


def optuna_pruner_class(kind: str) -> Callable[..., Any]:
    """The ``optuna.pruners`` class of a ``pruner: {type: …}``."""
    from optuna import pruners

    return {
        "none": pruners.NopPruner,
        "median": pruners.MedianPruner,
        "percentile": pruners.PercentilePruner,
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "hyperband": pruners.HyperbandPruner,
        "threshold": pruners.ThresholdPruner,
    }[kind]


def _closest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _key(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


class _Ctx:
    """Where we are (file) and what we noticed."""

    def __init__(self, file: Path, experiments_dir: Path) -> None:
        self.file = file
        self.experiments_dir = experiments_dir
        self.notices: list[str] = []

    def fail(self, message: str, line: int | None, key: str | None, hint: str | None = None) -> NoReturn:
        raise SpecError(message, file=self.file, line=line, key=key or None, hint=hint)

    def notice(self, text: str) -> None:
        self.notices.append(text)

    # -- typed readers -----------------------------------------------------------------------------------
    def mapping(self, value: Any, line: int | None, key: str, what: str) -> LineDict:
        if not isinstance(value, LineDict):
            self.fail(f"{what} must be a mapping (key: value lines), not {_kind(value)}", line, key)
        return value

    def unknown_keys(
        self, d: LineDict, allowed: tuple[str, ...], prefix: str, what: str, ignored: tuple[str, ...] = ()
    ) -> None:
        for k in d:
            if not isinstance(k, str):
                self.fail(f"keys must be text, not {_kind(k)} {k!r}", d.line_of(k), _key(prefix, k))
            if k in allowed or k in ignored:
                continue
            best = _closest(k, allowed)
            hint = f"did you mean '{best}'?" if best else f"valid keys: {', '.join(allowed)}"
            self.fail(f"unknown key '{k}' in {what}", d.line_of(k), _key(prefix, k), hint)

    def string(self, d: LineDict, k: str, prefix: str, *, optional: bool = True) -> str | None:
        if k not in d or d[k] is None:
            if optional:
                return None
            self.fail(f"'{k}' is required", d.line, _key(prefix, k))
        value = d[k]
        if not isinstance(value, str):
            self.fail(
                f"must be text, not {_kind(value)} {value!r}",
                d.line_of(k),
                _key(prefix, k),
                hint=f'quote it: {k}: "{value}"',
            )
        return str(value)

    def integer(self, d: LineDict, k: str, prefix: str, *, minimum: int) -> int | None:
        if k not in d or d[k] is None:
            return None
        value = d[k]
        num = as_number(value)
        if num is None or (isinstance(num, float) and not num.is_integer()):
            self.fail(f"must be a whole number, not {_kind(value)} {value!r}", d.line_of(k), _key(prefix, k))
        if num < minimum:
            self.fail(f"must be at least {minimum}, not {num}", d.line_of(k), _key(prefix, k))
        return int(num)

    def number(self, d: LineDict, k: str, prefix: str) -> int | float | None:
        if k not in d or d[k] is None:
            return None
        value = d[k]
        num = as_number(value)
        if num is None:
            self.fail(f"must be a number, not {_kind(value)} {value!r}", d.line_of(k), _key(prefix, k))
        if not math.isfinite(num):
            self.fail(f"must be a finite number, not {num!r}", d.line_of(k), _key(prefix, k))
        return num


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _coerce(value: Any) -> Any:
    """Plain data with unquoted number-like strings (``1e-4``) read as numbers."""
    if isinstance(value, NumStr):
        num = as_number(value)
        return num if num is not None else str(value)
    if isinstance(value, dict):
        return {plain(k): _coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
def load_sweeps(path: str | Path, *, experiments_dir: str | Path | None = None) -> SweepFile:
    """Read and validate a sweeps file: ours (``defaults:`` + ``sweeps:``) or one plain W&B sweep.

    ``experiments_dir`` is where ``experiment: NAME`` must find ``NAME.py`` (default: the project's
    ``experiments/``). Raises SpecError on the first problem.
    """
    path = Path(path)
    ctx = _Ctx(path, Path(experiments_dir) if experiments_dir is not None else EXPERIMENTS_DIR)
    data = load_yaml(path)
    if data is None:
        ctx.fail(
            "the file is empty",
            None,
            None,
            hint="write a W&B sweep (method:, parameters:) or a 'sweeps:' list",
        )
    if not isinstance(data, LineDict):
        ctx.fail(f"the top level must be a mapping, not {_kind(data)}", getattr(data, "line", 1), None)

    if "sweeps" in data or "defaults" in data:
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
        defaults = _parse_defaults(ctx, data.get("defaults"), data.line_of("defaults"))
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
                f"'sweeps' must be a non-empty list, not {_kind(items) if items != [] else 'an empty list'}",
                data.line_of("sweeps"),
                "sweeps",
            )
        sweeps = [
            _parse_sweep(ctx, item, items.line_of(i), f"sweeps[{i}]", defaults, default_name=None)
            for i, item in enumerate(items)
        ]
    else:
        defaults = Defaults()
        sweeps = [_parse_sweep(ctx, data, data.line or 1, "", defaults, default_name=path.stem)]

    seen: dict[str, SweepSpec] = {}
    safe_seen: dict[str, SweepSpec] = {}
    for i, sweep in enumerate(sweeps):
        key = f"sweeps[{i}].name" if len(sweeps) > 1 or "sweeps" in data else "name"
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
    _check_cycles(ctx, sweeps)
    for i, sweep in enumerate(sweeps):
        if sweep.depends_on is not None and sweep.depends_on not in seen:
            ctx.fail(
                f"depends_on: no sweep named '{sweep.depends_on}' in this file",
                sweep.line,
                f"sweeps[{i}].depends_on",
                hint="sweeps here: " + ", ".join(seen),
            )
        if sweep.depends_on == sweep.name:
            ctx.fail("a sweep cannot depend on itself", sweep.line, f"sweeps[{i}].depends_on")
        if sweep.init_from is not None and sweep.depends_on is not None:
            item = items[i] if "sweeps" in data and isinstance(items, LineList) else None
            line = item.line_of("init_from") if isinstance(item, LineDict) else None
            _check_chain(ctx, sweep, seen[sweep.depends_on], line or sweep.line, f"sweeps[{i}].init_from")
    return SweepFile(path=path, defaults=defaults, sweeps=sweeps, notices=ctx.notices)


#: a sweep name becomes a study name and (through rundir.safe_name, which also replaces '/') a folder name:
#: at most this long, no control characters. '/' is allowed: real W&B sweep names hold it
MAX_NAME = 100


def _check_name(ctx: _Ctx, name: str | None, line: int | None, key: str) -> None:
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


def _check_cycles(ctx: _Ctx, sweeps: list[SweepSpec]) -> None:
    """``depends_on`` must not loop (a → b → a, or a → a): such sweeps would wait for each other forever."""
    by_name = {s.name: (i, s) for i, s in enumerate(sweeps)}
    for i, sweep in enumerate(sweeps):
        chain = [sweep.name]
        current = sweep
        while current.depends_on is not None and current.depends_on in by_name:
            nxt = current.depends_on
            if nxt == sweep.name:
                ctx.fail(
                    "depends_on forms a cycle: " + " → ".join([*chain, nxt])
                    if len(chain) > 1
                    else "a sweep cannot depend on itself",
                    sweep.line,
                    f"sweeps[{i}].depends_on",
                    hint="a sweep can only start from one that finishes first: remove one depends_on",
                )
            if nxt in chain:
                break  # a cycle further up: reported for the sweeps on it
            chain.append(nxt)
            current = by_name[nxt][1]


def _finite(ctx: _Ctx, value: Any, line: int | None, key: str) -> Any:
    """A parameter value with no NaN or infinity anywhere inside (a trial could not use it, a grid could not
    tell its points apart)."""
    if isinstance(value, float) and not math.isfinite(value):
        ctx.fail(
            f"{value!r} is not a usable value",
            line,
            key,
            hint="NaN and infinity cannot be parameter values; give a number (or quote it to pass the text)",
        )
    if isinstance(value, dict):
        for v in value.values():
            _finite(ctx, v, line, key)
    if isinstance(value, list | tuple):
        for v in value:
            _finite(ctx, v, line, key)
    return value


def _parse_defaults(ctx: _Ctx, raw: Any, line: int | None) -> Defaults:
    if raw is None:
        return Defaults()
    d = ctx.mapping(raw, line, "defaults", "'defaults'")
    ctx.unknown_keys(d, DEFAULT_KEYS, "defaults", "'defaults'")
    base = Defaults()
    slots = ctx.string(d, "slots", "defaults") or base.slots
    if not _SLOTS.match(slots):
        ctx.fail(
            f"invalid slots '{slots}'",
            d.line_of("slots"),
            "defaults.slots",
            hint="use auto, cpu:N, gpu:0,1 (GPU ids), gpu:0x2 (2 trials on GPU 0), hosts (only defaults.hosts) "
            "or slurm (jobs on a Slurm cluster, see defaults.slurm)",
        )
    storage = ctx.string(d, "storage", "defaults") or base.storage
    runs_dir = ctx.string(d, "runs_dir", "defaults") or base.runs_dir
    wandb = _wandb_mode(ctx, d, "defaults") or base.wandb
    retries = ctx.integer(d, "retries", "defaults", minimum=0)
    lease = ctx.number(d, "lease", "defaults")
    if lease is not None and lease < MIN_LEASE_S:
        ctx.fail(
            f"must be at least {MIN_LEASE_S:g} (seconds), not {lease}",
            d.line_of("lease"),
            "defaults.lease",
            hint="the seconds a controller sharing the storage may stay silent before another takes its "
            "trials over; 30 is the default",
        )
    return Defaults(
        project=ctx.string(d, "project", "defaults"),
        entity=ctx.string(d, "entity", "defaults"),
        storage=storage,
        runs_dir=runs_dir,
        slots=slots,
        wandb=wandb,
        retries=base.retries if retries is None else retries,
        data_root=ctx.string(d, "data_root", "defaults"),
        hosts=_parse_hosts(ctx, d) if d.get("hosts") is not None else (),
        lease=base.lease if lease is None else float(lease),
        slurm=_parse_slurm(ctx, d, "defaults", None) if d.get("slurm") is not None else None,
    )


def _wandb_mode(ctx: _Ctx, d: LineDict, prefix: str) -> str | None:
    if "wandb" not in d or d["wandb"] is None:
        return None
    value = d["wandb"]
    if not isinstance(value, str) or value not in WANDB_MODES:
        hint = "use one of: " + ", ".join(WANDB_MODES)
        if isinstance(value, bool):
            hint += " (YAML reads off/no/false as a boolean: write 'disabled')"
        ctx.fail(f"invalid wandb mode {value!r}", d.line_of("wandb"), _key(prefix, "wandb"), hint)
    return value


def _parse_sweep(
    ctx: _Ctx, raw: Any, line: int | None, prefix: str, defaults: Defaults, default_name: str | None
) -> SweepSpec:
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
            _key(prefix, "metrics"),
            hint="optimise one metric with 'metric: {name: …, goal: …}'",
        )
    for k in d:
        if k in WANDB_ONLY_KEYS:
            ctx.notice(f"{ctx.file}:{d.line_of(k)}: {_key(prefix, k)}: W&B-only key, ignored by orchestrate")

    name = ctx.string(d, "name", prefix, optional=default_name is not None)
    if name is None:
        name = default_name
    _check_name(ctx, name, d.line_of("name"), _key(prefix, "name"))
    assert name is not None

    # method
    if "method" not in d:
        ctx.fail(
            "'method' is required",
            d.line,
            _key(prefix, "method"),
            hint="add 'method: grid', 'random' or 'bayes'",
        )
    method = d["method"]
    if method not in METHODS or not isinstance(method, str):
        best = _closest(str(method), METHODS)
        hint = f"did you mean '{best}'?" if best else "use grid, random or bayes"
        if method == "custom":
            hint = "method: custom (W&B's custom schedulers) is not supported; use grid, random or bayes"
        ctx.fail(f"unknown method {method!r}", d.line_of("method"), _key(prefix, "method"), hint)

    metric = _parse_metric(ctx, d, prefix)
    if method == "bayes" and metric is None:
        ctx.fail(
            "method: bayes needs a metric to optimise",
            d.line_of("method"),
            _key(prefix, "metric"),
            hint="add 'metric: {name: val/loss, goal: minimize}', or use method: random",
        )

    pruner = _parse_pruner(ctx, d, prefix)
    if pruner is not None and metric is None:
        which = pruner.source
        ctx.fail(
            f"'{which}' needs a metric to watch",
            d.line_of(which),
            _key(prefix, "metric"),
            hint="add 'metric: {name: …, goal: …}'",
        )

    if "parameters" not in d or d["parameters"] is None:
        ctx.fail(
            "'parameters' is required",
            d.line_of("parameters"),
            _key(prefix, "parameters"),
            hint="add at least one parameter, e.g. 'parameters: {lr: {values: [0.01, 0.001]}}'",
        )
    pkey = _key(prefix, "parameters")
    params = _parse_params(ctx, d["parameters"], d.line_of("parameters"), pkey, ())
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

    experiment = ctx.string(d, "experiment", prefix)
    program = ctx.string(d, "program", prefix)
    command = _parse_command(ctx, d, prefix, program)
    if experiment is not None:
        if program is not None or command is not None:
            ctx.fail(
                "give either 'experiment' or 'program'/'command', not both",
                d.line_of("experiment"),
                _key(prefix, "experiment"),
                hint="experiment runs 'python -m experiments.NAME RUN_DIR'; program/command run your own script",
            )
        _check_experiment(ctx, experiment, d.line_of("experiment"), _key(prefix, "experiment"))
    elif program is None and command is None:
        ctx.notice(
            f"{ctx.file}:{d.line}: sweep '{name}' has no experiment, program or command: it loads, but cannot be "
            "launched (W&B runs such a sweep with wandb.agent(function=…))"
        )

    run_cap = ctx.integer(d, "run_cap", prefix, minimum=1)
    retries = ctx.integer(d, "retries", prefix, minimum=0)
    on_oom = d.get("on_oom")
    if on_oom is not None and on_oom not in ("retry", "halve_batch_size"):
        ctx.fail(
            f"on_oom must be 'retry' or 'halve_batch_size', not {on_oom!r}",
            d.line_of("on_oom"),
            _key(prefix, "on_oom"),
            hint="halve_batch_size retries a CUDA out-of-memory crash with half the batch_size parameter",
        )
    timeout_s = _parse_timeout(ctx, d, prefix)
    retry_on_timeout = d.get("retry_on_timeout", False)
    if not isinstance(retry_on_timeout, bool):
        ctx.fail(
            f"must be true or false, not {_kind(retry_on_timeout)} {retry_on_timeout!r}",
            d.line_of("retry_on_timeout"),
            _key(prefix, "retry_on_timeout"),
        )
    description = d.get("description")
    if description is not None and not isinstance(description, str):
        description = str(description)
    data_root = ctx.string(d, "data_root", prefix)
    folds = _parse_folds(ctx, d, prefix, experiment, names)
    depends_on = ctx.string(d, "depends_on", prefix)
    init_from = _parse_init_from(ctx, d, prefix, depends_on, experiment)
    if init_from is not None and init_from > 1:
        space = _with_init_rank(space, init_from, d.line_of("init_from"))
    return SweepSpec(
        name=name,
        method=method,  # type: ignore[arg-type]
        metric=metric,
        parameters=space,
        experiment=experiment,
        program=program,
        command=command,
        pruner=pruner,
        run_cap=run_cap,
        retries=defaults.retries if retries is None else retries,
        project=ctx.string(d, "project", prefix) or defaults.project,
        entity=ctx.string(d, "entity", prefix) or defaults.entity,
        description=description,
        file=str(ctx.file),
        line=d.line,
        wandb=_wandb_mode(ctx, d, prefix) or defaults.wandb,
        data_root=data_root if data_root is not None else defaults.data_root,
        folds=folds,
        depends_on=depends_on,
        init_from=init_from,
        key=prefix or None,
        on_oom=on_oom or "retry",
        slurm=(
            _parse_slurm(ctx, d, prefix, defaults.slurm) if d.get("slurm") is not None else defaults.slurm
        ),
        timeout_s=timeout_s,
        retry_on_timeout=retry_on_timeout,
    )


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


def _parse_timeout(ctx: _Ctx, d: LineDict, prefix: str) -> float | None:
    """``timeout: 2h``: a trial running longer is stopped and FAILED with reason 'timeout'."""
    if "timeout" not in d or d["timeout"] is None:
        return None
    seconds = parse_duration(d["timeout"])
    if seconds is None:
        ctx.fail(
            f"must be a positive duration, not {_kind(d['timeout'])} {d['timeout']!r}",
            d.line_of("timeout"),
            _key(prefix, "timeout"),
            hint="seconds (5400) or a number with a unit: 90s, 30m, 2h, 1d",
        )
    return seconds


def _parse_folds(
    ctx: _Ctx, d: LineDict, prefix: str, experiment: str | None, names: dict[str, Param]
) -> tuple[int, ...] | None:
    """``folds: [0, 1, 2, 3, 4]``: each trial runs once per fold (the Adience protocol), in parallel.

    Each job gets the parameter ``fold`` (a program gets ``--fold=K``)."""
    if "folds" not in d or d["folds"] is None:
        return None
    key, line = _key(prefix, "folds"), d.line_of("folds")
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
            _key(prefix, "parameters.fold"),
            hint="remove the 'fold' parameter: 'folds' runs every fold of each configuration",
        )
    return tuple(int(f) for f in raw)


def _parse_seeds(
    ctx: _Ctx, d: LineDict, prefix: str, method: str, names: dict[str, Param]
) -> tuple[int, ...] | None:
    """``seeds: [1, 2, 3]``: each grid point runs once per seed (parameter ``seed``); without it every trial of
    a sweep has the same seed (42), so grid points differ only in the swept values."""
    if "seeds" not in d or d["seeds"] is None:
        return None
    key, line = _key(prefix, "seeds"), d.line_of("seeds")
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
            _key(prefix, "parameters.seed"),
            hint="remove the 'seed' parameter: 'seeds' runs every configuration once per seed",
        )
    return tuple(int(v) for v in raw)


def _parse_init_from(
    ctx: _Ctx, d: LineDict, prefix: str, depends_on: str | None, experiment: str | None
) -> int | None:
    """``init_from: best`` → 1; ``init_from: {top: k}`` → k (fine-tune from each of the k best checkpoints).

    Each trial gets the parameter ``init_checkpoint`` (the parent trial's ``checkpoint_best.pt``)."""
    if "init_from" not in d or d["init_from"] is None:
        return None
    key, line = _key(prefix, "init_from"), d.line_of("init_from")
    if depends_on is None:
        ctx.fail(
            "'init_from' needs 'depends_on: <sweep>'",
            line,
            key,
            hint="name the sweep whose checkpoints to start from",
        )
    raw = d["init_from"]
    if raw == "best":
        return 1
    if isinstance(raw, dict) and set(raw) == {"top"} and isinstance(raw["top"], int) and raw["top"] >= 1:
        return int(raw["top"])
    ctx.fail("'init_from' must be 'best' or {top: K}", line, key, hint="e.g. init_from: {top: 3}")


# parameters (by their last dotted name) that decide which images a trial trains, validates and tests on
SPLIT_PARAMS = ("split_seed", "split_fractions", "val_fraction", "dataset_args")


def _param_values(spec: SweepSpec, name: str) -> tuple[str, ...] | None:
    """The values a sweep gives parameter ``name`` (matched by its last dotted name), as canonical JSON, sorted;
    None when it does not set it (the experiment's default, the same in every sweep); ``("*",)`` for a
    distribution (any value)."""
    for p in spec.parameters:
        if p.path[-1] == name:
            if p.kind in ("constant", "categorical"):
                return tuple(sorted({json.dumps(v, sort_keys=True, default=str) for v in p.values}))
            return ("*",)
    return None


def _check_chain(ctx: _Ctx, child: SweepSpec, parent: SweepSpec, line: int | None, key: str) -> None:
    """``init_from`` must hand every job a checkpoint that never trained on that job's test (or validation)
    images: the same split of the same data, and for ``folds:`` the parent's run of the same fold.

    Stage 2 fold k starts from stage 1 fold k (``scheduler.SweepRunner.init_checkpoint``), so the child's folds
    must be among the parent's. A parent that trains on another dataset (both sweeps set ``dataset``, to values
    they do not share) cannot have seen the child's test subjects and is always accepted."""
    where = f"init_from: sweep {child.name!r} starts from the checkpoints of {parent.name!r}"
    pdata, cdata = _param_values(parent, "dataset"), _param_values(child, "dataset")
    if pdata is not None and cdata is not None and "*" not in pdata + cdata and not set(pdata) & set(cdata):
        return  # different datasets: no subject in common
    same = "the same 'folds: [...]' list in both sweeps (stage 2 fold k then starts from stage 1 fold k)"
    for name in SPLIT_PARAMS:
        pv, cv = _param_values(parent, name), _param_values(child, name)
        if pv != cv:
            ctx.fail(
                f"{where}, but the two split the data differently ({name}: {_shown(pv)} vs {_shown(cv)}): the "
                "parent's checkpoint may have trained on the child's test or validation images",
                line,
                key,
                hint=f"give both sweeps the same {name}",
            )
    pfold, cfold = _param_values(parent, "fold"), _param_values(child, "fold")
    if child.folds:
        if not parent.folds:
            ctx.fail(
                f"{where}, which ran without folds (it held out {_shown(pfold, 'its default fold')}): its "
                f"checkpoint was trained on the subjects of the folds {list(child.folds)} tests on (test leakage)",
                line,
                key,
                hint=f"give {parent.name!r} {same}; a parent that trains on other data (e.g. CelebA) says so "
                "with its 'dataset' parameter, and is then accepted",
            )
        missing = [f for f in child.folds if f not in parent.folds]
        if missing:
            ctx.fail(
                f"{where}, which ran folds {list(parent.folds)} (no fold {', '.join(map(str, missing))}): "
                f"those folds of {child.name!r} have no parent checkpoint trained without their test subjects",
                line,
                key,
                hint=f"use {same}",
            )
        return
    if parent.folds:
        values = [json.loads(v) if v != "*" else None for v in cfold or ()]
        if cfold is None or not all(isinstance(v, int) and v in parent.folds for v in values):
            ctx.fail(
                f"{where}, which ran folds {list(parent.folds)}, but {child.name!r} runs without folds and "
                f"does not say which fold it tests on (fold: {_shown(cfold, 'not set')}), so no checkpoint of "
                "the parent is known to exclude its test subjects",
                line,
                key,
                hint=f"use {same}, or set 'fold: {{value: K}}' in {child.name!r} (it starts from fold K)",
            )
        return
    if pfold != cfold or (pfold is not None and len(pfold) > 1):
        ctx.fail(
            f"{where}, but the parent held out fold {_shown(pfold, 'default')} and the child tests on fold "
            f"{_shown(cfold, 'default')}: the parent's checkpoint may have trained on the child's test subjects",
            line,
            key,
            hint=f"use {same} instead of a 'fold' parameter",
        )


def _shown(values: tuple[str, ...] | None, absent: str = "the default") -> str:
    if values is None:
        return absent
    return values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"


def _with_init_rank(space: ParamSpace, k: int, line: int | None) -> ParamSpace:
    """Add ``init_rank`` (1..k): which of the k best checkpoints of the parent sweep a trial starts from."""
    extra = Param(path=("init_rank",), kind="categorical", line=line, values=tuple(range(1, k + 1)))
    return ParamSpace([*space.params, extra], file=space.file, key=space.key)


def _parse_metric(ctx: _Ctx, d: LineDict, prefix: str) -> MetricSpec | None:
    if "metric" not in d or d["metric"] is None:
        return None
    key = _key(prefix, "metric")
    if isinstance(d["metric"], str):
        ctx.fail(
            "'metric' must be a mapping",
            d.line_of("metric"),
            key,
            hint=f"write 'metric: {{name: {d['metric']}, goal: minimize}}'",
        )
    m = ctx.mapping(d["metric"], d.line_of("metric"), key, "'metric'")
    ctx.unknown_keys(m, METRIC_KEYS, key, "'metric'")
    if "name" not in m or m["name"] is None:
        ctx.fail("the metric needs a 'name'", m.line, _key(key, "name"))
    mname = m["name"]
    if not isinstance(mname, str):
        if isinstance(mname, bool | dict | list):
            ctx.fail(f"must be text, not {_kind(mname)}", m.line_of("name"), _key(key, "name"))
        mname = str(mname)
    goal = m.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        ctx.notice(
            f"{ctx.file}:{m.line_of('goal')}: {_key(key, 'goal')}: {goal!r} is not minimize or maximize; "
            "using minimize, as W&B does"
        )
        goal = "minimize"
    for k in ("impute", "impute_while_running"):
        if k in m:
            ctx.notice(f"{ctx.file}:{m.line_of(k)}: {_key(key, k)}: W&B-only setting, ignored by orchestrate")
    target = ctx.number(m, "target", key)
    return MetricSpec(name=str(mname), goal=goal, target=None if target is None else float(target))


def _parse_pruner(ctx: _Ctx, d: LineDict, prefix: str) -> PrunerSpec | None:
    has_et = "early_terminate" in d and d["early_terminate"] is not None
    has_pr = "pruner" in d and d["pruner"] is not None
    if has_et and has_pr:
        ctx.fail(
            "give either 'early_terminate' (W&B hyperband) or 'pruner' (Optuna), not both",
            d.line_of("pruner"),
            _key(prefix, "pruner"),
        )
    if has_et:
        key = _key(prefix, "early_terminate")
        e = ctx.mapping(d["early_terminate"], d.line_of("early_terminate"), key, "'early_terminate'")
        ctx.unknown_keys(e, HYPERBAND_KEYS, key, "'early_terminate'")
        if e.get("type") != "hyperband":
            ctx.fail(
                f"unknown early_terminate type {e.get('type')!r}",
                e.line_of("type"),
                _key(key, "type"),
                hint="W&B knows only 'type: hyperband'; for Optuna's pruners use 'pruner: {type: median, …}'",
            )
        options: dict[str, Any] = {}
        for k in ("min_iter", "max_iter"):
            v = ctx.integer(e, k, key, minimum=1)
            if v is not None:
                options[k] = v
        s = ctx.number(e, "s", key)
        if s is not None:
            if s < 0:
                ctx.fail(f"must be at least 0, not {s}", e.line_of("s"), _key(key, "s"))
            options["s"] = s
        eta = ctx.number(e, "eta", key)
        if eta is not None and eta <= 1:
            ctx.fail(f"must be greater than 1, not {eta}", e.line_of("eta"), _key(key, "eta"))
        options["eta"] = 3 if eta is None else eta
        strict = e.get("strict", True)
        if not isinstance(strict, bool):
            ctx.fail(f"must be true or false, not {strict!r}", e.line_of("strict"), _key(key, "strict"))
        options["strict"] = strict
        if "min_iter" not in options and not ("max_iter" in options and "s" in options):
            ctx.fail(
                "hyperband needs 'min_iter', or both 'max_iter' and 's'",
                e.line,
                key,
                hint="e.g. 'early_terminate: {type: hyperband, min_iter: 3}'",
            )
        return PrunerSpec("hyperband", options, "early_terminate")
    if has_pr:
        key = _key(prefix, "pruner")
        raw = d["pruner"]
        raw_type: Any
        if isinstance(raw, str):
            raw_type, p = raw, LineDict({"type": raw})
            p.line = d.line_of("pruner")
        else:
            p = ctx.mapping(raw, d.line_of("pruner"), key, "'pruner'")
            raw_type = p.get("type")
        if raw_type not in PRUNER_TYPES:
            best = _closest(str(raw_type), PRUNER_TYPES)
            ctx.fail(
                f"unknown pruner type {raw_type!r}",
                p.line_of("type"),
                _key(key, "type"),
                hint=f"did you mean '{best}'?" if best else "use one of: " + ", ".join(PRUNER_TYPES),
            )
        cls = optuna_pruner_class(raw_type)
        accepted = tuple(n for n in inspect.signature(cls).parameters if n != "self")
        ctx.unknown_keys(p, ("type", *accepted), key, f"the {raw_type} pruner (Optuna's argument names)")
        opts = {k: _coerce(v) for k, v in p.items() if k != "type"}
        try:
            cls(**opts)
        except (TypeError, ValueError) as exc:
            bad = next(iter(opts), "type")
            ctx.fail(f"invalid pruner settings: {exc}", p.line_of(bad), _key(key, bad))
        if raw_type == "none":
            return None
        return PrunerSpec(raw_type, opts, "pruner")
    return None


def _parse_command(ctx: _Ctx, d: LineDict, prefix: str, program: str | None) -> list[str] | None:
    if "command" not in d or d["command"] is None:
        return None
    key = _key(prefix, "command")
    raw = d["command"]
    lines: list[int | None]
    if isinstance(raw, str):
        items: list[Any] = shlex.split(raw)
        lines = [d.line_of("command")] * len(items)
        ctx.notice(f"{ctx.file}:{d.line_of('command')}: {key}: a command string was split like a shell line")
    elif isinstance(raw, LineList):
        items, lines = list(raw), [raw.line_of(i) for i in range(len(raw))]
    else:
        ctx.fail(f"'command' must be a list, not {_kind(raw)}", d.line_of("command"), key)
    if not items:
        ctx.fail("'command' is empty", d.line_of("command"), key)
    out: list[str] = []
    for i, (item, line) in enumerate(zip(items, lines, strict=True)):
        if item is None or isinstance(item, dict | list):
            ctx.fail(f"a command item must be a word, not {_kind(item)}", line, f"{key}[{i}]")
        text = str(item)
        m = _MACRO.match(text)
        if m and not m.group(1).startswith("envvar:"):
            macro = m.group(1)
            if macro not in COMMAND_MACROS:
                best = _closest(macro, COMMAND_MACROS)
                ctx.fail(
                    f"unknown command macro '{text}'",
                    line,
                    f"{key}[{i}]",
                    hint=(f"did you mean '${{{best}}}'?" if best else "macros: " + ", ".join(COMMAND_MACROS)),
                )
            if macro == "program" and program is None:
                ctx.fail(
                    "the command uses ${program} but the sweep has no 'program'",
                    line,
                    f"{key}[{i}]",
                    hint="add 'program: train.py' (the script to run)",
                )
        out.append(text)
    return out


def _check_experiment(ctx: _Ctx, name: str, line: int | None, key: str) -> None:
    folder = ctx.experiments_dir
    ok = _EXPERIMENT_NAME.match(name) is not None and (
        (folder / f"{name}.py").is_file() or (folder / name / "__main__.py").is_file()
    )
    if ok:
        return
    available = sorted(
        {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
        | {p.parent.name for p in folder.glob("*/__main__.py")}
    )
    best = _closest(name, available)
    hint = f"did you mean '{best}'? " if best else ""
    hint += f"available: {', '.join(available)}" if available else f"no experiments found in {folder}"
    ctx.fail(f"unknown experiment '{name}' (no {folder / (name + '.py')})", line, key, hint)


# -- parameters --------------------------------------------------------------------------------------------
def _parse_params(ctx: _Ctx, raw: Any, line: int | None, key: str, path: tuple[str, ...]) -> list[Param]:
    d = ctx.mapping(raw, line, key, f"'{key}'")
    if not d:
        ctx.fail("no parameters given", d.line, key, hint="add at least one parameter")
    out: list[Param] = []
    for pname in d:
        if not isinstance(pname, str):
            ctx.fail(f"parameter names must be text, not {_kind(pname)} {pname!r}", d.line_of(pname), key)
    for pname in sorted(d):  # W&B's order: sorted names, depth first
        pkey = _key(key, pname)
        pline = d.line_of(pname)
        if not _PARAM_NAME.match(pname):
            ctx.fail(
                f"invalid parameter name '{pname}'",
                pline,
                pkey,
                hint="W&B allows letters, digits, '_', '.', '-' (not starting with a digit, '.' or '-')",
            )
        body = d[pname]
        if not isinstance(body, LineDict):
            ctx.fail(
                f"a parameter must be a mapping, not {_kind(body)}",
                pline,
                pkey,
                hint=f"write '{pname}: {{value: {body!r}}}' for a constant or '{{values: [...]}}' for choices",
            )
        if "parameters" in body:
            extra = [k for k in body if k != "parameters"]
            if extra:
                ctx.fail(
                    f"'{extra[0]}' cannot sit beside nested 'parameters'",
                    body.line_of(extra[0]),
                    _key(pkey, extra[0]),
                    hint="a parameter is either a group (only 'parameters:') or a distribution",
                )
            out.extend(
                _parse_params(
                    ctx, body["parameters"], body.line_of("parameters"), f"{pkey}.parameters", (*path, pname)
                )
            )
            continue
        out.append(_parse_param(ctx, body, pline, pkey, (*path, pname)))
    return out


def _parse_param(ctx: _Ctx, body: LineDict, line: int | None, key: str, path: tuple[str, ...]) -> Param:
    ctx.unknown_keys(body, PARAM_KEYS, key, f"parameter '{path[-1]}'")
    dist: Any = body.get("distribution")
    if dist is not None:
        if dist == "categorical_w_probabilities":
            dist = "categorical"
        if not isinstance(dist, str) or dist not in DISTRIBUTIONS:
            best = _closest(str(dist), DISTRIBUTIONS)
            ctx.fail(
                f"unknown distribution {dist!r}",
                body.line_of("distribution"),
                _key(key, "distribution"),
                hint=f"did you mean '{best}'?" if best else "distributions: " + ", ".join(DISTRIBUTIONS),
            )
    else:
        if "value" in body:
            dist = "constant"
        elif "values" in body:
            dist = "categorical"
        elif "min" in body or "max" in body:
            lo, hi = as_number(body.get("min")), as_number(body.get("max"))
            dist = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
        else:
            ctx.fail(
                "cannot tell the distribution",
                line,
                key,
                hint="give 'value' (constant), 'values' (choices), 'min'/'max' (a range) or 'distribution'",
            )
    allowed = _KIND_KEYS[dist]
    for k in body:
        if k != "distribution" and k not in allowed:
            ctx.fail(
                f"'{k}' does not apply to distribution {dist}",
                body.line_of(k),
                _key(key, k),
                hint=f"{dist} takes: {', '.join(allowed) or 'nothing else'}",
            )
    for k in allowed:
        if k in ("value", "probabilities", "q", "mu", "sigma", "a", "b"):
            continue
        if k not in body:
            ctx.fail(f"distribution {dist} needs '{k}'", line, _key(key, k))

    if dist == "constant":
        if "value" not in body:
            ctx.fail("distribution constant needs 'value'", line, _key(key, "value"))
        value = _finite(ctx, _coerce(body["value"]), body.line_of("value"), _key(key, "value"))
        return Param(path, "constant", values=(value,), line=line)
    if dist == "categorical":
        values = body["values"]
        if not isinstance(values, list):
            ctx.fail(
                f"'values' must be a list, not {_kind(values)}",
                body.line_of("values"),
                _key(key, "values"),
                hint=f"write 'values: [{values!r}]' or use 'value:' for a constant",
            )
        if not values:
            ctx.fail(
                "'values' is empty",
                body.line_of("values"),
                _key(key, "values"),
                hint="list at least one value",
            )
        coerced = tuple(
            _finite(
                ctx,
                _coerce(v),
                values.line_of(i) if isinstance(values, LineList) else line,
                _key(key, "values"),
            )
            for i, v in enumerate(values)
        )
        probs = None
        if "probabilities" in body:
            probs = _parse_probabilities(ctx, body, key, len(coerced))
        return Param(path, "categorical", values=coerced, probabilities=probs, line=line)

    nums: dict[str, Any] = {}
    for k in allowed:
        v = ctx.number(body, k, key)
        nums[k] = _DEFAULTS[k] if v is None else v
    if "min" in nums:
        lo, hi = nums["min"], nums["max"]
        if dist == "int_uniform":
            for k in ("min", "max"):
                if isinstance(nums[k], float) and not nums[k].is_integer():
                    ctx.fail(
                        f"int_uniform needs whole numbers, not {nums[k]}",
                        body.line_of(k),
                        _key(key, k),
                        hint="use distribution: uniform for real numbers",
                    )
                nums[k] = int(nums[k])
            lo, hi = nums["min"], nums["max"]
        if lo >= hi:
            ctx.fail(
                f"min ({lo}) must be less than max ({hi})",
                body.line_of("min"),
                _key(key, "min"),
                hint="swap them, or use 'value:' for a constant",
            )
        if dist.endswith("_values") and lo <= 0:
            ctx.fail(
                f"{dist} needs min > 0 (it is a value, not an exponent), not {lo}",
                body.line_of("min"),
                _key(key, "min"),
                hint=f"give positive values, or use {dist[: -len('_values')]} if min/max are natural-log exponents",
            )
    for k, rule in (("q", "q"), ("sigma", "sigma"), ("a", "a"), ("b", "b")):
        if k in nums and nums[k] <= 0:
            ctx.fail(f"'{rule}' must be greater than 0, not {nums[k]}", body.line_of(k), _key(key, k))
    if dist in _DEPRECATED:
        ctx.notice(
            f"{ctx.file}:{line}: {key}: {dist} takes natural-log exponents as min/max "
            f"(deprecated by W&B; {_DEPRECATED[dist]} takes the values)"
        )
    param = Param(
        path,
        dist,
        min=nums.get("min"),
        max=nums.get("max"),
        q=nums.get("q"),
        mu=nums.get("mu"),
        sigma=nums.get("sigma"),
        a=nums.get("a"),
        b=nums.get("b"),
        line=line,
    )
    if dist == "q_uniform" and (param.max - param.min) / param.q > _MAX_GRID_AXIS:  # type: ignore[operator]
        ctx.fail(
            f"q_uniform has more than {_MAX_GRID_AXIS} steps", line, _key(key, "q"), hint="use a larger q"
        )
    return param


def _parse_probabilities(ctx: _Ctx, body: LineDict, key: str, count: int) -> tuple[float, ...]:
    raw = body["probabilities"]
    pkey = _key(key, "probabilities")
    if not isinstance(raw, list):
        ctx.fail(f"'probabilities' must be a list, not {_kind(raw)}", body.line_of("probabilities"), pkey)
    probs: list[float] = []
    for i, v in enumerate(raw):
        num = as_number(v)
        if num is None or num < 0:
            ctx.fail(
                f"probabilities must be numbers ≥ 0, not {v!r}", body.line_of("probabilities"), f"{pkey}[{i}]"
            )
        probs.append(float(num))
    if len(probs) != count:
        ctx.fail(
            f"{len(probs)} probabilities for {count} values",
            body.line_of("probabilities"),
            pkey,
            hint="give one probability per value",
        )
    if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        ctx.fail(f"probabilities sum to {sum(probs):g}, not 1", body.line_of("probabilities"), pkey)
    return tuple(probs)


# ---------------------------------------------------------------------------------------------------------
HOST_KEYS = (
    "name",
    "ssh",
    "port",
    "identity_file",
    "known_hosts",
    "gpus",
    "per_gpu",
    "workdir",
    "python",
    "cost_per_hour",
    "labels",
    "data_roots",
)
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_GPUS = re.compile(r"^(auto|cpu:[1-9]\d*|\d+(,\d+)*)$")


def _parse_hosts(ctx: _Ctx, d: LineDict) -> tuple[HostSpec, ...]:
    """``defaults.hosts``: a list of hosts, or the name of a YAML file holding that list (or ``hosts:``)."""
    raw = d["hosts"]
    prefix = "defaults.hosts"
    line = d.line_of("hosts")
    if isinstance(raw, str):
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = ctx.file.parent / path
        if not path.exists():
            ctx.fail(f"no hosts file {raw!r} ({path})", line, prefix, hint="write the hosts list there")
        ctx = _Ctx(path, ctx.experiments_dir)
        raw = load_yaml(path)
        prefix, line = "hosts", getattr(raw, "line", 1)
        if isinstance(raw, LineDict):
            ctx.unknown_keys(raw, ("hosts",), "", "the hosts file")
            line = raw.line_of("hosts")
            raw = raw.get("hosts")
    if not isinstance(raw, LineList) or not raw:
        ctx.fail(
            f"hosts must be a non-empty list of hosts, not {_kind(raw)}",
            line,
            prefix,
            hint="e.g. - {name: box1, ssh: me@10.0.0.5, gpus: auto, workdir: ~/faces}",
        )
    hosts: list[HostSpec] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(raw):
        key = f"{prefix}[{i}]"
        h = ctx.mapping(item, raw.line_of(i), key, f"'{key}'")
        ctx.unknown_keys(h, HOST_KEYS, key, "a host")
        name = ctx.string(h, "name", key, optional=False) or ""
        if not _HOST_NAME.match(name):
            ctx.fail(
                f"invalid host name {name!r}", h.line_of("name"), f"{key}.name", hint="letters, digits, - _ ."
            )
        if name in seen or name == "local":
            ctx.fail(
                f"duplicate host name {name!r}" + (f" (first on line {seen[name]})" if name in seen else ""),
                h.line_of("name"),
                f"{key}.name",
                hint="give every host its own name ('local' is this machine)",
            )
        seen[name] = h.line_of("name")
        dest = ctx.string(h, "ssh", key, optional=False) or ""
        if not dest or dest.startswith("-") or any(c.isspace() for c in dest):
            ctx.fail(
                f"invalid ssh destination {dest!r}", h.line_of("ssh"), f"{key}.ssh", hint="use user@host"
            )
        port = ctx.integer(h, "port", key, minimum=1)
        if port is not None and port > 65535:
            ctx.fail(f"port {port} is out of range", h.line_of("port"), f"{key}.port")
        gpus_raw = h.get("gpus", "auto")
        gpus: str | tuple[str, ...]
        if isinstance(gpus_raw, LineList):
            if not gpus_raw or not all(
                as_number(g) is not None and float(as_number(g) or 0).is_integer() for g in gpus_raw
            ):
                ctx.fail("gpus must list GPU indices, e.g. [0, 1]", h.line_of("gpus"), f"{key}.gpus")
            gpus = tuple(str(int(as_number(g) or 0)) for g in gpus_raw)
        else:
            text = str(plain(gpus_raw)).strip().lower().replace(" ", "")
            if not _HOST_GPUS.match(text):
                ctx.fail(
                    f"invalid gpus {gpus_raw!r}",
                    h.line_of("gpus"),
                    f"{key}.gpus",
                    hint="use auto, a list of GPU indices like [0, 1], or cpu:N for a box without GPUs",
                )
            gpus = text if text == "auto" or text.startswith("cpu:") else tuple(text.split(","))
        cost = ctx.number(h, "cost_per_hour", key)
        labels = h.get("labels") or []
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            ctx.fail("labels must be a list of words", h.line_of("labels"), f"{key}.labels")
        roots = h.get("data_roots") or []
        if isinstance(roots, str):
            roots = [roots]
        if not isinstance(roots, list) or not all(isinstance(x, str) for x in roots):
            ctx.fail("data_roots must be a list of paths", h.line_of("data_roots"), f"{key}.data_roots")
        hosts.append(
            HostSpec(
                name=name,
                ssh=dest,
                port=port,
                identity_file=ctx.string(h, "identity_file", key),
                known_hosts=ctx.string(h, "known_hosts", key),
                gpus=gpus,
                per_gpu=ctx.integer(h, "per_gpu", key, minimum=1) or 1,
                workdir=ctx.string(h, "workdir", key) or "~/orchestrate",
                python=ctx.string(h, "python", key) or "python3",
                cost_per_hour=None if cost is None else float(cost),
                labels=tuple(str(x) for x in labels),
                data_roots=tuple(str(x) for x in roots),
                line=raw.line_of(i),
            )
        )
    return tuple(hosts)


# ---------------------------------------------------------------------------------------------------------
SLURM_KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "gres",
    "cpus_per_trial",
    "mem_per_trial",
    "max_concurrent",
    "srun_flags",
)
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:+-]*$")
_SLURM_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|infinite|unlimited)$"
)
_SLURM_GRES = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_-]*(:[A-Za-z0-9_.-]+)*(,[A-Za-z_][A-Za-z0-9_-]*(:[A-Za-z0-9_.-]+)*)*$"
)
_SLURM_MEM = re.compile(r"^[1-9]\d*[KMGT]?$")
#: set by orchestrate for every trial's job: a flag of srun_flags must not change them
_SLURM_OWN = ("-J", "--job-name", "--comment", "-o", "--output", "-i", "--input", "-D", "--chdir")


def _parse_slurm(ctx: _Ctx, d: LineDict, prefix: str, base: SlurmSpec | None) -> SlurmSpec:
    """``slurm:`` in ``defaults`` (``base`` None) or in a sweep (over ``base``, the defaults' block)."""
    key = _key(prefix, "slurm")
    s = ctx.mapping(d["slurm"], d.line_of("slurm"), key, f"'{key}'")
    ctx.unknown_keys(s, SLURM_KEYS, key, "'slurm'")
    out = base or SlurmSpec()
    changes: dict[str, Any] = {"line": s.line or d.line_of("slurm")}
    for k in ("partition", "account", "qos"):
        if k in s:
            value = ctx.string(s, k, key)
            if value is not None and not _SLURM_WORD.match(value):
                ctx.fail(f"invalid {k} {value!r}", s.line_of(k), f"{key}.{k}", hint="a Slurm name: no spaces")
            changes[k] = value
    if "time" in s and s["time"] is not None:
        raw = s["time"]
        text = str(plain(raw)).strip().lower()
        if isinstance(raw, bool) or not _SLURM_TIME.match(text):
            ctx.fail(
                f"invalid time limit {raw!r}",
                s.line_of("time"),
                f"{key}.time",
                hint="Slurm's --time: minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS (1-12:00:00)",
            )
        changes["time"] = text
    if "gres" in s:
        raw = s["gres"]
        if raw is None or raw is False or (isinstance(raw, str) and raw.strip().lower() in ("none", "")):
            changes["gres"] = None
        elif not isinstance(raw, str) or not _SLURM_GRES.match(raw.strip()):
            ctx.fail(
                f"invalid gres {raw!r}",
                s.line_of("gres"),
                f"{key}.gres",
                hint="per trial, e.g. gpu:1, gpu:a100:1 or gpu:1,shard:2; 'none' for CPU-only trials",
            )
        else:
            changes["gres"] = raw.strip()
    if "cpus_per_trial" in s:
        changes["cpus_per_trial"] = ctx.integer(s, "cpus_per_trial", key, minimum=1)
    if "mem_per_trial" in s and s["mem_per_trial"] is not None:
        raw = s["mem_per_trial"]
        text = str(plain(raw)).strip().upper().removesuffix("B")
        if isinstance(raw, bool) or not _SLURM_MEM.match(text):
            ctx.fail(
                f"invalid memory {raw!r}",
                s.line_of("mem_per_trial"),
                f"{key}.mem_per_trial",
                hint="Slurm's --mem: 16G, 4000M, or a number of megabytes",
            )
        changes["mem_per_trial"] = text
    if "max_concurrent" in s:
        if base is not None:
            ctx.fail(
                "max_concurrent is one number for the whole launch",
                s.line_of("max_concurrent"),
                f"{key}.max_concurrent",
                hint="set it in defaults.slurm",
            )
        n = ctx.integer(s, "max_concurrent", key, minimum=1)
        if n is not None:
            changes["max_concurrent"] = n
    if "srun_flags" in s and s["srun_flags"] is not None:
        raw = s["srun_flags"]
        flags: list[str]
        if isinstance(raw, str):
            try:
                flags = shlex.split(raw)
            except ValueError as exc:
                ctx.fail(f"cannot split srun_flags: {exc}", s.line_of("srun_flags"), f"{key}.srun_flags")
        elif isinstance(raw, LineList) and all(isinstance(x, (str, int, float)) for x in raw):
            flags = [str(plain(x)) for x in raw]
        else:
            ctx.fail(
                f"srun_flags must be a list of flags or one line, not {_kind(raw)}",
                s.line_of("srun_flags"),
                f"{key}.srun_flags",
                hint='e.g. srun_flags: ["--constraint=a100", "--exclusive"]',
            )
        for flag in flags:
            name = flag.split("=", 1)[0]
            if name in _SLURM_OWN or (name.startswith("-J") and not name.startswith("--")):
                ctx.fail(
                    f"srun_flags: {flag!r} is set by orchestrate for every trial",
                    s.line_of("srun_flags"),
                    f"{key}.srun_flags",
                    hint="job names and comments identify the launch's jobs (orphans are found by them); "
                    "remove the flag",
                )
        changes["srun_flags"] = tuple(flags)
    from dataclasses import replace

    return replace(out, **changes)
