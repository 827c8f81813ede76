"""``TrialSpec``: what one trial is asked to run — the typed form of ``RUN_DIR/trial.json``.

The controller builds one per job (``scheduler._start_part``), writes it (:meth:`TrialSpec.to_json`, byte for
byte the ``trial.json`` it always wrote) and hands the same object to the executor on ``Job.spec``; a remote
executor rewrites its paths for the host (:meth:`TrialSpec.map_paths`) instead of editing JSON text. The trial
reads it back with :meth:`TrialSpec.read`: an unknown key or a value of the wrong type raises
:class:`TrialSpecError` (exit code 2, one line naming the file and the key).

Stdlib only: both sides import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.trial.errors import UsageError

#: the seed of a trial whose sweep does not set ``seed`` (the controller's DEFAULT_SEED; a hand-written
#: trial.json without ``seed`` gets it too)
DEFAULT_SEED = 42


class TrialSpecError(UsageError):
    """A ``trial.json`` that is not a trial spec: unknown key, missing key, or a value of the wrong type."""


@dataclass(frozen=True)
class TrialMetric:
    """The sweep's metric as the trial sees it (``None``: the experiment's default)."""

    name: str | None = None
    goal: str | None = None


@dataclass(frozen=True)
class TrialSpec:
    """One job of a trial: the whole trial, or one fold of it. Fields in ``trial.json``'s order."""

    sweep: str
    trial: int
    attempt: int
    params: dict[str, Any]  # nested, the resolved sweep parameters (JSON values, keys sorted)
    fold: int | None = None
    experiment: str | None = None  # a built-in experiment (experiments/<name>.py); None: a user program
    metric: TrialMetric | None = None
    project: str | None = None
    data_root: str | None = None  # the sweep's data_root
    seed: int = DEFAULT_SEED
    slot: str | None = None

    def __post_init__(self) -> None:
        # canonical params: plain JSON values with sorted keys, exactly what reading trial.json back gives
        # (so a program's params file and every consumer see one form), and a copy nobody else mutates
        object.__setattr__(self, "params", _canonical(self.params))

    # ----- reading -----
    @classmethod
    def from_dict(cls, data: Any, where: str = "trial.json") -> TrialSpec:
        """Check and convert a parsed ``trial.json``; ``where`` names it in the error."""
        if not isinstance(data, Mapping):
            raise TrialSpecError(f"{where}: expected a JSON object, got {_kind(data)}")
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise TrialSpecError(
                f"{where}: unknown key {unknown[0]!r} (expected: {', '.join(sorted(_FIELDS))})"
            )
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise TrialSpecError(f"{where}: missing key {missing[0]!r}")
        for key, value in data.items():
            _check(where, key, value, _TYPES[key])
        values = dict(data)
        if values.get("metric") is not None:
            values["metric"] = _metric(values["metric"], where)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, where: str = "trial.json") -> TrialSpec:
        """Parse ``trial.json``'s text. Malformed JSON raises ``json.JSONDecodeError`` (a ValueError)."""
        return cls.from_dict(json.loads(text), where)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> TrialSpec:
        """Read ``path`` (OSError / ValueError when it cannot be read as JSON; TrialSpecError when it is
        not a trial spec)."""
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        return cls.from_json(text, str(path))

    # ----- writing -----
    def to_dict(self) -> dict[str, Any]:
        """The ``trial.json`` object (a fresh copy)."""
        return {
            "sweep": self.sweep,
            "trial": self.trial,
            "attempt": self.attempt,
            "fold": self.fold,
            "experiment": self.experiment,
            "params": _canonical(self.params),
            "metric": None if self.metric is None else {"name": self.metric.name, "goal": self.metric.goal},
            "project": self.project,
            "data_root": self.data_root,
            "seed": self.seed,
            "slot": self.slot,
        }

    def to_json(self) -> str:
        """``trial.json``'s text: two-space indent, sorted keys, a final newline (rundir.atomic_write_json)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    # ----- paths -----
    def map_paths(self, fn: Callable[[str, str], str]) -> TrialSpec:
        """A copy with every string that may name a path — ``data_root`` and each string inside ``params`` —
        replaced by ``fn(field, value)``; ``field`` is the dotted key (``data_root``, ``params.lr``,
        ``params.model.backbone``, ``params.files.0`` for a list's first item). A remote executor maps the
        controller's paths to the host's with it."""
        data_root = None if self.data_root is None else fn("data_root", self.data_root)
        params = _map(self.params, "params", fn)
        return dataclasses.replace(self, data_root=data_root, params=params)


_REQUIRED = ("sweep", "trial", "attempt", "params")
#: key → (type or types, may it be null); checked by from_dict
_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "sweep": ((str,), False),
    "trial": ((int,), False),
    "attempt": ((int,), False),
    "fold": ((int,), True),
    "experiment": ((str,), True),
    "params": ((dict,), False),
    "metric": ((dict,), True),
    "project": ((str,), True),
    "data_root": ((str,), True),
    "seed": ((int,), False),
    "slot": ((str,), True),
}
_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialSpec))
assert set(_TYPES) == _FIELDS


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _check(where: str, key: str, value: Any, spec: tuple[tuple[type, ...], bool]) -> None:
    types, nullable = spec
    if value is None and nullable:
        return
    if isinstance(value, bool) and bool not in types:  # JSON true is no integer here
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        want = {str: "a string", int: "an integer", dict: "an object"}[types[0]]
        raise TrialSpecError(
            f"{where}: {key}: expected {want}{' or null' if nullable else ''}, got {_kind(value)} {value!r}"[
                :300
            ]
        )


def _metric(value: Mapping[str, Any], where: str) -> TrialMetric:
    for key, item in value.items():
        if key not in ("name", "goal"):
            raise TrialSpecError(f"{where}: metric: unknown key {str(key)!r} (expected: goal, name)")
        _check(where, f"metric.{key}", item, ((str,), True))
    return TrialMetric(name=value.get("name"), goal=value.get("goal"))


def _canonical(params: Any) -> Any:
    """JSON values with sorted keys, as ``json.load`` of a sorted dump gives them (``default=str``)."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _map(value: Any, where: str, fn: Callable[[str, str], str]) -> Any:
    if isinstance(value, str):
        return fn(where, value)
    if isinstance(value, dict):
        return {k: _map(v, f"{where}.{k}", fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map(v, f"{where}.{i}", fn) for i, v in enumerate(value)]
    return value
