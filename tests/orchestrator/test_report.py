"""``orchestrate report``: a self-contained page whose numbers are the leaderboard's, checked in chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestrator import leaderboard as lb
from orchestrator import report
from tests.orchestrator.conftest import run_cli, write
from tests.orchestrator.test_leaderboard import make_study


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("report")
    url = make_study(tmp)
    proc = run_cli(tmp, "report", "--storage", url, "--out", str(tmp / "out"), check=True)
    assert "report.html" in proc.stdout
    return url, tmp / "out"


def test_report_is_self_contained_with_every_section(built: tuple[str, Path]) -> None:
    _, out = built
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<link" not in page and " src=" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    for title in (
        "Leaderboard (top 10), mean ± std over seed",
        "Architecture comparison (best per model.backbone)",
        "Learning curves of the top",
        "Optimisation history",
        "Parameter importances",
        "Parallel coordinates",
        "trial 14: test/gender_confusion",
        "Pruning summary",
    ):
        assert title in page, title
    md = (out / "report.md").read_text()
    svgs = re.findall(r"\]\(([^)]+\.svg)\)", md)
    assert len(svgs) >= 7 and all((out / s).exists() for s in svgs)
    data = json.loads((out / "report.json").read_text())["sweeps"]["arch"]
    assert data["pruning"]["pruned"] == 3 and data["pruning"]["epochs_saved"] == 3 * (6 - 2)
    assert set(data["importances"]) == {"model.backbone", "lr", "seed"}


def test_report_and_leaderboard_agree(built: tuple[str, Path], tmp_path: Path) -> None:
    url, out = built
    data = json.loads((out / "report.json").read_text())["sweeps"]["arch"]
    board = json.loads(
        run_cli(
            tmp_path, "leaderboard", "--storage", url, "--format", "json", "--top", "10", check=True
        ).stdout
    )
    assert data["leaderboard"] == board["sweeps"][0]
    grouped = json.loads(
        run_cli(
            tmp_path,
            "leaderboard",
            "--storage",
            url,
            "--format",
            "json",
            "--group-by",
            "model.backbone",
            check=True,
        ).stdout
    )
    assert data["architectures"] == grouped["sweeps"][0]
    md = run_cli(
        tmp_path, "leaderboard", "--storage", url, "--format", "markdown", "--top", "10", check=True
    ).stdout
    table = md.split("\n", 2)[2].strip()
    assert table in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    best = board["sweeps"][0]["rows"][0]
    assert f"<td>{best['value']:.4g} ± {best['value_std']:.4g}</td>" in page


def test_report_guards_tiny_sweeps(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    study = optuna.create_study(study_name="tiny", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    page = report.write_report(url, tmp_path / "out").read_text()
    assert "too few complete trials for parameter importances" in page
    assert "no confusion matrices recorded" in page


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/setup installs it)"
)
def test_report_renders_in_headless_chromium(built: tuple[str, Path]) -> None:
    from PIL import Image

    _, out = built
    shot = out / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,2400",
                (out / "report.html").as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 2400)
    colours = img.resize((140, 240)).getcolors(maxcolors=100_000) or []
    assert len(colours) > 50  # tables, bars and curves drew, not a blank page
    # the bar chart's first bar (tab10 blue) is on the page
    assert any(abs(r - 0x1F) + abs(g - 0x77) + abs(b - 0xB4) < 60 for _, (r, g, b) in colours)


def test_launch_then_leaderboard_status_report_agree(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults: {slots: "cpu:2", wandb: disabled, retries: 0}
        sweeps:
          - name: curve
            program: @CURVE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters:
              quality: {values: [0.9, 0.5, 0.7]}
              seed: {values: [0, 1]}
              epochs: {value: 3}
              sleep: {value: 0.01}
        """,
    )
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    board = json.loads(run_cli(tmp_path, "leaderboard", "--format", "json", check=True).stdout)["sweeps"][0]
    assert board["repeats"] == ["seed"] and [r["quality"] for r in board["rows"]] == [0.9, 0.7, 0.5]
    assert board["rows"][0]["n"] == 2 and board["rows"][0]["value"] == pytest.approx(0.9 * (1 - 0.5**3))
    state = json.loads(run_cli(tmp_path, "status", "--format", "json", check=True).stdout)["sweeps"][0]
    assert (state["complete"], state["queued"], state["running"]) == (6, 0, 0)
    assert state["best"]["value"] == pytest.approx(board["rows"][0]["value"])
    run_cli(tmp_path, "report", "--out", "rep", check=True)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())["sweeps"]["curve"]
    assert data["leaderboard"] == board
    assert (
        lb.render(lb.build(f"sqlite:///{tmp_path / 'runs/orchestrate.db'}"), "json")
        == json.dumps({"sweeps": [board]}, indent=2, default=str) + "\n"
    )


