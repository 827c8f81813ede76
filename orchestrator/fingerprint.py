"""What a sweep's study was created for, and what to do when the sweep file changed since.

Each study keeps the sweep it was launched with (``orchestrate.spec``, the ``--dry-run`` description). A relaunch
compares the parts of it that decide which points exist and what they mean — the *fingerprint*: method, metric,
parameters, what runs (experiment, program, command), folds and the dependency — with the sweep file now. When
they differ, resuming would mix trials of two searches in one study (or hit Optuna's "dynamic value space"
error on a grid): the launch stops with exit code 2, listing the differences and what to do, before any trial
starts. ``launch --new`` instead gives each changed sweep a fresh study (and run folder, W&B group) under the
next free suffixed name, ``<name>-2``, ``<name>-3`` …; sweeps whose fingerprint matches resume as usual.

What may change freely: ``run_cap``, ``retries``, ``timeout``, ``pruner``, ``wandb``, ``description``, slots.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from orchestrator import storage as st
from orchestrator.trial.errors import UsageError

#: the parts of a sweep's description that decide which points its study holds and what they mean
SEARCH_KEYS = (
    "method",
    "metric",
    "parameters",
    "experiment",
    "program",
    "command",
    "folds",
    "depends_on",
    "init_from",
)


def fingerprint(described: dict[str, Any] | None) -> dict[str, Any]:
    """The search-relevant part of a sweep description, JSON-normalised (tuples → lists)."""
    described = described or {}
    return json.loads(json.dumps({k: described.get(k) for k in SEARCH_KEYS}, default=str, sort_keys=True))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per difference: ``parameters.lr: {'kind': …} → {…}``."""
    out: list[str] = []
    for key in SEARCH_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "parameters" and isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    out.append(f"parameters.{name}: {_show(a.get(name))} → {_show(b.get(name))}")
        else:
            out.append(f"{key}: {_show(a)} → {_show(b)}")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "…"


def _stored_spec(storage: Any, name: str) -> dict[str, Any] | None:
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except Exception:
        return None
    stored = attrs.get(st.ATTR_SPEC)
    return stored if isinstance(stored, dict) else None


def check(storage: Any, specs: list[Any], new: bool, say: Any = print) -> list[Any]:
    """The sweeps to run against ``storage``: unchanged, or renamed to a fresh study when ``new`` and their study
    was made for another spec. Raises UsageError (exit 2) on a changed sweep without ``new``. Reads only."""
    import optuna

    try:
        names = set(optuna.get_all_study_names(storage))
    except Exception:  # the storage is read again (with its own error handling) as the controller starts
        return specs
    renamed: dict[str, str] = {}
    problems: list[str] = []
    out = []
    for spec in specs:
        if spec.name not in names:
            out.append(spec)
            continue
        stored = _stored_spec(storage, spec.name)
        if stored is None:
            out.append(spec)  # a study of an older orchestrate, or a plain Optuna one: nothing to compare
            continue
        diff = differences(fingerprint(stored), fingerprint(spec.describe()))
        if not diff:
            out.append(spec)
            continue
        if not new:
            where = f"{spec.file}:{spec.line}: " if getattr(spec, "file", None) else ""
            problems.append(
                f"{where}sweep {spec.name!r} differs from the sweep its study was created with:\n    "
                + "\n    ".join(diff)
            )
            out.append(spec)
            continue
        k, mine = 2, fingerprint(spec.describe())
        while f"{spec.name}-{k}" in names or any(s.name == f"{spec.name}-{k}" for s in specs):
            if f"{spec.name}-{k}" in names and fingerprint(_stored_spec(storage, f"{spec.name}-{k}")) == mine:
                break  # the fresh study an earlier --new made for this very spec: resume it
            k += 1
        renamed[spec.name] = fresh = f"{spec.name}-{k}"
        what = "resumes its study" if fresh in names else "gets a fresh study"
        names.add(fresh)
        say(f"[{spec.name}] changed since its study was created: it {what} {fresh!r} (--new)")
        out.append(dataclasses.replace(spec, name=fresh))
    if problems:
        raise UsageError(
            "\n".join(problems),
            hint="run `orchestrate launch FILE --new` for a fresh study under a suffixed name (the old one is "
            "kept), restore the sweep as it was to resume it, or rename the sweep (or use another --storage)",
        )
    if renamed:  # sweeps that depend on a renamed one follow it
        out = [
            dataclasses.replace(s, depends_on=renamed[s.depends_on])
            if getattr(s, "depends_on", None) in renamed
            else s
            for s in out
        ]
    return out
