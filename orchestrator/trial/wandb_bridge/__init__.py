"""The W&B bridge a ``program``/``command`` trial loads without knowing it.

The controller puts :data:`BRIDGE_DIR` first on the child's ``PYTHONPATH`` and sets ``ORCHESTRATE_WANDB_BRIDGE=1``;
Python then imports ``sitecustomize.py`` from it at start-up. That module only installs an import hook: when
(and only when) the script imports wandb, ``wandb.sdk.wandb_run.Run`` is patched so that every ``wandb.log``
also prints a protocol line (``orchestrator.trial.protocol.report``) on the child's real stdout, and the run's
finish prints ``protocol.summary``. An unmodified W&B training script is thus pruned on the sweep metric.
See ``sitecustomize.py`` for the exact rules (which calls report, the step, the summary).
"""

from __future__ import annotations

from pathlib import Path

BRIDGE_DIR = Path(__file__).resolve().parent
ENV_ENABLE = "ORCHESTRATE_WANDB_BRIDGE"  # "1": the bridge is active in this process
ENV_METRIC = "ORCHESTRATE_METRIC"  # the sweep metric's name ("" when the sweep has none)

__all__ = ["BRIDGE_DIR", "ENV_ENABLE", "ENV_METRIC"]
