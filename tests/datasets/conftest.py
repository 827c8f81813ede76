from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIX = SHARED / "fixtures"
ADIENCE = FIX / "adience"


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("ORCHESTRATE_FIXTURES_DIR", str(FIX))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory):
    """Small synthetic copies of the three datasets (made once per session)."""
    import os

    os.environ.setdefault("ORCHESTRATE_FIXTURES_DIR", str(FIX))
    from datasets.synth import synthesize

    base = tmp_path_factory.mktemp("synth")
    made: dict[str, Path] = {}

    def get(name: str, limit: int = 200, size: int = 40) -> Path:
        key = f"{name}-{limit}-{size}"
        if key not in made:
            made[key] = synthesize(name, base / key, limit=limit, size=size, seed=1)
        return made[key]

    return get
