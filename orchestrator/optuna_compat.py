"""Every use of Optuna's private API, in one place, pinned to the version this project is tested with.

The controller owns the study (ARCHITECTURE.md) and needs a few things Optuna has no public call for: a
trial's storage id (to write to the storage directly from the event loop), the study's storage and id, the
trial's cached ``FrozenTrial`` (what the pruner reads), forgetting the per-thread trial cache after a direct
write, replacing a trial's fixed parameters (the grid), and one multi-row user-attribute upsert. Each helper
below says what it stands for; ``tests/orchestrator/test_optuna_compat.py`` exercises every one on a real
SQLite study and fails when Optuna's version changes, so an upgrade is a deliberate, reviewed step.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing this module must not import Optuna (the controller imports it lazily)
    import optuna

#: the Optuna version these private attributes were read from (requirements.txt pins it)
TESTED_OPTUNA = "5.0.0"


def trial_id(trial: Any) -> int:
    """The storage's id of an ``optuna.Trial`` or ``FrozenTrial`` (``number`` is per study, this is global)."""
    return int(trial._trial_id)


def storage(study: optuna.Study) -> Any:
    """The study's storage object (``BaseStorage``: ``get_trial``, ``set_trial_user_attr`` …)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The running trial's cached ``FrozenTrial`` (its intermediate values and attrs, as the pruner sees them)."""
    return trial._cached_frozen_trial


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the per-thread cache of all trials, as ``study.ask()`` does, so samplers see the latest trials."""
    study._thread_local.cached_all_trials = None


def new_trial(study: optuna.Study) -> int:
    """``study.ask()`` minus its look for WAITING (enqueued) trials — which re-reads every running trial from
    the storage: a new RUNNING trial's storage id. ``optuna.Trial(study, id)`` then wraps it."""
    forget_cached_trials(study)
    return int(storage(study).create_new_trial(study_id(study)))


def fixed_params(trial: optuna.Trial) -> dict[str, Any] | None:
    """The parameters a trial was created with fixed (a grid point, a retry's parameters), if any."""
    fixed = getattr(trial, "_fixed_params", None)
    return fixed if isinstance(fixed, dict) else None


def set_fixed_params(trial: optuna.Trial, fixed: dict[str, Any]) -> None:
    """Replace them (a fresh dict is assigned; the storage is never touched)."""
    trial._fixed_params = fixed


def set_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial in one transaction (one commit, not one per key).

    Optuna has no batch call; on an RDB storage (SQLite, PostgreSQL) this is one multi-row upsert in the
    storage's own session (Optuna's per-key path costs a SELECT and an upsert per key); any other storage, or
    another Optuna version, takes ``trial.set_user_attr`` per key.
    """
    store = getattr(trial, "storage", None)
    backend = getattr(store, "_backend", store)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session

        if isinstance(backend, RDBStorage):
            model = models.TrialUserAttributeModel
            tid = trial_id(trial)
            with _create_scoped_session(backend.scoped_session, True) as session:
                if backend.engine.name in ("sqlite", "postgresql"):
                    from sqlalchemy.dialects import postgresql, sqlite

                    found = models.TrialModel.find_or_raise_by_id(tid, session)
                    backend.check_trial_is_updatable(tid, found.state)  # type: ignore[arg-type]
                    dialect = sqlite if backend.engine.name == "sqlite" else postgresql
                    stmt = dialect.insert(model).values(
                        [{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
                    )
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[model.trial_id, model.key],
                        set_={"value_json": stmt.excluded.value_json},
                    )
                    session.execute(stmt)
                else:
                    for key, value in attrs.items():
                        backend._set_trial_attr_without_commit(session, model, tid, key, value)
            cached = getattr(trial, "_cached_frozen_trial", None)
            if cached is not None:
                cached.user_attrs.update(attrs)
            return
    except (ImportError, AttributeError, TypeError):
        pass
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def cache_alembic_scripts() -> None:
    """One alembic ``ScriptDirectory`` per process instead of one per use (idempotent).

    Opening an RDB storage makes Optuna read its migration scripts from disk three times for a new database
    (the head revision, the stamp, the schema check) and once for an existing one, ≈15 ms each: a new SQLite
    study cost ≈80 ms, ≈20 ms with this. A ``ScriptDirectory`` is built from the script location and options
    of Optuna's own ``alembic.ini`` (never the database URL), all installed package files, fixed for the life
    of a process (a kept zygote is keyed by the installed packages): one per location is the same object Optuna
    would build each time. ``optuna storage upgrade`` (``_VersionManager.upgrade``) builds its own config and
    does not go through it.
    """
    from optuna.storages._rdb.storage import _VersionManager

    if getattr(_VersionManager._create_alembic_script, "_orchestrate_cached", False):
        return
    build = _VersionManager._create_alembic_script
    scripts: dict[str, Any] = {}

    def cached(self: Any) -> Any:
        location = str(self._create_alembic_config().get_main_option("script_location"))
        script = scripts.get(location)
        if script is None:
            script = scripts.setdefault(location, build(self))
        return script

    cached._orchestrate_cached = True  # type: ignore[attr-defined]
    _VersionManager._create_alembic_script = cached  # type: ignore[method-assign]


def warm_storage() -> None:
    """For a pre-importing process (the controller zygote): what opening a storage loads once, loaded now (the
    migration scripts above, SQLAlchemy's configuration of Optuna's mapped models) on a throw-away in-memory
    database, so that every launch forked from it opens its storage warm."""
    import optuna

    cache_alembic_scripts()
    optuna.storages.RDBStorage("sqlite:///:memory:").engine.dispose()
