"""Sweep specifications: ``load_sweeps(path) -> SweepFile`` (ours or plain W&B sweep files).

* :func:`load_sweeps` — read and validate a file; every problem is a ``SpecError`` with file, line and key path.
* :class:`SweepFile` (path, defaults, sweeps, notices), :class:`SweepSpec`, :class:`Defaults`,
  :class:`MetricSpec`, :class:`PrunerSpec` — see ``model.py``.
* :class:`ParamSpace` — names(), grid(), grid_size(), sample(trial, grid=False), encode(), decode(), nest(),
  constants(), describe(), grid_search_space() — see ``params.py``.

Never imports torch.
"""

from orchestrator.spec.loader import COMMAND_MACROS, EXPERIMENTS_DIR, load_sweeps
from orchestrator.spec.model import Defaults, MetricSpec, PrunerSpec, SweepFile, SweepSpec
from orchestrator.spec.params import DISTRIBUTIONS, LATENT_SUFFIX, Param, ParamSpace

__all__ = [
    "COMMAND_MACROS",
    "DISTRIBUTIONS",
    "EXPERIMENTS_DIR",
    "LATENT_SUFFIX",
    "Defaults",
    "MetricSpec",
    "Param",
    "ParamSpace",
    "PrunerSpec",
    "SweepFile",
    "SweepSpec",
    "load_sweeps",
]
