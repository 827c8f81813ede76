"""W&B's hyperband early termination, exactly, as an Optuna pruner.

A port of ``hyperband_stop_runs`` in W&B's sweeps library (``wandb/sweeps``: ``src/sweeps/hyperband_stopping.py``,
the version with ``strict``) onto Optuna's pruner interface. W&B works on each run's *metric history*: the values
of the sweep metric in the order they were logged, non-numbers and non-finite values dropped; ``iteration`` k
is the k-th time the metric was logged (not the step value, not the epoch). Here the history of a trial is its
intermediate values in step order (the controller reports one value per logged step, so a trial's k-th
intermediate value is W&B's k-th history entry).

The rule (``eta`` defaults to 3, ``strict`` to true, as in W&B's schema):

* Brackets ("bands"). ``min_iter``: ``int(min_iter * eta**k)`` for k = 0, 1, 2, … (W&B lists 100).
  ``max_iter`` + ``s``: ``max_iter / eta**k`` for k = 1..s, each floored, stopping before one falls under 1,
  sorted — ``max_iter`` itself is never a bracket. When both ``max_iter`` and ``s`` are given they win over
  ``min_iter`` (W&B checks ``max_iter`` first).
* Threshold of a bracket b: the metric value at iteration b (``history[b - 1]``) of every trial of the study
  (finished, pruned, failed or running, this one included) whose history reached b; sorted best first, the
  entry at index ``int(len / eta)``; +inf when no trial reached b yet.
* A running trial whose history has reached at least one bracket is judged at the last bracket it reached
  (the largest b <= len(history)): with ``strict`` its value *at* that bracket (``history[b - 1]``), without
  it its best value so far (``min(history)`` for a minimised metric), must not be worse than the threshold —
  else it is stopped. Values equal to the threshold pass.

Differences from W&B, on purpose or by construction (see also ``docs``):

* W&B's controller evaluates every running run every few seconds; Optuna asks the pruner after each report
  of *this* trial. A run is therefore judged at each of its own reports — it is stopped at the first report
  where W&B's rule says stop, never later than one report after W&B would have.
* W&B reads history through the server's sampled history (subsampled for very long runs); we use every value.
* ``s`` is truncated to an integer (W&B's ``range(s)`` fails on a fractional ``s``). ``min_iter`` together
  with ``max_iter`` but without ``s`` uses ``min_iter`` (W&B raises a KeyError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["WandbHyperbandPruner", "wandb_bands", "wandb_threshold", "wandb_should_stop"]

_N_MIN_ITER_BANDS = 100  # W&B lists this many brackets for ``min_iter``


def wandb_bands(
    *, min_iter: int | None = None, max_iter: int | None = None, s: float | None = None, eta: float = 3.0
) -> list[int]:
    """W&B's brackets (iteration counts) for an ``early_terminate`` config; ValueError when there are none."""
    if eta <= 1:
        raise ValueError(f"eta must be greater than 1, not {eta}")
    bands: list[int] = []
    if max_iter is not None and s is not None:
        band = float(max_iter)
        for _ in range(int(s)):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        bands.sort()
    elif min_iter is not None:
        band = float(min_iter)
        for _ in range(_N_MIN_ITER_BANDS):
            bands.append(int(band))
            band *= eta
    else:
        raise ValueError("hyperband needs 'min_iter', or both 'max_iter' and 's'")
    if not bands:
        raise ValueError(
            "hyperband has no bracket: max_iter / eta is under 1 (or s is 0); "
            "increase s or max_iter, decrease eta, or use min_iter"
        )
    return bands


def wandb_threshold(histories: Sequence[Sequence[float]], band: int, eta: float) -> float:
    """The threshold at bracket ``band`` from minimised histories (W&B: top 1/eta of those that reached it)."""
    values = sorted(h[band - 1] for h in histories if len(h) >= band)
    if not values:
        return math.inf
    return values[int((1.0 / eta) * len(values))]


def wandb_should_stop(
    history: Sequence[float],
    histories: Sequence[Sequence[float]],
    bands: Sequence[int],
    eta: float,
    strict: bool = True,
) -> bool:
    """W&B's decision for one running run. All histories minimised (negate a maximised metric first);
    ``histories`` holds every run's history, this run's included."""
    closest = -1
    for band in bands:
        if band <= len(history):
            closest = band
        else:
            break
    if closest == -1:
        return False
    threshold = wandb_threshold(histories, closest, eta)
    value = history[closest - 1] if strict else min(history)
    return value > threshold


def _history(trial: FrozenTrial, sign: float) -> list[float]:
    return [
        sign * float(v)
        for _, v in sorted(trial.intermediate_values.items())
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


class WandbHyperbandPruner(BasePruner):
    """Optuna pruner with W&B's ``early_terminate: {type: hyperband, …}`` semantics (see the module doc)."""

    def __init__(
        self,
        min_iter: int | None = None,
        max_iter: int | None = None,
        s: float | None = None,
        eta: float = 3.0,
        strict: bool = True,
    ) -> None:
        self.min_iter = min_iter
        self.max_iter = max_iter
        self.s = s
        self.eta = float(eta)
        self.strict = bool(strict)
        self.bands = wandb_bands(min_iter=min_iter, max_iter=max_iter, s=s, eta=self.eta)

    def __repr__(self) -> str:
        return (
            f"WandbHyperbandPruner(bands={self.bands[:6]}{'…' if len(self.bands) > 6 else ''}, "
            f"eta={self.eta:g}, strict={self.strict})"
        )

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        history = _history(trial, sign)
        if not history or self.bands[0] > len(history):
            return False  # no bracket reached yet: no need to read the other trials
        histories: list[list[float]] = [history]
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or other.state == TrialState.WAITING:
                continue
            h = _history(other, sign)
            if h:
                histories.append(h)
        return wandb_should_stop(history, histories, self.bands, self.eta, self.strict)

    def describe(self) -> dict[str, Any]:
        return {"bands": self.bands[:10], "eta": self.eta, "strict": self.strict}
