"""Rendering helpers of the command line (``cli.py``): colour on terminals only, typer's help without a type
after a flag, the error console and the dry-run plan table. rich is imported lazily: ``orchestrate --help``
stays quick."""

from __future__ import annotations

import sys
from typing import Any


def no_color(stream: Any) -> bool | None:
    """No colour on a pipe; on a terminal, rich decides from ``NO_COLOR`` (an explicit False would override it)."""
    return True if not stream.isatty() else None


def flags_as_flags() -> None:
    """typer's help prints a type after every flag (``--dry-run <bool>``): a flag takes no value, so none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=no_color(sys.stderr), highlight=False)


def print_plan(plan: dict[str, Any]) -> None:
    """The ``launch --dry-run`` table: one row per sweep (method, trials, jobs, parent, searched parameters)."""
    from rich.console import Console
    from rich.table import Table

    tty = sys.stdout.isatty()
    console = Console(
        no_color=no_color(sys.stdout), width=None if tty else 160
    )  # pipes and logs: don't truncate
    table = Table(title="plan (nothing started)")
    for col in ("sweep", "method", "trials", "jobs", "after", "searched parameters"):
        table.add_column(col)
    for s in plan["sweeps"]:
        params = s.get("parameters") or {}
        searched = [k for k, v in params.items() if not (isinstance(v, dict) and v.get("kind") == "constant")]
        trials = "unbounded" if s.get("trials") is None else str(s["trials"])
        jobs = (
            trials
            if "folds" not in s
            else ("unbounded" if s.get("jobs") is None else f"{s['jobs']} ({len(s['folds'])} folds)")
        )
        table.add_row(s["name"], s["method"], trials, jobs, s.get("depends_on") or "", ", ".join(searched))
    console.print(table)
