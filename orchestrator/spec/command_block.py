"""``command:`` (W&B's agent command, with its macros) and ``experiment:`` (a module of experiments/)."""

from __future__ import annotations

import re
import shlex
from typing import Any

from orchestrator.spec.context import Ctx, closest, join_key, kind_of
from orchestrator.spec.yamlio import LineDict, LineList

#: whole-item command macros (W&B agent); ``${envvar:NAME}`` may also appear inside an item
COMMAND_MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_no_equals",
    "args_json",
    "args_json_file",
)
ENVVAR = re.compile(r"\$\{envvar:([A-Za-z_][A-Za-z0-9_]*)\}")
_MACRO = re.compile(r"^\$\{([^}]*)\}$")
_EXPERIMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_command(ctx: Ctx, d: LineDict, prefix: str, program: str | None) -> list[str] | None:
    if "command" not in d or d["command"] is None:
        return None
    key = join_key(prefix, "command")
    raw = d["command"]
    lines: list[int | None]
    if isinstance(raw, str):
        items: list[Any] = shlex.split(raw)
        lines = [d.line_of("command")] * len(items)
        ctx.notice(f"{ctx.file}:{d.line_of('command')}: {key}: a command string was split like a shell line")
    elif isinstance(raw, LineList):
        items, lines = list(raw), [raw.line_of(i) for i in range(len(raw))]
    else:
        ctx.fail(f"'command' must be a list, not {kind_of(raw)}", d.line_of("command"), key)
    if not items:
        ctx.fail("'command' is empty", d.line_of("command"), key)
    out: list[str] = []
    for i, (item, line) in enumerate(zip(items, lines, strict=True)):
        if item is None or isinstance(item, dict | list):
            ctx.fail(f"a command item must be a word, not {kind_of(item)}", line, f"{key}[{i}]")
        text = str(item)
        m = _MACRO.match(text)
        if m and not m.group(1).startswith("envvar:"):
            macro = m.group(1)
            if macro not in COMMAND_MACROS:
                best = closest(macro, COMMAND_MACROS)
                ctx.fail(
                    f"unknown command macro '{text}'",
                    line,
                    f"{key}[{i}]",
                    hint=(f"did you mean '${{{best}}}'?" if best else "macros: " + ", ".join(COMMAND_MACROS)),
                )
            if macro == "program" and program is None:
                ctx.fail(
                    "the command uses ${program} but the sweep has no 'program'",
                    line,
                    f"{key}[{i}]",
                    hint="add 'program: train.py' (the script to run)",
                )
        out.append(text)
    return out


def check_experiment(ctx: Ctx, name: str, line: int | None, key: str) -> None:
    folder = ctx.experiments_dir
    ok = _EXPERIMENT_NAME.match(name) is not None and (
        (folder / f"{name}.py").is_file() or (folder / name / "__main__.py").is_file()
    )
    if ok:
        return
    available = sorted(
        {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
        | {p.parent.name for p in folder.glob("*/__main__.py")}
    )
    best = closest(name, available)
    hint = f"did you mean '{best}'? " if best else ""
    hint += f"available: {', '.join(available)}" if available else f"no experiments found in {folder}"
    ctx.fail(f"unknown experiment '{name}' (no {folder / (name + '.py')})", line, key, hint)
