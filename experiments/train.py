"""Train one face-attribute CNN: ``python -m experiments.train RUN_DIR``.

Reads ``RUN_DIR/trial.json`` (written by the controller, or by hand), resolves the config (``TrainConfig``
defaults + the trial's params), writes ``RUN_DIR/config.json``, trains, and reports on stdout with the
``@orchestrate`` protocol: one ``metrics`` line per epoch (val metrics, train/loss, lr) and one ``summary``
line at the end (every val metric at the best epoch, ``best_epoch``, test metrics). ``checkpoint_last.pt``
is written every epoch and a re-run of the same RUN_DIR continues from it; ``checkpoint_best.pt`` holds the
best epoch's weights, which the test metrics are computed with (the SWA average when ``swa``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from experiments import config as config_mod
from orchestrator.trial.errors import OrchestrateError
from orchestrator.trial.rundir import RunDir, atomic_write_json
from orchestrator.trial.spec import TrialSpec


def main(argv: list[str] | None = None) -> None:
    """Check the trial and its config before the heavy imports (bad input fails at once with exit code 2),
    then train (experiments/trainer.py)."""
    args = sys.argv[1:] if argv is None else argv
    rd = run_dir(args)
    trial = read_trial(rd)
    cfg = resolve_config(trial)
    metric_name, goal = trial_metric(trial, cfg)
    atomic_write_json(rd.config_json, config_mod.to_dict(cfg))

    from experiments import trainer

    trainer.run(rd, cfg, metric_name, goal)


def run_dir(args: list[str]) -> RunDir:
    """The one argument, RUN_DIR (``-h``: this help)."""
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(args) == 1 else 2)
    return RunDir(args[0])


def read_trial(rd: RunDir) -> TrialSpec:
    """``RUN_DIR/trial.json``; unreadable or not a trial spec: exit 2 with a one-line message."""
    try:
        return rd.read_trial()
    except OrchestrateError as exc:  # TrialSpecError: an unknown key, a missing one, a wrong type
        fail(exc.render(), exc.exit_code)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {rd.trial_json}: {exc}")


def resolve_config(trial: TrialSpec) -> config_mod.TrainConfig:
    """``TrainConfig`` defaults + the trial's params, with the trial's data_root and seed filled in."""
    try:
        cfg = config_mod.resolve(trial.params)
    except config_mod.SpecError as exc:
        fail(exc.render())
    if cfg.data_root is None and trial.data_root:
        # the sweep file's data_root: a folder with one sub-folder per dataset (<data_root>/adience, …/celeba),
        # or the dataset's own root
        base = Path(trial.data_root).expanduser()
        cfg.data_root = str(base / cfg.dataset) if (base / cfg.dataset).is_dir() else str(base)
    if cfg.seed is None:
        cfg.seed = trial.seed
    return cfg


def trial_metric(trial: TrialSpec, cfg: config_mod.TrainConfig) -> tuple[str, str]:
    """The metric the trial is judged on and its goal (the sweep's, else the experiment's default); exit 2
    when the trial does not report it."""
    metric = trial.metric
    metric_name = (metric.name if metric else None) or config_mod.default_metric(cfg)
    goal = (metric.goal if metric else None) or config_mod.default_goal(metric_name)
    if metric_name not in config_mod.metric_names(cfg):
        fail(f"this trial does not report {metric_name!r}; it reports {config_mod.metric_names(cfg)}")
    return metric_name, goal


def fail(message: str, code: int = 2) -> NoReturn:
    """``error: <message>`` on stderr, and exit (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
