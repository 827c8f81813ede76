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


def _no_color(stream: Any) -> bool | None:
    """No colour on a pipe; on a terminal, rich decides from ``NO_COLOR`` (an explicit False would override it)."""
    return True if not stream.isatty() else None


def _flags_as_flags() -> None:
    """typer's help prints a type after every flag (``--dry-run <bool>``): a flag takes no value, so none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_as_flags()


def _err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=_no_color(sys.stderr), highlight=False)


def _fail(exc: BaseException) -> None:
    if _DEBUG:
        raise exc
    if isinstance(exc, OrchestrateError):
        from rich.markup import escape

        _err_console().print(
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
        code = _launch(
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


def _select(sweeps: list[Any], names: list[str] | None, file: Path) -> list[Any]:
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


def _launch(
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
    from orchestrator.spec import load_sweeps
    from orchestrator.validate import validate_experiments, validate_runnable

    if not file.exists():
        raise UsageError(f"{file}: no such sweep file", hint="pass the path of a sweeps.yaml (see README)")
    sweep_file = load_sweeps(file)
    specs = _select(sweep_file.sweeps, names, file)
    validate_runnable(specs)
    validate_experiments(specs)
    for notice in getattr(sweep_file, "notices", []) or []:
        _err_console().print(f"note: {notice}", markup=False)
    if dry_run:
        plan = {"sweeps": [s.describe() for s in specs]}
        if fmt == "json":
            typer.echo(json.dumps(plan, indent=2, default=str))
        else:
            _print_plan(plan)
        return 0

    from orchestrator.faults import mask_url
    from orchestrator.leases import DEFAULT_LEASE_S
    from orchestrator.live import make_display
    from orchestrator.scheduler import Controller, LaunchOptions
    from orchestrator.slots import parse_slots
    from orchestrator.wandb_env import resolve_mode

    defaults = sweep_file.defaults
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
    _check_writable(opts.runs_dir)
    if slots_spec == "slurm":
        from orchestrator.executors.slurm import launch_setup

        opts.slots, opts.slurm = launch_setup(defaults, specs, file)
        opts.executor = "slurm"
    elif getattr(defaults, "hosts", None):  # remote boxes: their slots too, local ones here, remote over ssh
        from orchestrator.hosts import inventory_slots

        remote_slots, notes = inventory_slots(defaults.hosts)
        for note in notes:
            _err_console().print(f"note: {note}", markup=False)
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
    for line in _best_lines(opts.storage, [s.name for s in specs]):
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


def _best_lines(storage: str, sweeps: list[str]) -> list[str]:
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
        row = t["rows"][0]
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


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"runs directory {path} is not writable: {exc.strerror}", hint="pass --runs-dir DIR"
        ) from exc


def _print_plan(plan: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    tty = sys.stdout.isatty()
    console = Console(
        no_color=_no_color(sys.stdout), width=None if tty else 160
    )  # pipes and logs: don't truncate
    table = Table(title="plan (nothing started)")
    for col in ("sweep", "method", "trials", "jobs", "after", "searched parameters"):
        table.add_column(col)
    for s in plan["sweeps"]:
        params = s.get("parameters") or {}
        searched = [k for k, v in params.items() if not (isinstance(v, dict) and v.get("kind") == "constant")]
        trials = "unbounded" if s.get("trials") is None else str(s["trials"])
        jobs = (
            trials
            if "folds" not in s
            else ("unbounded" if s.get("jobs") is None else f"{s['jobs']} ({len(s['folds'])} folds)")
        )
        table.add_row(s["name"], s["method"], trials, jobs, s.get("depends_on") or "", ", ".join(searched))
    console.print(table)


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

        Console(no_color=_no_color(sys.stdout)).print(Pretty(report))
    if not report.get("ok", True):
        for err in report.get("errors") or []:
            _err_console().print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
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
    traceback), and Ctrl-C/SIGTERM end any command with 130/143 (a launch first stops its trials)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
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
