"""Command-line conventions: --version, shell completion, NO_COLOR on a real terminal, flags shown as flags."""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.orchestrator.conftest import cli_env, run_cli


def test_version_and_completion(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--version", check=True)
    assert proc.stdout.strip() == f"orchestrate {version('orchestrate')}"
    # the shell is detected from the parent processes (shellingham), not read from an argument: run it from a
    # bash that stays its parent (`; true` keeps bash from exec-ing it), or the answer depends on who ran pytest
    cmd = f"{shlex.quote(sys.executable)} -m orchestrator --show-completion; true"
    proc = subprocess.run(
        ["bash", "-c", cmd],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    script = proc.stdout
    assert "_orchestrate_completion" in script and "complete " in script, proc.stdout + proc.stderr


def test_flags_are_shown_without_a_value_in_help(tmp_path: Path) -> None:
    for cmd in ([], ["launch"], ["leaderboard"], ["status"], ["report"], ["sync"]):
        text = run_cli(tmp_path, *cmd, "--help", check=True).stdout
        assert "<bool>" not in text, cmd
    text = run_cli(tmp_path, "launch", "--help", check=True).stdout
    (line,) = [ln for ln in text.splitlines() if "--dry-run" in ln and "Validate" in ln]
    assert line.split("--dry-run")[1].split()[0] == "Validate"  # no type between the flag and its help


def _on_a_terminal(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, bytes]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its exit code and everything it wrote."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], cwd=tmp_path, env=env, stdout=child, stderr=child
    )
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.wait(timeout=120), out


def test_no_color_is_honoured_by_error_lines_on_a_terminal(tmp_path: Path) -> None:
    env = cli_env(tmp_path) | {"TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    missing = ("leaderboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    rc, out = _on_a_terminal(tmp_path, env, *missing)
    assert rc == 2 and b"error:" in out and _colours(out) == {"31"}  # a terminal gets a red error: …
    rc, out = _on_a_terminal(tmp_path, env | {"NO_COLOR": "1"}, *missing)
    assert (
        rc == 2 and b"error:" in out and not _colours(out)
    )  # …no colour when NO_COLOR is set (bold may stay)


def _colours(out: bytes) -> set[str]:
    """The colour parameters (foreground/background, 30–49, 90–107) of the SGR sequences in ``out``."""
    found = set()
    for params in re.findall(rb"\x1b\[([0-9;]*)m", out):
        for p in params.decode().split(";"):
            if p and (30 <= int(p) <= 49 or 90 <= int(p) <= 107):
                found.add(p)
    return found
