"""``parameters:``: W&B's parameter blocks (nested groups, distributions) as :class:`Param` lists."""

from __future__ import annotations

import math
import re
from typing import Any

from orchestrator.spec.context import Ctx, closest, coerce, finite, join_key, kind_of
from orchestrator.spec.params import DISTRIBUTIONS, Param
from orchestrator.spec.yamlio import LineDict, LineList, as_number

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
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
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


def parse_params(ctx: Ctx, raw: Any, line: int | None, key: str, path: tuple[str, ...]) -> list[Param]:
    d = ctx.mapping(raw, line, key, f"'{key}'")
    if not d:
        ctx.fail("no parameters given", d.line, key, hint="add at least one parameter")
    out: list[Param] = []
    for pname in d:
        if not isinstance(pname, str):
            ctx.fail(f"parameter names must be text, not {kind_of(pname)} {pname!r}", d.line_of(pname), key)
    for pname in sorted(d):  # W&B's order: sorted names, depth first
        pkey = join_key(key, pname)
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
                f"a parameter must be a mapping, not {kind_of(body)}",
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
                    join_key(pkey, extra[0]),
                    hint="a parameter is either a group (only 'parameters:') or a distribution",
                )
            out.extend(
                parse_params(
                    ctx, body["parameters"], body.line_of("parameters"), f"{pkey}.parameters", (*path, pname)
                )
            )
            continue
        out.append(_parse_param(ctx, body, pline, pkey, (*path, pname)))
    return out


def _parse_param(ctx: Ctx, body: LineDict, line: int | None, key: str, path: tuple[str, ...]) -> Param:
    ctx.unknown_keys(body, PARAM_KEYS, key, f"parameter '{path[-1]}'")
    dist = _distribution(ctx, body, line, key)
    allowed = _KIND_KEYS[dist]
    for k in body:
        if k != "distribution" and k not in allowed:
            ctx.fail(
                f"'{k}' does not apply to distribution {dist}",
                body.line_of(k),
                join_key(key, k),
                hint=f"{dist} takes: {', '.join(allowed) or 'nothing else'}",
            )
    for k in allowed:
        if k in ("value", "probabilities", "q", "mu", "sigma", "a", "b"):
            continue
        if k not in body:
            ctx.fail(f"distribution {dist} needs '{k}'", line, join_key(key, k))
        if body[k] is None:  # `min:` with nothing after it (or `null`): needed, not optional
            ctx.fail(
                f"distribution {dist} needs a number for '{k}', not nothing (null)",
                body.line_of(k),
                join_key(key, k),
                hint=f"give {k} a number (or leave the distribution to be inferred from min and max)",
            )

    if dist == "constant":
        if "value" not in body:
            ctx.fail("distribution constant needs 'value'", line, join_key(key, "value"))
        value = finite(ctx, coerce(body["value"]), body.line_of("value"), join_key(key, "value"))
        return Param(path, "constant", values=(value,), line=line)
    if dist == "categorical":
        return _parse_categorical(ctx, body, line, key, path)
    return _parse_range(ctx, body, line, key, path, dist, allowed)


def _distribution(ctx: Ctx, body: LineDict, line: int | None, key: str) -> str:
    """The parameter's distribution: given, or told by its keys as W&B does."""
    dist: Any = body.get("distribution")
    if dist is not None:
        if dist == "categorical_w_probabilities":
            dist = "categorical"
        if not isinstance(dist, str) or dist not in DISTRIBUTIONS:
            best = closest(str(dist), DISTRIBUTIONS)
            ctx.fail(
                f"unknown distribution {dist!r}",
                body.line_of("distribution"),
                join_key(key, "distribution"),
                hint=f"did you mean '{best}'?" if best else "distributions: " + ", ".join(DISTRIBUTIONS),
            )
    elif "value" in body:
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
    return str(dist)


def _parse_categorical(ctx: Ctx, body: LineDict, line: int | None, key: str, path: tuple[str, ...]) -> Param:
    values = body["values"]
    if not isinstance(values, list):
        ctx.fail(
            f"'values' must be a list, not {kind_of(values)}",
            body.line_of("values"),
            join_key(key, "values"),
            hint=f"write 'values: [{values!r}]' or use 'value:' for a constant",
        )
    if not values:
        ctx.fail(
            "'values' is empty",
            body.line_of("values"),
            join_key(key, "values"),
            hint="list at least one value",
        )
    coerced = tuple(
        finite(
            ctx,
            coerce(v),
            values.line_of(i) if isinstance(values, LineList) else line,
            join_key(key, "values"),
        )
        for i, v in enumerate(values)
    )
    probs = None
    if "probabilities" in body:
        probs = _parse_probabilities(ctx, body, key, len(coerced))
    return Param(path, "categorical", values=coerced, probabilities=probs, line=line)


def _parse_range(
    ctx: Ctx,
    body: LineDict,
    line: int | None,
    key: str,
    path: tuple[str, ...],
    dist: str,
    allowed: tuple[str, ...],
) -> Param:
    """A numeric distribution: min/max (uniform, log, int …), mu/sigma (normal), a/b (beta), q."""
    nums = _range_numbers(ctx, body, key, dist, allowed)
    for k, rule in (("q", "q"), ("sigma", "sigma"), ("a", "a"), ("b", "b")):
        if k in nums and nums[k] <= 0:
            ctx.fail(f"'{rule}' must be greater than 0, not {nums[k]}", body.line_of(k), join_key(key, k))
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
            f"q_uniform has more than {_MAX_GRID_AXIS} steps", line, join_key(key, "q"), hint="use a larger q"
        )
    return param


def _range_numbers(ctx: Ctx, body: LineDict, key: str, dist: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The numbers of a numeric distribution (defaults filled in), min < max checked."""
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
                        join_key(key, k),
                        hint="use distribution: uniform for real numbers",
                    )
                nums[k] = int(nums[k])
            lo, hi = nums["min"], nums["max"]
        if lo >= hi:
            ctx.fail(
                f"min ({lo}) must be less than max ({hi})",
                body.line_of("min"),
                join_key(key, "min"),
                hint="swap them, or use 'value:' for a constant",
            )
        if dist.endswith("_values") and lo <= 0:
            ctx.fail(
                f"{dist} needs min > 0 (it is a value, not an exponent), not {lo}",
                body.line_of("min"),
                join_key(key, "min"),
                hint=f"give positive values, or use {dist[: -len('_values')]} if min/max are natural-log exponents",
            )
    return nums


def _parse_probabilities(ctx: Ctx, body: LineDict, key: str, count: int) -> tuple[float, ...]:
    raw = body["probabilities"]
    pkey = join_key(key, "probabilities")
    if not isinstance(raw, list):
        ctx.fail(f"'probabilities' must be a list, not {kind_of(raw)}", body.line_of("probabilities"), pkey)
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
