"""Built-in experiments: entry points a trial runs as ``python -m <module> RUN_DIR``.

The controller imports this package (no torch here, nor in ``experiments.config``) to find an experiment's
module and to validate a sweep's parameters before anything starts::

    from experiments import EXPERIMENTS
    exp = EXPERIMENTS["train"]
    resolved = exp.validate(params)          # raises orchestrator.errors.SpecError
    argv = [sys.executable, "-m", exp.module, str(run_dir)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import config


@dataclass(frozen=True)
class Experiment:
    name: str
    module: str  # run as ``python -m <module> RUN_DIR``
    description: str
    validate_fn: Callable[..., dict[str, Any]]

    def validate(
        self, params: dict[str, Any] | None, *, file: str | Path | None = None, line: int | None = None
    ) -> dict[str, Any]:
        """The resolved config (defaults + params) as a dict; raises ``SpecError`` on a bad key or value."""
        return self.validate_fn(self.name, params, file=file, line=line)

    def command(self, python: str, run_dir: str | Path) -> list[str]:
        return [python, "-m", self.module, str(run_dir)]


EXPERIMENTS: dict[str, Experiment] = {
    "train": Experiment(
        name="train",
        module="experiments.train",
        description="train one face-attribute CNN (gender, age group, age, ethnicity, multitask, CORAL)",
        validate_fn=config.validate,
    ),
}

__all__ = ["EXPERIMENTS", "Experiment"]