def test_fold_confusion_matrices_are_summed_over_folds(tmp_path: Path) -> None:
    from orchestrator.report import _fold_confusions

    for fold, matrix in ((0, [[3, 1], [0, 4]]), (1, [[2, 2], [1, 5]])):
        (tmp_path / f"fold{fold}").mkdir()
        (tmp_path / f"fold{fold}" / "confusion.json").write_text(
            json.dumps({"test/gender": {"classes": ["male", "female"], "matrix": matrix}})
        )
    (got,) = _fold_confusions(tmp_path).values()
    assert got == {"classes": ["male", "female"], "matrix": [[5.0, 3.0], [1.0, 9.0]]}


def _ticks(svg: str) -> list[str]:
    """The x-axis tick labels of a chart (text centred under the plot)."""
    return re.findall(r'<text x="[0-9.]+" y="[0-9.]+" text-anchor="middle">([^<]*)</text>', svg)


def test_loss_curves_with_fold_bands_integer_ticks_and_bars_from_zero(tmp_path: Path) -> None:
    import optuna

    from orchestrator import storage as st

    url = f"sqlite:///{tmp_path / 'folds.db'}"
    study = optuna.create_study(study_name="cv", storage=url, direction="maximize")
    run_dir = tmp_path / "runs" / "cv" / "00000"
    # two folds, 3 epochs: train loss 1.0/0.6/0.4 and 0.8/0.4/0.2 → mean 0.9/0.5/0.3, band 0.8–1.0 …
    for fold, train in ((0, [1.0, 0.6, 0.4]), (1, [0.8, 0.4, 0.2])):
        (run_dir / f"fold{fold}").mkdir(parents=True)
        lines = [
            json.dumps({"step": e + 1, "train/loss": v, "val/loss": v + 0.1}) for e, v in enumerate(train)
        ]
        (run_dir / f"fold{fold}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    t = study.ask()
    t.set_user_attr(st.ATTR_RUN_DIR, str(run_dir))
    for e, v in enumerate([0.5, 0.6, 0.7]):
        t.report(v, e + 1)
    study.tell(t, 0.7)
    (sd,) = lb.load(url, curves=True)
    jobs = report._epoch_metrics(run_dir, ("train/loss", "val/loss"))
    assert [j["train/loss"] for j in jobs] == [{1: 1.0, 2: 0.6, 3: 0.4}, {1: 0.8, 2: 0.4, 3: 0.2}]
    svg, folds = report.loss_curves_svg(sd, [0])
    assert svg is not None and folds == 2
    assert svg.count("<polygon") == 2  # a min–max band for train and for val
    assert "trial 0 train" in svg and "trial 0 val" in svg
    assert _ticks(svg)[: len(_ticks(svg)) - 1] == ["1", "2", "3"]  # whole epochs (then the axis label)
    curves = report.curves_svg(sd, [0], "val/acc")
    assert curves is not None and "1.5" not in _ticks(curves) and "2" in _ticks(curves)
    # bars of values ≥ 0 start at 0: the lowest y tick is 0, however close the values are
    bars = report.bars_svg("acc", ["a", "b"], [0.81, 0.83], [0.01, None], "acc", "caption")
    y_ticks = re.findall(r'<text x="[0-9.]+" y="[0-9.]+" text-anchor="end">([^<]*)</text>', bars)
    assert y_ticks[0] == "0"


def test_importances_on_few_trials_carry_a_caution(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'few.db'}"
    study = optuna.create_study(study_name="few", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1) / 10, n_trials=6)
    out = tmp_path / "out"
    page = report.write_report(url, out).read_text()
    assert "Caution: only 6 complete trials (fewer than 10)" in page
    assert "Caution: only 6 complete trials" in (out / "report.md").read_text()
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1) / 10, n_trials=4)
    assert "Caution" not in report.write_report(url, tmp_path / "out2").read_text()  # 10: no caution
