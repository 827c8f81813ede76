"""Numbers a reviewer can trust (issue 13, items 2 and 3): tables never mix tasks, ``best`` and ``value`` are
computed the same way, and a fold trial's curve is the mean over ALL its folds even with fewer slots than
folds."""

from __future__ import annotations

import io
import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from rich.console import Console

from orchestrator import leaderboard as lb
from orchestrator import storage as st
from orchestrator.report import write_report
from orchestrator.scheduler import fold_best_last
from tests.orchestrator.conftest import load_trials, run_cli, write

# ---------------------------------------------------------------------------------------- item 3: folds
FEW_SLOTS = """
defaults: {slots: "cpu:1", wandb: disabled, retries: 0}
sweeps:
  - name: cv
    program: @CURVE@
    method: grid
    folds: [0, 1, 2]
    metric: {name: score, goal: maximize}
    pruner: {type: threshold, lower: 0.249}
    parameters:
      quality: {value: 0.5}
      epochs: {value: 3}
      sleep: {value: 0.01}
"""


@pytest.mark.e2e
def test_fewer_slots_than_folds_store_and_prune_on_the_mean_of_all_folds(tmp_path: Path) -> None:
    """One slot, three folds: the folds run one after the other. Fold f reports q·(1 + 0.01(f − 1))·(1 − 0.5^(e+1))
    (tests/orchestrator/programs/curve.py); fold 0 alone is 0.2475 at step 0, under the pruner's threshold
    0.249, while the mean over the three folds is 0.25: a curve from the first fold alone prunes the trial."""
    spec = write(tmp_path, "sweeps.yaml", FEW_SLOTS)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    (trial,) = load_trials(tmp_path, "cv")
    q = [0.5 * (1 + 0.01 * (f - 1)) for f in (0, 1, 2)]
    by_hand = {e: statistics.fmean(qf * (1 - 0.5 ** (e + 1)) for qf in q) for e in range(3)}
    assert trial.state == TrialState.COMPLETE  # the pruner saw 0.25, not fold 0's 0.2475
    assert trial.intermediate_values == pytest.approx(by_hand)
    final = statistics.fmean(qf * (1 - 0.5**3) for qf in q)
    assert trial.value == pytest.approx(final)
    proc = run_cli(tmp_path, "leaderboard", "--format", "json", check=True)
    (row,) = json.loads(proc.stdout)["sweeps"][0]["rows"]
    assert row["best"] == pytest.approx(final) and row["last"] == pytest.approx(final)
    assert row["value"] == pytest.approx(final)


# ------------------------------------------------------------------------------- item 2: best vs value
finite = hs.floats(min_value=-5, max_value=5, allow_nan=False)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    folds=hs.lists(
        hs.tuples(hs.dictionaries(hs.integers(0, 6), finite, max_size=6), finite, hs.booleans()),
        min_size=1,
        max_size=5,
    ),
    maximize=hs.booleans(),
)
def test_best_is_never_worse_than_value(
    folds: list[tuple[dict[int, float], float, bool]], maximize: bool
) -> None:
    """Per fold: a curve and an objective (the summary value: one of the reported values, or any other number a
    program's summary gives). The trial's value is the mean of the objectives (as the controller computes it);
    its best, in the storage and in the leaderboard, is never worse — for a fold trial and for a single one."""
    curves = [c for c, _, _ in folds]
    objectives = [
        (c[max(c)] if pick and c else o) for c, o, pick in folds
    ]  # the built-in experiment: a reported value
    value = statistics.fmean(objectives)
    best, last = fold_best_last(curves, objectives, maximize)
    assert best >= value - 1e-9 if maximize else best <= value + 1e-9
    assert last == pytest.approx(
        statistics.fmean(c[max(c)] if c else o for c, o in zip(curves, objectives, strict=True))
    )
    # the leaderboard row of such a trial (its stored curve: the steps every fold has, as means)
    steps = set.intersection(*(set(c) for c in curves)) if all(curves) else set()
    inter = {s: statistics.fmean(c[s] for c in curves) for s in steps}
    attrs = {st.ATTR_BEST_VALUE: best, st.ATTR_LAST_VALUE: last} if len(folds) > 1 else {}
    rec = lb.TrialRec(0, "COMPLETE", value, None, None, {}, attrs, inter)
    rec.summarise(maximize)
    direction = "maximize" if maximize else "minimize"
    (row,) = lb.trial_rows(lb.StudyData("s", direction, {}, [rec]))
    assert row["value"] == value
    assert row["best"] >= row["value"] if maximize else row["best"] <= row["value"]


