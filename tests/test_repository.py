"""The repository keeps its own promises to a newcomer: the README's test command is what CI runs, and the
tests need nothing outside the clone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("Run the tests", 1)[1]
    block = re.search(r"```bash\n(.+?)\n```", section, re.S)
    assert block, "README: no ```bash block after 'Run the tests'"
    return block.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    cmd = readme_test_command()
    assert "pytest" in cmd and cmd.startswith("bash .ci/setup && "), cmd  # system packages first
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert cmd in ci_lines, ".ci/run must run the README's test command verbatim"


def test_no_test_reads_outside_the_repository() -> None:
    """`../shared` (the design notes and fixture corpus beside a developer's checkout) is not part of a
    clone: the tests read datasets/labels/ and tests/fixtures/ instead."""
    offenders = []
    for f in sorted((ROOT / "tests").rglob("*.py")):
        if f.name == Path(__file__).name:
            continue
        src = f.read_text()
        if re.search(r"""["']shared["']\s*/|\.\./shared|parents\[\d\]\.parent""", src):
            offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


def test_shipped_fixtures_are_complete() -> None:
    corpus = sorted((ROOT / "tests" / "fixtures" / "wandb_sweeps").glob("*.yaml"))
    assert len(corpus) == 30
    for k in range(5):
        assert (ROOT / "datasets" / "labels" / "adience" / f"fold_{k}_data.txt").is_file()
        assert (ROOT / "tests" / "fixtures" / "adience" / "frontal" / f"fold_frontal_{k}_data.txt").is_file()
