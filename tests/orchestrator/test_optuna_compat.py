"""Optuna's private API, used only through ``orchestrator.optuna_compat``, checked on a real SQLite study.

The first test fails on purpose when Optuna is upgraded: read the private attributes again, then move the pin.
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from orchestrator import optuna_compat as oc

ROOT = Path(__file__).resolve().parents[2]


def test_pinned_to_the_tested_optuna() -> None:
    assert optuna.__version__ == oc.TESTED_OPTUNA
    pinned = re.search(r"^optuna==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == oc.TESTED_OPTUNA


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}", study_name="s")


def test_new_trial_ids_storage_and_frozen(study: optuna.Study) -> None:
    study.enqueue_trial({"x": 1.0})  # a WAITING trial: new_trial must not pick it up (ask() would)
    tid = oc.new_trial(study)
    trial = optuna.Trial(study, tid)
    assert oc.trial_id(trial) == tid and oc.study_id(study) == oc.storage(study).get_study_id_from_name("s")
    stored = oc.storage(study).get_trial(tid)
    assert stored.state == optuna.trial.TrialState.RUNNING and oc.trial_id(stored) == tid
    trial.report(0.5, 1)
    assert oc.frozen(trial).intermediate_values == {1: 0.5}
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["RUNNING", "WAITING"]
    oc.forget_cached_trials(study)  # must not raise, and the next read sees the storage
    assert len(study.get_trials()) == 2


def test_fixed_params_round_trip(study: optuna.Study) -> None:
    study.enqueue_trial({"x": 2.0})
    trial = study.ask()
    assert oc.fixed_params(trial) == {"x": 2.0}
    oc.set_fixed_params(trial, {"x": 3.0})
    assert trial.suggest_float("x", 0, 10) == 3.0


def test_set_user_attrs_one_upsert(study: optuna.Study) -> None:
    trial = study.ask()
    trial.set_user_attr("a", 0)
    oc.set_user_attrs(trial, {"a": 1, "b": {"c": [1, 2]}, "d": "x"})
    stored = oc.storage(study).get_trial(oc.trial_id(trial))
    assert stored.user_attrs == {"a": 1, "b": {"c": [1, 2]}, "d": "x"}
    assert oc.frozen(trial).user_attrs["b"] == {"c": [1, 2]}
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError):  # a finished trial is not updatable
        oc.set_user_attrs(trial, {"late": 1})


def _schema(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, ...]], list[tuple[str, ...]]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        tables = sorted(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())
        alembic = db.execute("SELECT * FROM alembic_version").fetchall()
        info = db.execute("SELECT schema_version, library_version FROM version_info").fetchall()
    return tables, alembic, info


def test_cached_migration_scripts_make_optunas_own_database_reading_them_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    plain = tmp_path / "plain.db"  # Optuna alone, in a process where nothing is cached
    subprocess.run(
        [sys.executable, "-c", f"import optuna; optuna.storages.RDBStorage('sqlite:///{plain}')"], check=True
    )
    oc.cache_alembic_scripts()
    oc.cache_alembic_scripts()  # idempotent: one wrapper, one cache
    built: list[int] = []
    original = ScriptDirectory.from_config
    monkeypatch.setattr(ScriptDirectory, "from_config", lambda *a, **k: built.append(1) or original(*a, **k))
    for name in ("a.db", "b.db", "a.db"):  # two new databases, then an existing one
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}").engine.dispose()
    assert len(built) <= 1  # (0 when an earlier test of this process already read them)
    assert _schema(tmp_path / "a.db") == _schema(tmp_path / "b.db") == _schema(plain)
    (_, alembic, _) = _schema(plain)
    head = ScriptDirectory(
        str(Path(optuna.__file__).parent / "storages" / "_rdb" / "alembic")
    ).get_current_head()
    assert alembic == [(head,)]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'a.db'}", study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}").trials) == 2
