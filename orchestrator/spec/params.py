"""Parameter spaces in W&B's sweep syntax, sampled through Optuna.

A :class:`ParamSpace` is the validated ``parameters:`` block of one sweep (see ``orchestrator.spec.loader``
for parsing). Its flat names are the W&B names; a nested ``parameters:`` block gives dotted names
(``model.backbone``), which :meth:`ParamSpace.nest` turns back into nested dicts. A name that is written with a
dot (``data.variant``, as in many real files) stays one flat key, as in W&B.

Sampling calls ``trial.suggest_*`` so Optuna records every parameter:

* Distributions Optuna has natively are suggested under the parameter's own name with its real value:
  ``categorical`` (``suggest_categorical``), ``int_uniform`` (``suggest_int``), ``uniform``
  (``suggest_float``), ``log_uniform_values`` / ``inv_log_uniform_values`` and the deprecated exponent forms
  ``log_uniform`` / ``inv_log_uniform`` (``suggest_float(log=True)``: all four are log-uniform between their
  value bounds).
* The others (``q_*``, ``normal``, ``log_normal``, ``beta``, and categoricals with ``probabilities``) are
  sampled as W&B samples them: a latent ``suggest_float("<name>~quantile", 0, 1)`` pushed through the
  distribution's inverse CDF (W&B's ``HyperParameter.ppf``).
* Categorical choices that Optuna cannot store (lists, dicts, or values equal across types such as ``1`` and
  ``True``) are stored as their JSON text (``"[32, 32]"``) and decoded back.

Re-running a trial with the same values: ``study.enqueue_trial(frozen_trial.params)`` (what Optuna recorded),
``study.enqueue_trial(space.encode(values))``, or ``study.enqueue_trial(values)`` with the flat values that
:meth:`ParamSpace.sample` returned all make the next ``sample()`` return the same values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import yaml

from orchestrator.trial.errors import SpecError

__all__ = ["DISTRIBUTIONS", "GRID_KINDS", "LATENT_SUFFIX", "Param", "ParamSpace"]

#: every ``distribution:`` W&B accepts (``categorical_w_probabilities`` is read as ``categorical``)
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "inv_log_uniform_values",
    "log_uniform",
    "q_log_uniform",
    "inv_log_uniform",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
)
#: kinds a grid can enumerate (W&B's grid_search.py)
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")
#: suffix of the latent uniform Optuna parameter of distributions Optuna lacks
LATENT_SUFFIX = "~quantile"

_LOG_NATIVE = ("log_uniform_values", "inv_log_uniform_values", "log_uniform", "inv_log_uniform")
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Param:
    """One validated parameter. ``path`` is its nesting path; ``name`` the flat (dotted) name."""

    path: tuple[str, ...]
    kind: str
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    a: float | None = None
    b: float | None = None
    line: int | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def value(self) -> Any:
        """The value of a ``constant``."""
        return self.values[0] if self.kind == "constant" else None

    @property
    def latent(self) -> bool:
        """True when Optuna records a latent quantile instead of the value."""
        return self.kind not in ("constant", "categorical", "int_uniform", "uniform", *_LOG_NATIVE) or (
            self.kind == "categorical" and self.probabilities is not None
        )

    @property
    def gridable(self) -> bool:
        return self.kind in GRID_KINDS and self.probabilities is None

    def settings(self) -> dict[str, Any]:
        """The distribution's settings (defaults filled), for ``describe()``."""
        out: dict[str, Any] = {}
        if self.kind == "constant":
            out["value"] = self.value
        elif self.kind == "categorical":
            out["values"] = list(self.values)
            if self.probabilities is not None:
                out["probabilities"] = list(self.probabilities)
        for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        return out

    # -- grid ------------------------------------------------------------------------------------------
    def grid_values(self) -> list[Any]:
        """Values a grid enumerates, duplicates collapsed as W&B does (first position, last value)."""
        if self.kind == "constant":
            return [self.value]
        if self.kind == "categorical" and self.probabilities is None:
            raw = list(self.values)
        elif self.kind == "int_uniform":
            assert self.min is not None and self.max is not None
            raw = list(range(int(self.min), int(self.max) + 1))
        elif self.kind == "q_uniform":
            assert self.min is not None and self.max is not None and self.q is not None
            raw = _arange(self.min, self.max, self.q)
        else:
            raise ValueError(f"{self.name}: {self.kind} cannot be enumerated in a grid")
        order: list[str] = []
        chosen: dict[str, Any] = {}
        for value in raw:
            key = _yaml_hash(value)
            if key not in chosen:
                order.append(key)
            chosen[key] = value
        return [chosen[k] for k in order]

    # -- sampling ---------------------------------------------------------------------------------------
    def ppf(self, u: float) -> Any:
        """W&B's inverse CDF of this parameter at quantile ``u`` (0 ≤ u ≤ 1)."""
        kind = self.kind
        if kind == "constant":
            return self.value
        if kind == "categorical":
            if self.probabilities is None:
                return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
            total = 0.0
            for value, p in zip(self.values, self.probabilities, strict=True):
                total += p
                if u < total:
                    return value
            return next(
                v for v, p in zip(reversed(self.values), reversed(self.probabilities), strict=True) if p > 0
            )
        if kind == "int_uniform":
            assert self.min is not None and self.max is not None
            ilo, ihi = int(self.min), int(self.max)
            return min(ilo + int(u * (ihi - ilo + 1)), ihi)
        base = kind[2:] if kind.startswith("q_") else kind
        if base in ("normal", "log_normal"):
            assert self.mu is not None and self.sigma is not None
            u = min(max(u, 1e-12), 1.0 - 1e-12)
            r = NormalDist(self.mu, self.sigma).inv_cdf(u)
            if base == "log_normal":
                r = math.exp(r)
        elif base == "beta":
            from scipy import stats  # lazy: only beta needs scipy

            r = float(stats.beta.ppf(u, self.a, self.b))
        else:
            lo, hi = self.log_bounds() if base != "uniform" else (self.min, self.max)
            assert lo is not None and hi is not None
            r = lo + u * (hi - lo)
            if base != "uniform":
                r = math.exp(r)
        if kind.startswith("q_"):
            assert self.q is not None
            r = round(r / self.q) * self.q
            return int(r) if isinstance(self.q, int) else float(r)
        return float(r)

    def cdf(self, value: Any) -> float:
        """The quantile of ``value`` (used to re-run a latent-sampled value)."""
        kind = self.kind
        if kind == "categorical":
            index = _index_of(self.values, value)
            probs = self.probabilities or tuple(1.0 / len(self.values) for _ in self.values)
            before = sum(probs[:index])
            return min(before + probs[index] / 2.0, 1.0)
        base = kind[2:] if kind.startswith("q_") else kind
        x = float(value)
        if base in ("normal", "log_normal"):
            assert self.mu is not None and self.sigma is not None
            if base == "log_normal":
                x = math.log(x) if x > 0 else -math.inf
            if x == -math.inf:
                return 0.0
            return NormalDist(self.mu, self.sigma).cdf(x)
        if base == "beta":
            from scipy import stats

            return float(stats.beta.cdf(x, self.a, self.b))
        lo, hi = self.log_bounds() if base != "uniform" else (self.min, self.max)
        assert lo is not None and hi is not None
        if base != "uniform":
            x = math.log(x) if x > 0 else -math.inf
        return min(max((x - lo) / (hi - lo), 0.0), 1.0)

    def log_bounds(self) -> tuple[float, float]:
        """Natural-log bounds of a log-uniform family parameter."""
        assert self.min is not None and self.max is not None
        if self.kind in ("log_uniform", "q_log_uniform"):
            return float(self.min), float(self.max)
        if self.kind == "inv_log_uniform":
            return -float(self.max), -float(self.min)
        return math.log(self.min), math.log(self.max)


