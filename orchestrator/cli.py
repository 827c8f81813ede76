"""The command line: thin typer commands over domain code that raises; errors are rendered here.

Exit codes: 0 success; 1 a run-time failure; 2 bad input (spec, arguments, missing data) — one clear message,
no traceback (``--debug`` shows it); 130 when interrupted (the message says how to resume).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli_launch import launch_sweeps
from orchestrator.cli_render import err_console, flags_as_flags, no_color
from orchestrator.options import STOP_SIGNALS
from orchestrator.trial.errors import OrchestrateError, UsageError

app = typer.Typer(
    name="orchestrate",
    help="Run hyperparameter sweeps of face-attribute CNNs on every free GPU, with Optuna pruning and W&B logging.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(
    help="Synthesise or check face datasets in their real on-disk layouts.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")
hosts_app = typer.Typer(
    help="Remote hosts (defaults.hosts in the sweep file) reached over ssh.", no_args_is_help=True
)
app.add_typer(hosts_app, name="hosts")

_DEBUG = False


class PlanFormat(StrEnum):
    table = "table"
    json = "json"


class WorkerMode(StrEnum):
    warm = "warm"
    fresh = "fresh"


class TableFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


flags_as_flags()


def _fail(exc: BaseException) -> None:
    if _DEBUG:
        raise exc
    if isinstance(exc, OrchestrateError):
        from rich.markup import escape

        err_console().print(
            f"[bold red]error:[/] {escape(exc.render())}", markup=True, highlight=False, soft_wrap=True
        )
        raise typer.Exit(exc.exit_code)
    raise exc


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"orchestrate {version('orchestrate')}")
        except PackageNotFoundError:
            typer.echo("orchestrate (not installed: run from a source tree)")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


# --------------------------------------------------------------------------------------------- launch
@app.command()
def launch(
    file: Annotated[Path, typer.Argument(help="Sweep file (ours, or a W&B sweep file).")],
    sweep: Annotated[
        list[str] | None, typer.Option("--sweep", help="Run only these sweeps (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print the plan; start nothing.")
    ] = False,
    fmt: Annotated[
        PlanFormat, typer.Option("--format", help="Plan format for --dry-run.")
    ] = PlanFormat.table,
    slots: Annotated[
        str | None,
        typer.Option(help="auto, cpu:N, gpu:0,1, gpu:0x2, hosts, slurm (default: the file's, else auto)."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default: the file's, else sqlite:///runs/orchestrate.db)."),
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", help="Where run directories go (default runs/).")
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option("--max-trials", min=1, help="Stop each sweep after N finished trials.")
    ] = None,
    no_wandb: Annotated[bool, typer.Option("--no-wandb", help="Disable W&B logging.")] = False,
    workers: Annotated[
        WorkerMode,
        typer.Option(
            help="warm: trials fork from a pre-imported worker per slot; fresh: a new process each."
        ),
    ] = WorkerMode.warm,
    plain: Annotated[
        bool | None,
        typer.Option("--plain/--live", help="Plain log lines or a live table (default: live on a terminal)."),
    ] = None,
    lease: Annotated[
        float | None,
        typer.Option(
            "--lease",
            min=1.0,
            help="Seconds this controller may stay silent before others sharing the storage take its trials "
            "over (default: the file's defaults.lease, else 30).",
        ),
    ] = None,
    new: Annotated[
        bool,
        typer.Option(
            "--new",
            help="A sweep whose parameters/method/metric/program changed since its study was created gets a "
            "fresh study named <name>-2 (-3 …) instead of stopping with the list of changes.",
        ),
    ] = False,
) -> None:
    """Run the sweeps in FILE, resuming whatever the storage already holds."""
    try:
        code = launch_sweeps(
            file,
            sweep,
            dry_run,
            fmt.value,
            slots,
            storage,
            runs_dir,
            max_trials,
            no_wandb,
            plain,
            workers.value,
            lease,
            new,
        )
    except (OrchestrateError, KeyboardInterrupt, Signalled) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise typer.Exit(130) from None
        if isinstance(exc, Signalled):
            raise typer.Exit(exc.code) from None
        _fail(exc)
        return
    _EXIT_NOW[0] = not dry_run
    raise typer.Exit(code)


# ----------------------------------------------------------------------------------------- leaderboard
class Source(StrEnum):
    optuna = "optuna"
    wandb = "wandb"


@app.command()
def leaderboard(
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///runs/orchestrate.db",
    sweep: Annotated[
        list[str] | None, typer.Option("--sweep", help="Only these sweeps (repeatable).")
    ] = None,
    top: Annotated[int | None, typer.Option(min=1, help="Show the best N per sweep.")] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Best row per value of PARAM, or per combination of PARAM,PARAM (e.g. backbone,task), with "
            "mean ± std; a sweep's task/dataset/metric parameters are always among the groups.",
        ),
    ] = None,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help="COMPLETE, PRUNED, FAIL, RUNNING, WAITING (repeatable)."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="Filter on a parameter or column, e.g. 'lr<1e-3' (repeatable)."),
    ] = None,
    sort: Annotated[
        str | None, typer.Option(help="Sort by a column or parameter (-NAME: descending); default: rank.")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Comma-separated columns to show (default: the compact set).")
    ] = None,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide", help="Every column (state, best/last epoch, all metrics, cost, host, W&B run)."
        ),
    ] = False,
    per_trial: Annotated[
        bool,
        typer.Option("--per-trial", help="One row per trial even when the sweep repeats folds/seeds."),
    ] = False,
    fmt: Annotated[
        TableFormat, typer.Option("--format", help="table, csv, json or markdown.")
    ] = TableFormat.table,
    source: Annotated[
        Source, typer.Option(help="optuna (the storage) or wandb (a W&B project's runs; online only).")
    ] = Source.optuna,
    project: Annotated[str | None, typer.Option(help="ENTITY/PROJECT for --source wandb.")] = None,
    metric: Annotated[
        str | None, typer.Option(help="Objective summary key for --source wandb (e.g. val/acc).")
    ] = None,
    goal: Annotated[str, typer.Option(help="maximize or minimize (--source wandb).")] = "maximize",
) -> None:
    """The best trials of each sweep: objective at best and last epoch, parameters, metrics, cost, W&B run."""
    from orchestrator import leaderboard as lb

    try:
        opts: dict[str, Any] = {
            "top": top,
            "states": state,
            "where": where,
            "group_by": group_by,
            "sort": sort,
            "per_trial": per_trial,
        }
        if source == Source.wandb:
            tables = lb.build_wandb(project, sweep, metric, goal, **opts)
        else:
            _require_storage(storage)
            tables = lb.build(storage, sweep, **opts)
        wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        if fmt == TableFormat.table and sys.stdout.isatty():
            lb.print_tables(tables, wanted, wide)
        else:
            typer.echo(lb.render(tables, fmt.value, wanted, wide), nl=False)
    except OrchestrateError as exc:
        _fail(exc)


def _require_storage(url: str) -> None:
    """Read-only commands never create or change a storage: it must already hold a study (else exit 2)."""
    from orchestrator.storage import check_study_storage

    check_study_storage(url)


# ----------------------------------------------------------------------------------------------- status
@app.command()
def status(
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///runs/orchestrate.db",
    sweep: Annotated[list[str] | None, typer.Option("--sweep", help="Only these sweeps.")] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option("--runs-dir", help="Where run directories are, when the storage's paths moved."),
    ] = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", help="table or json.")] = PlanFormat.table,
) -> None:
    """Per sweep: counts, queued, running trials (slot, epoch, metric, elapsed), controller alive, ETA, GPU-hours."""
    import orchestrator.status as status_mod

    try:
        _require_storage(storage)
        report = status_mod.collect(storage, sweep, runs_dir)
    except OrchestrateError as exc:
        _fail(exc)
        return
    from orchestrator.executors.warm import render_zygotes, zygotes

    report["zygotes"] = zygotes()  # warm zygotes kept between launches (executors/warm.py)
    if fmt == PlanFormat.json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(status_mod.render(report) + render_zygotes(report["zygotes"]), nl=False)


# ----------------------------------------------------------------------------------------------- report
@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Folder for report.html, report.md and the SVG charts.")],
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///runs/orchestrate.db",
    sweep: Annotated[
        list[str] | None, typer.Option("--sweep", help="Only these sweeps (repeatable).")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Rows in the leaderboard table, curves drawn.")] = 10,
) -> None:
    """A self-contained HTML page (and the same as Markdown): tables, curves, importances, pruning summary."""
    import orchestrator.report as report_mod

    try:
        _require_storage(storage)
        page = report_mod.write_report(storage, out, sweep, top=top)
    except OrchestrateError as exc:
        _fail(exc)
        return
    typer.echo(f"wrote {page} and {page.with_name('report.md')}")


# ------------------------------------------------------------------------------------------------- sync
@app.command()
def sync(
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories are.")] = Path("runs"),
) -> None:
    """Upload offline W&B runs (needs `wandb login`)."""
    import subprocess

    runs = sorted(p for p in runs_dir.glob("*/*/wandb/offline-run-*") if p.is_dir())
    if not runs:
        typer.echo(f"no offline W&B runs under {runs_dir}")
        return
    code = subprocess.call([sys.executable, "-m", "wandb", "sync", *map(str, runs)])
    raise typer.Exit(code)


# --------------------------------------------------------------------------------------------- datasets
@datasets_app.command("synth")
def datasets_synth(
    name: Annotated[str, typer.Argument(help="adience, celeba or utkface")],
    out: Annotated[Path, typer.Option(help="Output root (the dataset's real layout is written there).")],
    limit: Annotated[
        int | None, typer.Option(help="At most N images (default: every row of the label files).")
    ] = None,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 128,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write synthetic face images in a dataset's real on-disk layout."""
    from orchestrator.trial.rundir import with_project_on_path

    with_project_on_path()
    try:
        from datasets.synth import synthesize

        root = synthesize(name, out, limit=limit, size=size, seed=seed)
        typer.echo(f"wrote synthetic {name} to {root}")
    except OrchestrateError as exc:
        _fail(exc)


