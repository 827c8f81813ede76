"""The files synced to remote hosts: git's list in a checkout, the same list from a walk outside one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.hosts import code_files, code_version


def _tree(root: Path) -> None:
    for rel in [
        "orchestrator/__init__.py",
        "experiments/train.py",
        "sweeps.yaml",
        "build/lib/x.py",  # build/ (ignored)
        "runs/orchestrate.db",  # /runs/ (anchored)
        "datasets/runs/keep.txt",  # not the anchored /runs/
        "experiments/__pycache__/train.cpython-311.pyc",
        "a.pyc",
        ".venv/bin/python",
        ".ruff_cache/x",
        "pkg.egg-info/PKG-INFO",
    ]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    (root / ".gitignore").write_text(
        ".venv/\n/runs/\n__pycache__/\n*.pyc\n.ruff_cache/\n*.egg-info/\nbuild/\n# a comment\n\n"
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_walk_and_git_agree(tmp_path: Path) -> None:
    walked = tmp_path / "copy"
    _tree(walked)
    listed = code_files(walked)
    assert listed == [
        "datasets/runs/keep.txt",
        "experiments/train.py",
        "orchestrator/__init__.py",
        "sweeps.yaml",
    ]
    checkout = tmp_path / "checkout"
    shutil.copytree(walked, checkout)
    subprocess.run(["git", "init", "-q"], cwd=checkout, check=True)
    from_git = [n for n in code_files(checkout) if n != ".gitignore"]
    assert from_git == listed
    # the same files give the same version on both sides (a copy and a checkout sync the same code)
    assert code_version(walked, listed) == code_version(checkout, from_git)