def _arange(start: float, stop: float, step: float) -> list[Any]:
    """``numpy.arange(start, stop, step).tolist()`` (stop excluded), as W&B enumerates a q_uniform grid."""
    count = max(math.ceil((stop - start) / step), 0)
    if all(isinstance(v, int) for v in (start, stop, step)):
        return [int(start + i * step) for i in range(count)]
    return [float(start + i * step) for i in range(count)]


def _yaml_hash(value: Any) -> str:
    """W&B's grid identity of a value (``grid_search.yaml_hash`` without the md5)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=True)


def _index_of(values: tuple[Any, ...] | list[Any], value: Any) -> int:
    for i, candidate in enumerate(values):
        if type(candidate) is type(value) and candidate == value:
            return i
    for i, candidate in enumerate(values):
        if candidate == value:
            return i
    raise ValueError(f"{value!r} is not one of {list(values)!r}")


def _to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class _Choices:
    """Optuna choices of a categorical: the values themselves, or their JSON text when Optuna can't hold them."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        primitive = all(isinstance(v, _PRIMITIVE) for v in values)
        # Optuna finds a choice with list.index (==): 1, 1.0 and True would be confused
        distinct_typed = {(type(v), v) for v in values} if primitive else set()
        distinct = set(values) if primitive else set()
        floats_ok = primitive and not any(isinstance(v, float) and math.isnan(v) for v in values)
        self.encoded = not (primitive and floats_ok and len(distinct_typed) == len(distinct))
        self.choices: list[Any] = list(values)
        if self.encoded:
            self.choices = [_to_json(v) for v in values]
            texts = {v for v in values if isinstance(v, str)}
            if texts & set(self.choices):  # a text value equals another value's JSON: number the choices
                self.choices = [f"#{i} {c}" for i, c in enumerate(self.choices)]

    def encode(self, value: Any) -> Any:
        if not self.encoded:
            return value
        try:
            return self.choices[_index_of(self.values, value)]
        except ValueError:
            if isinstance(value, str) and value in self.choices:
                return value  # already an Optuna choice
            raise

    def decode(self, choice: Any) -> Any:
        if not self.encoded:
            return choice
        return self.values[self.choices.index(choice)]


