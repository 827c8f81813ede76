"""Errors the domain code raises; the CLI renders them (exit code 2 for bad input, 1 at run time)."""

from __future__ import annotations

from pathlib import Path


class OrchestrateError(Exception):
    """Base class: a problem with a clear message for the user, shown without a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return self.message + (f"\n  → {self.hint}" if self.hint else "")


class UsageError(OrchestrateError):
    """Bad input: arguments, missing files or data. Exit code 2."""

    exit_code = 2


class SpecError(UsageError):
    """A problem in a sweep file, located by file, line and key path (``sweeps[1].parameters.lr.min``)."""

    def __init__(
        self,
        message: str,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        where = self.file or "<sweep spec>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: " + (f"{key}: " if key else "") + message
        super().__init__(text, hint)
        self.detail = message


class DataError(UsageError):
    """A dataset root or label file is missing or unusable. Exit code 2."""


class RunError(OrchestrateError):
    """A run-time failure (storage unreachable, all slots lost …). Exit code 1."""
