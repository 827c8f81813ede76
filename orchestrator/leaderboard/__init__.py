"""``orchestrate leaderboard``: the tables researchers write by hand, read from the Optuna storage.

Modules: :mod:`.read` (the storage, or a W&B project → :class:`StudyData`), :mod:`.compute` (rows, repeats,
ranking, groups, filters: pure), :mod:`.render` (table, CSV, JSON, Markdown), :mod:`.board` (:func:`build`: the
tables, from the three). This package re-exports what the rest of orchestrate uses.

Reading. For an RDB storage (``sqlite:///…``, ``postgresql://…``, ``mysql://…``) the Optuna tables are read
directly in a few SQL queries (stdlib ``sqlite3`` for SQLite, SQLAlchemy otherwise): ``study.get_trials()`` builds
one FrozenTrial at a time and takes many seconds on 10,000 trials. Journal storages, and any RDB whose schema
differs from the one these queries expect, are read through the Optuna API instead. Works on any Optuna study:
orchestrate's trial attributes (``orchestrate.*``: epochs, duration, summary metrics, slot, W&B run) are used
when present, and plain Optuna fields (params, value, intermediate values, timestamps) otherwise.

Columns of a trial row: ``rank``, ``trial``, ``state``, ``value`` (Optuna's objective: the child's summary value,
e.g. the best epoch's), ``best`` (the best reported epoch value), ``last`` (the last reported value),
``best_epoch``, the parameters that vary in the sweep, secondary metrics from the child's summary (``val/*``,
``test/*``), ``epochs``, ``duration_s``, ``gpu_hours``, ``cost``, ``host`` (host/slot), ``attempt`` and ``wandb``
(``entity/project/runs/id`` when the trial has ``orchestrate.wandb_path``, else the offline run folder, else the
run id).

Repeats (the grouping rule). Parameters whose last dotted name is one of :data:`REPEAT_PARAMS` (``fold``,
``seed``, ``repeat``) are *repeats*. Trials whose other parameters are all equal form one *configuration*. When a
sweep varies a repeat parameter, the leaderboard shows one row per configuration (``--per-trial`` shows trials):
``value``, ``best``, ``last`` and each metric are the mean over the configuration's COMPLETE trials, with the
sample standard deviation (n−1) in ``<column>_std`` (rendered ``mean ± std`` in tables), ``n`` completed repeats,
``trials`` the member trial numbers; ``duration_s``, ``gpu_hours`` and ``cost`` are sums, ``epochs`` the mean.

``--group-by PARAM[,PARAM…]`` (the architecture-comparison table): per value of PARAM (per combination, for
several), the best row (configuration, or trial when there are no repeats), plus ``group_mean``, ``group_std``
and ``group_n`` over every COMPLETE trial with that value. Values of different tasks, datasets or metrics are
never averaged nor ranked against each other: when the sweep varies a :data:`STRATA` parameter (``task``,
``tasks``, ``dataset``, ``metric``) the groups include it even if not asked for, and the table says so.

``best`` is computed like ``value``: for a trial run per fold (``folds:``), the mean over its folds of each
fold's best (``orchestrate.best_value``), as ``value`` is the mean of the folds' objectives; otherwise the best
of its reported values and its final value. So ``best >= value`` for maximize (``<=`` for minimize).

A trial that runs its folds inside one process (``orchestrate.fold_values``/``fold_std``) shows
``value ± fold std`` and ``folds``.

GPU-hours: ``slot time (orchestrate.slot_s, else duration) × 1/k`` on a GPU slot shared by k trials (``gpu0.1`` …), 0 on CPU slots. Cost:
``orchestrate.cost_per_hour`` (price per GPU-hour, from a host inventory) × GPU-hours (× hours on CPU slots);
blank when the attribute is absent.
"""

from __future__ import annotations

from orchestrator.leaderboard.board import build, build_wandb
from orchestrator.leaderboard.compute import (
    NUMERIC_AGG,
    REPEAT_PARAMS,
    SECONDARY,
    STATE_ORDER,
    STRATA,
    SUMMED,
    _finite,
    aggregate,
    group,
    is_repeat,
    rank,
    rank_within,
    strata,
    trial_rows,
    varying,
)
from orchestrator.leaderboard.read import (
    ATTR_BEST_VALUE,
    ATTR_COST,
    ATTR_FOLD_STD,
    ATTR_FOLDS,
    ATTR_SLOT_S,
    ATTR_WANDB_PATH,
    StudyData,
    TrialRec,
    _flatten,
    _load_optuna,
    _num,
    load,
    load_wandb,
    study_names,
)
from orchestrator.leaderboard.render import (
    COMPACT_METRICS,
    _fmt,
    cell,
    columns,
    compact_columns,
    plain,
    print_tables,
    render,
)

__all__ = [
    "ATTR_BEST_VALUE",
    "ATTR_COST",
    "ATTR_FOLDS",
    "ATTR_FOLD_STD",
    "ATTR_SLOT_S",
    "ATTR_WANDB_PATH",
    "COMPACT_METRICS",
    "NUMERIC_AGG",
    "REPEAT_PARAMS",
    "SECONDARY",
    "STATE_ORDER",
    "STRATA",
    "SUMMED",
    "StudyData",
    "TrialRec",
    "_finite",
    "_flatten",
    "_fmt",
    "_load_optuna",
    "_num",
    "aggregate",
    "build",
    "build_wandb",
    "cell",
    "columns",
    "compact_columns",
    "group",
    "is_repeat",
    "load",
    "load_wandb",
    "plain",
    "print_tables",
    "rank",
    "rank_within",
    "render",
    "strata",
    "study_names",
    "trial_rows",
    "varying",
]
