"""``orchestrate launch``'s flow (``cli.launch`` is its typer command): load and check the sweeps, print the
plan (``--dry-run``) or build the launch options (slots, storage, executor), run the controller and sum up.

Domain code raises (``OrchestrateError``); ``cli.py`` renders it. The heavy modules (Optuna, the scheduler,
the display) are imported only once a launch really starts.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from orchestrator.cli_render import err_console, print_plan
from orchestrator.trial.errors import UsageError

if TYPE_CHECKING:
    from orchestrator.scheduler import LaunchOptions


def launch_sweeps(
    file: Path,
    names: list[str] | None,
    dry_run: bool,
    fmt: str,
    slots_opt: str | None,
    storage_opt: str | None,
    runs_dir_opt: Path | None,
    max_trials: int | None,
    no_wandb: bool,
    plain: bool | None,
    workers: str = "warm",
    lease: float | None = None,
    new: bool = False,
) -> int:
    """The launch (or its ``--dry-run`` plan); the exit status."""
    sweep_file, specs = _load(file, names)
    if dry_run:
        plan = {"sweeps": [s.describe() for s in specs]}
        if fmt == "json":
            typer.echo(json.dumps(plan, indent=2, default=str))
        else:
            print_plan(plan)
        return 0
    opts = _launch_options(
        file,
        sweep_file.defaults,
        specs,
        slots_opt=slots_opt,
        storage_opt=storage_opt,
        runs_dir_opt=runs_dir_opt,
        max_trials=max_trials,
        no_wandb=no_wandb,
        workers=workers,
        lease=lease,
        new=new,
    )
    return _run(file, specs, opts, plain)


def _load(file: Path, names: list[str] | None) -> tuple[Any, list[Any]]:
    """The sweep file and the sweeps to run, checked runnable; its notices printed."""
    from orchestrator.spec import load_sweeps
    from orchestrator.validate import validate_experiments, validate_runnable

    if not file.exists():
        raise UsageError(f"{file}: no such sweep file", hint="pass the path of a sweeps.yaml (see README)")
    sweep_file = load_sweeps(file)
    specs = select(sweep_file.sweeps, names, file)
    validate_runnable(specs)
    validate_experiments(specs)
    for notice in getattr(sweep_file, "notices", []) or []:
        err_console().print(f"note: {notice}", markup=False)
    return sweep_file, specs


def select(sweeps: list[Any], names: list[str] | None, file: Path) -> list[Any]:
    """The sweeps named by ``--sweep`` (all without it); an unknown name is a usage error."""
    if not names:
        return sweeps
    known = [s.name for s in sweeps]
    missing = [n for n in names if n not in known]
    if missing:
        raise UsageError(
            f"{file}: no sweep named {', '.join(map(repr, missing))}",
            hint="sweeps in the file: " + ", ".join(known),
        )
    return [s for s in sweeps if s.name in names]


def _launch_options(
    file: Path,
    defaults: Any,
    specs: list[Any],
    *,
    slots_opt: str | None,
    storage_opt: str | None,
    runs_dir_opt: Path | None,
    max_trials: int | None,
    no_wandb: bool,
    workers: str,
    lease: float | None,
    new: bool,
) -> LaunchOptions:
    """The command line's options over the file's defaults: storage, runs directory, slots and executor."""
    from orchestrator.leases import DEFAULT_LEASE_S
    from orchestrator.scheduler import LaunchOptions
    from orchestrator.slots import parse_slots
    from orchestrator.wandb_env import resolve_mode

    slots_spec = slots_opt or getattr(defaults, "slots", None) or "auto"
    opts = LaunchOptions(
        storage=storage_opt or getattr(defaults, "storage", None) or "sqlite:///runs/orchestrate.db",
        runs_dir=runs_dir_opt or Path(getattr(defaults, "runs_dir", None) or "runs"),
        # hosts: only the remote boxes; slurm: one job per trial on the cluster (defaults.slurm)
        slots=[] if slots_spec in ("hosts", "slurm") else parse_slots(slots_spec),
        max_trials=max_trials,
        wandb_mode=resolve_mode(getattr(defaults, "wandb", None), no_wandb),
        workers=workers,
        lease_s=lease or getattr(defaults, "lease", None) or DEFAULT_LEASE_S,
        new=new,
    )
    check_writable(opts.runs_dir)
    _add_executor(opts, file, defaults, specs, slots_spec)
    return opts


def _add_executor(opts: LaunchOptions, file: Path, defaults: Any, specs: list[Any], slots_spec: str) -> None:
    """Slurm jobs, or remote hosts' slots beside the local ones; no slot at all is a usage error."""
    if slots_spec == "slurm":
        from orchestrator.executors.slurm import launch_setup

        opts.slots, opts.slurm = launch_setup(defaults, specs, file)
        opts.executor = "slurm"
    elif getattr(defaults, "hosts", None):  # remote boxes: their slots too, local ones here, remote over ssh
        from orchestrator.hosts import inventory_slots

        remote_slots, notes = inventory_slots(defaults.hosts)
        for note in notes:
            err_console().print(f"note: {note}", markup=False)
        opts.slots += remote_slots
        opts.hosts, opts.executor = tuple(defaults.hosts), "routed"
    if not opts.slots:
        if not getattr(defaults, "hosts", None):  # slots: hosts, and no host listed
            raise UsageError(
                f"{file}: slots: hosts, but the file lists no hosts: no slot to run trials on",
                hint="add defaults.hosts (see README, 'Rented GPUs over SSH'), or use slots: auto / cpu:N",
            )
        raise UsageError(
            "no slot to run trials on", hint=f"check the hosts (`orchestrate hosts check {file}`)"
        )