# -------------------------------------------------------------------------- item 2: tables mix no tasks
VALUES = {("a", "gender"): 0.90, ("b", "gender"): 0.80, ("a", "age_group"): 0.40, ("b", "age_group"): 0.55}


@pytest.fixture
def two_tasks(tmp_path: Path) -> str:
    """architecture-comparison's shape: backbone × task, two seeds each (values ± 0.01)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'two.db'}"
    study = optuna.create_study(study_name="arch", storage=url, direction="maximize")
    study.set_user_attr(st.ATTR_METRIC, {"name": "val/acc", "goal": "maximize"})
    dists = {
        "backbone": CategoricalDistribution(["a", "b"]),
        "task": CategoricalDistribution(["gender", "age_group"]),
        "seed": CategoricalDistribution([0, 1]),
    }
    for (backbone, task), v in VALUES.items():
        for seed in (0, 1):
            params = {"backbone": backbone, "task": task, "seed": seed}
            study.enqueue_trial(params)
            t = study.ask(fixed_distributions=dists)
            t.set_user_attr(st.ATTR_PARAMS, params)
            study.tell(t, v + 0.01 * (2 * seed - 1))
    return url


def _cells(table: dict) -> dict[tuple[str, str], dict]:
    return {(r["_params"]["backbone"], r["_params"]["task"]): r for r in table["rows"]}


def test_group_by_backbone_never_averages_two_tasks(two_tasks: str) -> None:
    (table,) = lb.build(two_tasks, group_by="backbone")
    assert table["group_by"] == ["backbone", "task"]  # the task joined the groups, and the table says so
    assert "task" in table["note"] and "never averaged" in lb.render([table], "markdown")
    cells = _cells(table)
    assert set(cells) == set(VALUES)
    for key, v in VALUES.items():
        assert cells[key]["value"] == pytest.approx(v)  # the mean over the two seeds of ONE task
        assert cells[key]["group_mean"] == pytest.approx(v) and cells[key]["group_n"] == 2
    (explicit,) = lb.build(two_tasks, group_by="backbone,task")
    assert explicit["note"] is None
    assert {k: r["value"] for k, r in _cells(explicit).items()} == {k: r["value"] for k, r in cells.items()}


def test_a_sweep_over_tasks_is_ranked_within_each_task(two_tasks: str) -> None:
    (table,) = lb.build(two_tasks)
    firsts = {r["_params"]["task"]: r for r in table["rows"] if r["rank"] == 1}
    assert (
        firsts["gender"]["_params"]["backbone"] == "a" and firsts["age_group"]["_params"]["backbone"] == "b"
    )
    assert "ranked within each task" in lb.render([table], "markdown")
    (top1,) = lb.build(two_tasks, top=1)
    assert {r["_params"]["task"] for r in top1["rows"]} == {"gender", "age_group"}  # the best of each task


def test_cli_group_by_two_keys(two_tasks: str, tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "leaderboard", "--storage", two_tasks, "--group-by", "backbone,task", check=True)
    lines = proc.stdout.splitlines()
    assert "best per backbone × task" in lines[0]
    assert lines[1].split()[:2] == ["backbone", "task"]
    assert len([ln for ln in lines[2:] if ln.strip()]) == 4


def test_report_draws_one_architecture_panel_per_task(two_tasks: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(two_tasks, out)
    md = (out / "report.md").read_text()
    assert "| best trial (task gender) |" in md and "| best trial (task age_group) |" in md
    panels = sorted(out.glob("arch-architectures*.svg"))
    assert len(panels) == 2
    for svg in panels:
        text = svg.read_text()
        task = "gender" if "task gender" in text else "age_group"
        assert f"task {task}" in text
        shown = {f"{v:.3g}" for (b, t), v in VALUES.items() if t == task}
        other = {f"{v:.3g}" for (b, t), v in VALUES.items() if t != task}
        # the bars' value labels (the axis' tick labels, anchored at the end, may read 0.4 or 0.8 too)
        labels = set(re.findall(r'<text [^>]*text-anchor="middle">([^<]*)</text>', text))
        assert shown <= labels and not other & labels


def test_launch_summary_status_and_live_view_give_one_best_per_task(two_tasks: str) -> None:
    """The launch's closing lines, `orchestrate status` and the live caption: a best per task, never one across."""
    from orchestrator.cli_launch import best_lines
    from orchestrator.live import LiveDisplay
    from orchestrator.status import collect, render

    lines = [ln for ln in best_lines(two_tasks, ["arch"]) if ln.startswith("[arch] best:")]
    assert len(lines) == 2
    (gender,) = [ln for ln in lines if "task=gender" in ln]
    (age,) = [ln for ln in lines if "task=age_group" in ln]
    assert "backbone=a" in gender and "val/acc=0.9" in gender  # a's two seeds: 0.89, 0.91
    assert "backbone=b" in age and "val/acc=0.55" in age

    (sweep,) = collect(two_tasks)["sweeps"]
    assert sweep["best"] is None  # one value across two tasks would compare accuracies of different tasks
    best = {b["task"]: b for b in sweep["best_within"]}
    assert set(best) == {"gender", "age_group"}
    assert best["gender"]["value"] == pytest.approx(0.91) and best["age_group"]["value"] == pytest.approx(
        0.56
    )
    text = render(collect(two_tasks))
    assert "val/acc=0.91 (task=gender)" in text and "val/acc=0.56 (task=age_group)" in text

    live = LiveDisplay()
    live.console = Console(file=io.StringIO(), width=160, color_system=None)
    metric = SimpleNamespace(name="val/acc", goal="maximize")
    live.runners["arch"] = SimpleNamespace(
        spec=SimpleNamespace(metric=metric), counts={"complete": 0, "pruned": 0, "failed": 0},
        pending=[], cap=None, finished=0, running=0,
    )  # fmt: skip
    for number, (task, value) in enumerate([("gender", 0.9), ("age_group", 0.4), ("gender", 0.8)]):
        live.trial_started("arch", number, "cpu0", {"backbone": "a", "task": task}, 1)
        live.trial_finished("arch", number, "COMPLETE", value, 1.0, None, 1)
    caption = " ".join(live._caption().split())
    live.live.stop()
    assert "best val/acc=0.9 (trial 0, task=gender)" in caption
    assert "best val/acc=0.4 (trial 1, task=age_group)" in caption


def test_report_importances_and_history_are_per_task(two_tasks: str, tmp_path: Path) -> None:
    """fANOVA over gender and age accuracies together would mostly measure the task: one per task instead."""
    out = tmp_path / "report"
    write_report(two_tasks, out)
    (sweep,) = json.loads((out / "report.json").read_text())["sweeps"].values()
    assert sweep["importances"] == {}
    within = {w["task"]: w["importances"] for w in sweep["importances_within"]}
    assert set(within) == {"gender", "age_group"}
    for imp in within.values():
        assert set(imp) == {"backbone", "seed"}  # never the task itself
        assert imp["backbone"] > imp["seed"]  # backbones differ by 0.10-0.15, seeds by 0.02
    md = (out / "report.md").read_text()
    assert "#### task gender" in md and "#### task age_group" in md
    assert len(list(out.glob("arch-importances-*.svg"))) == 2
    history = (out / "arch-history.svg").read_text()  # a best-so-far line per task, not one across both
    assert "best so far (task gender)" in history and "best so far (task age_group)" in history
    assert history.count("<polyline") == 2