@datasets_app.command("check")
def datasets_check(
    name: Annotated[str, typer.Argument(help="adience, celeba or utkface")],
    root: Annotated[Path, typer.Option(help="Dataset root.")],
    fmt: Annotated[PlanFormat, typer.Option("--format")] = PlanFormat.table,
    images: Annotated[
        bool, typer.Option("--images/--no-images", help="Decode every image (counts the undecodable ones).")
    ] = True,
) -> None:
    """Counts per split/fold and label, and every problem found (undecodable images: training drops them)."""
    from orchestrator.trial.rundir import with_project_on_path

    with_project_on_path()
    try:
        from datasets.check import check

        report = check(name, root, verify_images=images)
    except OrchestrateError as exc:
        _fail(exc)
        return
    if fmt == PlanFormat.json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        from rich.console import Console
        from rich.pretty import Pretty

        Console(no_color=no_color(sys.stdout)).print(Pretty(report))
    if not report.get("ok", True):
        for err in report.get("errors") or []:
            err_console().print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)  # the dataset cannot be used as it is


# ------------------------------------------------------------------------------------------------ hosts
@hosts_app.command("check")
def hosts_check(
    file: Annotated[Path, typer.Argument(help="Sweep file whose defaults.hosts to check.")] = Path(
        "sweeps.yaml"
    ),
    fmt: Annotated[PlanFormat, typer.Option("--format")] = PlanFormat.table,
) -> None:
    """Connect to each host: reachable, GPUs, Python and package versions, code version, datasets."""
    from orchestrator import hosts as hs
    from orchestrator.spec import load_sweeps

    try:
        if not file.exists():
            raise UsageError(f"{file}: no such sweep file", hint="pass the sweep file that lists the hosts")
        loaded = load_sweeps(file)
        defaults = loaded.defaults
        if not defaults.hosts:
            raise UsageError(
                f"{file}: no hosts (defaults.hosts is empty)", hint="add a 'hosts:' list to defaults"
            )
        from orchestrator.datasync import sweep_units

        # the sweeps' dataset folders are the controller's: launch copies them to each host once
        results = hs.check_all(defaults.hosts, datasets=sweep_units(loaded.sweeps))
    except OrchestrateError as exc:
        _fail(exc)
        return
    if fmt == PlanFormat.json:
        typer.echo(json.dumps(results, indent=2, default=str))
    else:
        for r in results:
            typer.echo(hs.describe(r))
            for problem in r["problems"]:
                typer.echo(f"  problem: {r['host']}: {problem}")
    raise typer.Exit(0 if all(r["ok"] for r in results) else 1)


