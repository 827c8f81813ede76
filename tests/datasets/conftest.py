"""Where the datasets' tests find real label files: only inside the repository.

- ``LABELS``: the real label files the project ships for the synthetic data (``datasets/labels/``).
- ``TEST_FIXTURES``: real files only the tests need (``tests/fixtures/``: the Adience frontal subset and
  2015 release, the W&B sweep corpus); see its README for the sources.
- CelebA's full ``list_eval_partition.txt`` is not stored: the synthetic generator writes the official bytes
  (its md5 is checked in test_celeba), so ``celeba_labels`` assembles the real three files from those.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABELS = ROOT / "datasets" / "labels"
TEST_FIXTURES = ROOT / "tests" / "fixtures"
ADIENCE = LABELS / "adience"
ADIENCE_FRONTAL = TEST_FIXTURES / "adience" / "frontal"
ADIENCE_2015 = TEST_FIXTURES / "adience" / "levi_hassner_2015"
UTKFACE = LABELS / "utkface"


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    # the shipped labels, whatever the shell says
    monkeypatch.delenv("ORCHESTRATE_FIXTURES_DIR", raising=False)


@pytest.fixture(scope="session")
def celeba_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with CelebA's three label files: the shipped attribute and identity rows, and the full
    official partition file (202,599 rows) as the generator writes it."""
    import shutil

    from datasets.synth import _celeba_partition_text

    out = tmp_path_factory.mktemp("celeba_labels")
    for f in ("list_attr_celeba.txt", "identity_CelebA.txt"):
        shutil.copy(LABELS / "celeba" / f, out / f)
    (out / "list_eval_partition.txt").write_bytes(_celeba_partition_text().encode())
    return out


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory):
    """Small synthetic copies of the three datasets (made once per session)."""
    from datasets.synth import synthesize

    base = tmp_path_factory.mktemp("synth")
    made: dict[str, Path] = {}

    def get(name: str, limit: int = 200, size: int = 40) -> Path:
        key = f"{name}-{limit}-{size}"
        if key not in made:
            made[key] = synthesize(name, base / key, limit=limit, size=size, seed=1)
        return made[key]

    return get
