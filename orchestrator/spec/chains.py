"""Sweeps that start from others: ``depends_on`` (no cycles, an existing sweep) and ``init_from`` (the
parent's checkpoints never trained on the child's test or validation images)."""

from __future__ import annotations

import json

from orchestrator.spec.context import Ctx, join_key
from orchestrator.spec.model import SweepSpec
from orchestrator.spec.params import Param, ParamSpace
from orchestrator.spec.yamlio import LineDict, LineList


def check_cycles(ctx: Ctx, sweeps: list[SweepSpec]) -> None:
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


def parse_init_from(
    ctx: Ctx, d: LineDict, prefix: str, depends_on: str | None, experiment: str | None
) -> int | None:
    """``init_from: best`` → 1; ``init_from: {top: k}`` → k (fine-tune from each of the k best checkpoints).

    Each trial gets the parameter ``init_checkpoint`` (the parent trial's ``checkpoint_best.pt``)."""
    if "init_from" not in d or d["init_from"] is None:
        return None
    key, line = join_key(prefix, "init_from"), d.line_of("init_from")
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


def check_chain(ctx: Ctx, child: SweepSpec, parent: SweepSpec, line: int | None, key: str) -> None:
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


def with_init_rank(space: ParamSpace, k: int, line: int | None) -> ParamSpace:
    """Add ``init_rank`` (1..k): which of the k best checkpoints of the parent sweep a trial starts from."""
    extra = Param(path=("init_rank",), kind="categorical", line=line, values=tuple(range(1, k + 1)))
    return ParamSpace([*space.params, extra], file=space.file, key=space.key)


def check_dependencies(ctx: Ctx, sweeps: list[SweepSpec], items: LineList | None) -> None:
    """Each ``depends_on`` names another sweep of the file; each ``init_from`` passes :func:`check_chain`.

    ``items``: the ``sweeps:`` list the sweeps came from (None for a plain W&B sweep file)."""
    seen = {sweep.name: sweep for sweep in sweeps}
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
            item = items[i] if items is not None else None
            line = item.line_of("init_from") if isinstance(item, LineDict) else None
            check_chain(ctx, sweep, seen[sweep.depends_on], line or sweep.line, f"sweeps[{i}].init_from")
