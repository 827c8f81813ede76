"""The trial side of the process boundary: all a trial and the controller share, stdlib only.

- ``errors``: the error base classes (``OrchestrateError`` → exit 1, ``UsageError``/``SpecError``/``DataError``
  → exit 2) that both sides raise and the CLI renders;
- ``protocol``: the JSON lines a trial prints on stdout (``report``, ``summary``, ``checkpoint``) and their
  parser;
- ``rundir``: ``RunDir``, the one class that owns every path of a run directory, and atomic writes;
- ``spec``: ``TrialSpec``, the typed ``trial.json`` (what one job runs), written by the controller and read,
  strictly, by the trial;
- ``wandb_bridge``: the ``sitecustomize`` put first on a ``program:`` trial's ``PYTHONPATH`` that forwards its
  ``wandb.log`` calls as protocol lines.

``experiments/``, ``datasets/`` and ``backbones/`` import nothing else of ``orchestrator``, and nothing here
imports anything but the standard library and this package (``tests/test_import_rules.py`` checks both), so a
trial never pays for the controller's imports and the controller never imports torch-side code.
"""