class ParamSpace:
    """The validated parameters of one sweep, in W&B's order (sorted names, depth first)."""

    def __init__(self, params: list[Param], *, file: str | None = None, key: str = "parameters") -> None:
        self.file = file
        self.key = key
        self._params: tuple[Param, ...] = tuple(params)
        self._by_name = {p.name: p for p in self._params}
        self._choices: dict[str, _Choices] = {}
        self._grid_choices: dict[str, _Choices] = {}
        for p in self._params:
            if p.kind == "categorical":
                self._choices[p.name] = _Choices(list(p.values))

    # -- inspection ---------------------------------------------------------------------------------------
    @property
    def params(self) -> tuple[Param, ...]:
        return self._params

    def __iter__(self) -> Iterator[Param]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __getitem__(self, name: str) -> Param:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        """Flat names in W&B's order."""
        return [p.name for p in self._params]

    def constants(self) -> dict[str, Any]:
        """The ``value:`` constants (flat names); they are part of every trial but not of the search."""
        return {p.name: p.value for p in self._params if p.kind == "constant"}

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per parameter: ``{"kind": …, **settings}`` (JSON-friendly), for ``--dry-run --format json``."""
        return {p.name: {"kind": p.kind, **p.settings()} for p in self._params}

    # -- grid ---------------------------------------------------------------------------------------------
    def continuous(self) -> list[Param]:
        """Parameters a grid cannot enumerate."""
        return [p for p in self._params if not p.gridable]

    def check_grid(self) -> None:
        """SpecError naming every parameter a grid cannot enumerate."""
        bad = self.continuous()
        if bad:
            listing = ", ".join(
                f"{p.name} ({p.kind}{' with probabilities' if p.probabilities is not None else ''})"
                for p in bad
            )
            raise SpecError(
                f"method: grid needs discrete parameters, but {listing} "
                f"{'is' if len(bad) == 1 else 'are'} not",
                file=self.file,
                line=bad[0].line,
                key=f"{self.key}.{bad[0].name}",
                hint="give each of them 'values: [...]' (or int_uniform / q_uniform bounds), "
                "or use method: random or bayes",
            )

    def _grid_axes(self) -> list[tuple[Param, list[Any]]]:
        self.check_grid()
        return [(p, p.grid_values()) for p in self._params if p.kind != "constant"]

    def grid_size(self) -> int:
        """Number of distinct grid points (W&B's plan size)."""
        return math.prod(len(values) for _, values in self._grid_axes())

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point (flat names, constants included) in W&B's order: the last name varies fastest."""
        axes = self._grid_axes()
        consts = self.constants()
        points: list[dict[str, Any]] = [{}]
        for param, values in axes:
            points = [{**point, param.name: v} for point in points for v in values]
        order = self.names()
        return [{name: {**consts, **point}[name] for name in order} for point in points]

    def _grid_choice(self, param: Param) -> _Choices:
        if param.name not in self._grid_choices:
            self._grid_choices[param.name] = _Choices(param.grid_values())
        return self._grid_choices[param.name]

    def grid_search_space(self) -> dict[str, list[Any]]:
        """Optuna choices per searched parameter, for ``optuna.samplers.GridSampler(search_space)``."""
        self.check_grid()
        return {p.name: list(self._grid_choice(p).choices) for p in self._params if p.kind != "constant"}

    # -- Optuna -------------------------------------------------------------------------------------------
    def sample(self, trial: Any, grid: bool = False) -> dict[str, Any]:
        """Flat values for one trial, drawn through ``trial.suggest_*`` (constants included, W&B order).

        ``grid=True``: every searched parameter is ``suggest_categorical`` over its grid values (use it with
        Optuna's GridSampler over :meth:`grid_search_space`, or with enqueued grid points).
        """
        exact: dict[str, Any] = {}
        from orchestrator import optuna_compat  # optuna is loaded by now: a trial exists

        fixed = optuna_compat.fixed_params(trial)
        if fixed:
            fixed, exact = self._translate_fixed(dict(fixed), grid)
            optuna_compat.set_fixed_params(trial, fixed)
        out: dict[str, Any] = {}
        for p in self._params:
            name = p.name
            if p.kind == "constant":
                out[name] = p.value
            elif grid:
                choices = self._grid_choice(p)
                out[name] = choices.decode(trial.suggest_categorical(name, choices.choices))
            elif p.latent:
                u = trial.suggest_float(name + LATENT_SUFFIX, 0.0, 1.0)
                out[name] = exact[name] if name in exact else p.ppf(u)
            elif p.kind == "categorical":
                choices = self._choices[name]
                out[name] = choices.decode(trial.suggest_categorical(name, choices.choices))
            elif p.kind == "int_uniform":
                assert p.min is not None and p.max is not None
                out[name] = trial.suggest_int(name, int(p.min), int(p.max))
            elif p.kind == "uniform":
                assert p.min is not None and p.max is not None
                out[name] = trial.suggest_float(name, float(p.min), float(p.max))
            else:  # the log-uniform family
                lo, hi = p.log_bounds()
                out[name] = trial.suggest_float(name, math.exp(lo), math.exp(hi), log=True)
        return out

    def _translate_fixed(self, fixed: dict[str, Any], grid: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Let decoded values enqueued with ``study.enqueue_trial(values)`` reach the right Optuna params."""
        exact: dict[str, Any] = {}
        for p in self._params:
            if p.kind == "constant" or p.name not in fixed:
                continue
            value = fixed[p.name]
            try:
                if grid:
                    fixed[p.name] = self._grid_choice(p).encode(value)
                elif p.latent:
                    latent = p.name + LATENT_SUFFIX
                    if latent not in fixed:
                        fixed[latent] = p.cdf(value)
                        exact[p.name] = value
                elif p.kind == "categorical":
                    fixed[p.name] = self._choices[p.name].encode(value)
            except (ValueError, TypeError):
                continue  # not a value of this space: Optuna warns and samples afresh
        return fixed, exact

    def encode(self, values: Mapping[str, Any], grid: bool = False) -> dict[str, Any]:
        """Optuna params (as ``trial.params`` holds them) for flat ``values``; feed to ``enqueue_trial``."""
        out: dict[str, Any] = {}
        for p in self._params:
            if p.kind == "constant" or p.name not in values:
                continue
            value = values[p.name]
            if grid:
                out[p.name] = self._grid_choice(p).encode(value)
            elif p.latent:
                out[p.name + LATENT_SUFFIX] = p.cdf(value)
            elif p.kind == "categorical":
                out[p.name] = self._choices[p.name].encode(value)
            else:
                out[p.name] = value
        return out

    def decode(self, optuna_params: Mapping[str, Any], grid: bool = False) -> dict[str, Any]:
        """Flat values (constants included) from a trial's recorded Optuna params."""
        out: dict[str, Any] = {}
        for p in self._params:
            if p.kind == "constant":
                out[p.name] = p.value
                continue
            if grid:
                if p.name in optuna_params:
                    out[p.name] = self._grid_choice(p).decode(optuna_params[p.name])
            elif p.latent:
                if p.name + LATENT_SUFFIX in optuna_params:
                    out[p.name] = p.ppf(optuna_params[p.name + LATENT_SUFFIX])
            elif p.name in optuna_params:
                raw = optuna_params[p.name]
                out[p.name] = self._choices[p.name].decode(raw) if p.kind == "categorical" else raw
        return out

    def nest(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """Nested values: names from nested ``parameters:`` become dicts; written dotted names stay flat keys."""
        out: dict[str, Any] = {}
        for name, value in flat.items():
            param = self._by_name.get(name)
            path = param.path if param is not None else (name,)
            node = out
            for part in path[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"parameter {name!r} collides with the value of {part!r}")
                node = child
            node[path[-1]] = value
        return out