# ------------------------------------------------------------------------------------------------ slurm
slurm_app = typer.Typer(
    help="A Slurm cluster (slots: slurm, defaults.slurm in the sweep file).", no_args_is_help=True
)
app.add_typer(slurm_app, name="slurm")


@slurm_app.command("check")
def slurm_check(
    file: Annotated[Path, typer.Argument(help="Sweep file whose defaults.slurm to check.")] = Path(
        "sweeps.yaml"
    ),
    fmt: Annotated[PlanFormat, typer.Option("--format")] = PlanFormat.table,
) -> None:
    """Partitions, nodes, GPUs and time limits; and whether Slurm accepts a trial's job (srun --test-only)."""
    from orchestrator import slurm as sl
    from orchestrator.executors.slurm import srun_args
    from orchestrator.spec import load_sweeps
    from orchestrator.spec.model import SlurmSpec

    try:
        if not file.exists():
            raise UsageError(f"{file}: no such sweep file", hint="pass the sweep file with the slurm: block")
        spec = load_sweeps(file).defaults.slurm or SlurmSpec()
        sl.require()
        report = sl.check(spec, srun_args(spec))
    except OrchestrateError as exc:
        _fail(exc)
        return
    if fmt == PlanFormat.json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(sl.describe(report))
        for problem in report["problems"]:
            typer.echo(f"  problem: {problem}")
    raise typer.Exit(0 if report["ok"] else 1)