def _run(file: Path, specs: list[Any], opts: LaunchOptions, plain: bool | None) -> int:
    """Run the controller under its display; the closing summary; the exit status."""
    from orchestrator.faults import mask_url
    from orchestrator.live import make_display
    from orchestrator.scheduler import Controller

    display = make_display(plain)
    controller = Controller(specs, opts, display)  # first: it starts the warm workers' imports
    display.message(
        f"launch {file}: {len(specs)} sweep(s) on {len(opts.slots)} slot(s) "
        f"[{', '.join(s.id for s in opts.slots)}], storage {mask_url(opts.storage)}, W&B {opts.wandb_mode}"
    )
    try:
        outcome = controller.run()
    finally:
        display.close()
    return _summary(file, specs, opts, display, outcome)


def _summary(file: Path, specs: list[Any], opts: LaunchOptions, display: Any, outcome: Any) -> int:
    """Counts per sweep, wall time and utilisation, then the best trials or why the launch stopped."""
    for name, c in outcome.counts.items():
        display.message(
            f"[{name}] {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
            + (f" ({c['retried']} retried)" if c["retried"] else "")
            + (f", {c['recovered']} recovered from a dead controller" if c["recovered"] else "")
            + (f", {c['imported']} recorded from their result.json" if c.get("imported") else "")
        )
    display.message(
        f"wall {outcome.wall_s:.1f}s, slot utilisation {outcome.utilisation:.2f} "
        f"(sum of trial durations / (slots × wall time))"
    )
    if outcome.interrupted:
        display.message(
            f"interrupted: run `orchestrate launch {file}` again to resume (finished trials are kept)"
        )
        return 128 + (outcome.signal or signal.SIGINT)
    for line in best_lines(opts.storage, [s.name for s in specs]):
        display.message(line)
    if outcome.failures:  # a sweep whose trials failed is not a success (exit 1), and it says why
        from orchestrator.scheduler import failure_summary

        sweeps = len({f["sweep"] for f in outcome.failures})
        display.message(
            f"{len(outcome.failures)} trial(s) of {sweeps} sweep(s) ended FAILED after their retries "
            "(their stderr.log in the run directory has the rest):"
        )
        for line in failure_summary(outcome.failures):
            display.message(f"  {line}")
        return 1
    return 0


def best_lines(storage: str, sweeps: list[str]) -> list[str]:
    """The closing summary: each sweep's best configuration (its swept parameters and value) and what to run
    next. Nothing that fails here fails the launch: then only the leaderboard command is named."""
    from orchestrator import leaderboard as lb
    from orchestrator.faults import mask_url
    from orchestrator.storage import DEFAULT_STORAGE

    where = "" if storage == DEFAULT_STORAGE else f" --storage '{mask_url(storage)}'"
    try:
        tables = lb.build(storage, sweep=sweeps, states=["COMPLETE"], top=1)
    except Exception:  # noqa: BLE001 - a summary, never a failure
        return [f"see `orchestrate leaderboard{where}`"]
    lines = []
    for t in tables:
        if not t["rows"]:
            lines.append(f"[{t['sweep']}] no complete trial")
            continue
        # a sweep over tasks/datasets/metrics is ranked within each: one best per task, never one across them
        for row in t["rows"]:
            who = f"trials {row['trials']}" if t.get("aggregated") else f"trial {row['trial']}"
            value = lb.cell(row, "value")
            params = ", ".join(f"{p}={lb.cell(row, 'param:' + p)}" for p in t["params"])
            lines.append(
                f"[{t['sweep']}] best: {who}, {t['metric'] or 'value'}={value}"
                + (f" ({params})" if params else "")
                + f" → orchestrate leaderboard --sweep {t['sweep']}{where}"
            )
    lines.append(f"next: `orchestrate report --out report/{where}` (tables, curves, importances)")
    return lines


def check_writable(path: Path) -> None:
    """The runs directory exists (made if missing) and takes a file, else a usage error naming ``--runs-dir``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"runs directory {path} is not writable: {exc.strerror}", hint="pass --runs-dir DIR"
        ) from exc
