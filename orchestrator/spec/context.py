"""The parse context shared by the spec blocks: where we are (file), what we noticed, typed readers that
fail with a :class:`SpecError` naming the file, the line and the key path."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, NoReturn

from orchestrator.spec.yamlio import LineDict, NumStr, as_number, plain
from orchestrator.trial.errors import SpecError


def closest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def join_key(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


class Ctx:
    """Where we are (file) and what we noticed."""

    def __init__(self, file: Path, experiments_dir: Path) -> None:
        self.file = file
        self.experiments_dir = experiments_dir
        self.notices: list[str] = []

    def fail(self, message: str, line: int | None, key: str | None, hint: str | None = None) -> NoReturn:
        raise SpecError(message, file=self.file, line=line, key=key or None, hint=hint)

    def notice(self, text: str) -> None:
        self.notices.append(text)

    # -- typed readers -----------------------------------------------------------------------------------
    def mapping(self, value: Any, line: int | None, key: str, what: str) -> LineDict:
        if not isinstance(value, LineDict):
            self.fail(f"{what} must be a mapping (key: value lines), not {kind_of(value)}", line, key)
        return value

    def unknown_keys(
        self, d: LineDict, allowed: tuple[str, ...], prefix: str, what: str, ignored: tuple[str, ...] = ()
    ) -> None:
        for k in d:
            if not isinstance(k, str):
                self.fail(f"keys must be text, not {kind_of(k)} {k!r}", d.line_of(k), join_key(prefix, k))
            if k in allowed or k in ignored:
                continue
            best = closest(k, allowed)
            hint = f"did you mean '{best}'?" if best else f"valid keys: {', '.join(allowed)}"
            self.fail(f"unknown key '{k}' in {what}", d.line_of(k), join_key(prefix, k), hint)

    def string(self, d: LineDict, k: str, prefix: str, *, optional: bool = True) -> str | None:
        if k not in d or d[k] is None:
            if optional:
                return None
            self.fail(f"'{k}' is required", d.line, join_key(prefix, k))
        value = d[k]
        if not isinstance(value, str):
            self.fail(
                f"must be text, not {kind_of(value)} {value!r}",
                d.line_of(k),
                join_key(prefix, k),
                hint=f'quote it: {k}: "{value}"',
            )
        return str(value)

    def integer(self, d: LineDict, k: str, prefix: str, *, minimum: int) -> int | None:
        if k not in d or d[k] is None:
            return None
        value = d[k]
        num = as_number(value)
        if num is None or (isinstance(num, float) and not num.is_integer()):
            self.fail(
                f"must be a whole number, not {kind_of(value)} {value!r}", d.line_of(k), join_key(prefix, k)
            )
        if num < minimum:
            self.fail(f"must be at least {minimum}, not {num}", d.line_of(k), join_key(prefix, k))
        return int(num)

    def number(self, d: LineDict, k: str, prefix: str) -> int | float | None:
        if k not in d or d[k] is None:
            return None
        value = d[k]
        num = as_number(value)
        if num is None:
            self.fail(f"must be a number, not {kind_of(value)} {value!r}", d.line_of(k), join_key(prefix, k))
        if not math.isfinite(num):
            self.fail(f"must be a finite number, not {num!r}", d.line_of(k), join_key(prefix, k))
        return num


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def coerce(value: Any) -> Any:
    """Plain data with unquoted number-like strings (``1e-4``) read as numbers."""
    if isinstance(value, NumStr):
        num = as_number(value)
        return num if num is not None else str(value)
    if isinstance(value, dict):
        return {plain(k): coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v) for v in value]
    return value


def finite(ctx: Ctx, value: Any, line: int | None, key: str) -> Any:
    """A parameter value with no NaN or infinity anywhere inside (a trial could not use it, a grid could not
    tell its points apart), and only text keys in its mappings (trial.json, the study and W&B are JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        ctx.fail(
            f"{value!r} is not a usable value",
            line,
            key,
            hint="NaN and infinity cannot be parameter values; give a number (or quote it to pass the text)",
        )
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):  # `true:`, `1:`, `null:` as a key: JSON, Optuna and W&B need text keys
                ctx.fail(
                    f"the key {k!r} inside a value is {kind_of(k)}, not text",
                    line,
                    key,
                    hint="quote the key (e.g. 'true': or '1':) so that YAML reads it as text",
                )
            finite(ctx, v, line, key)
    if isinstance(value, list | tuple):
        for v in value:
            finite(ctx, v, line, key)
    return value