# set once a launch has finished: its controller closed its executor, storage and display, so the interpreter's
# own teardown (≈0.25 s of freeing Optuna/SQLAlchemy modules and the controller's objects) is skipped
_EXIT_NOW = [False]


class Signalled(BaseException):  # noqa: N818 - not an error: the user asked the command to stop
    """Ctrl-C (SIGINT) or SIGTERM outside a launch's own handling: the command ends with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _on_signal(signum: int, frame: Any) -> None:
    raise Signalled(signum)


def main() -> None:
    """The entry point: every command's unexpected error becomes one line (exit 1; ``--debug`` shows the
    traceback), and Ctrl-C/SIGTERM/SIGHUP end any command with 130/143/129 (a launch first stops its trials)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        # also under `python -m orchestrator`: help and completion name the command
        app(prog_name="orchestrate")
    except SystemExit as exc:
        if not _EXIT_NOW[0]:
            raise
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except Signalled as exc:
        sys.stderr.write(f"stopped ({exc})\n")
        sys.exit(exc.code)
    except Exception as exc:
        if _DEBUG or "--debug" in sys.argv[1:]:
            raise
        text = str(exc).strip().splitlines()
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}" + (f": {text[0][:300]}" if text else "") + "\n"
            "  → this is a bug in orchestrate: rerun with --debug for the traceback, and report it\n"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
