"""``orchestrate report --out DIR``: one self-contained HTML page and the same content as Markdown.

``DIR/report.html`` embeds everything (inline CSS and inline SVG charts: no script, no CDN, no network);
``DIR/report.md`` has the same sections as Markdown tables with links to the same charts written beside it as
``DIR/<sweep>-<chart>.svg``; ``DIR/report.json`` holds the leaderboard tables as ``orchestrate leaderboard
--format json`` prints them. Per sweep:

1. summary: trials by state, GPU-hours, the best trial;
2. the leaderboard (the very tables of :mod:`orchestrator.leaderboard`, same code, same numbers);
3. the architecture comparison when the sweep varies a backbone-like parameter (``--group-by`` table and a bar
   chart with error bars; one chart per task/dataset/metric when the sweep spans several: never one axis);
4. learning curves of the top trials (the objective per epoch: Optuna's intermediate values), and their train
   and val loss per epoch (``metrics.jsonl``; a trial run per fold: the mean over folds, with a min–max band);
5. the optimisation history (every trial's value, best so far);
6. parameter importances (Optuna's ``get_param_importances``: fANOVA up to 1,000 trials, PED-ANOVA beyond), with
   a caution below :data:`FEW_TRIALS` complete trials;
7. parallel coordinates of the varying parameters and the objective;
8. confusion matrices of the best trials, when the experiment recorded them (see :func:`confusion_matrices`);
9. the pruning summary: trials pruned, epochs run, epochs saved vs. running every trial to the full budget.

The charts are drawn as SVG by :mod:`orchestrator.charts` (matplotlib is not a dependency). Epoch and trial axes
have integer ticks; bar charts of values that are all ≥ 0 start at 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator import leaderboard as lb
from orchestrator import storage as st
from orchestrator.charts import (
    _e,
    _epoch_metrics,  # noqa: F401 - re-exported: report._epoch_metrics (tests)
    bars_svg,
    curves_svg,
    hbar_svg,
    heatmap_svg,
    history_svg,
    loss_curves_svg,
    parallel_svg,
)
from orchestrator.faults import mask_url
from orchestrator.trial.rundir import safe_name

FEW_TRIALS = 10  # importances over fewer complete trials than this carry a caution
ARCH_PARAMS = ("backbone", "arch", "architecture", "model", "network", "net")


# --------------------------------------------------------------------------------------- the sections
def _in(params: dict[str, Any], within: dict[str, Any]) -> bool:
    """Whether a trial's parameters have the values of ``within`` (e.g. ``{"task": "gender"}``; {}: every trial)."""
    return all(params.get(k) == v for k, v in within.items())


def importances(
    url: str, sd: lb.StudyData, within: dict[str, Any] | None = None
) -> tuple[list[tuple[str, float]], str]:
    """Optuna's parameter importances, or a note saying why there are none. ``within`` (e.g. ``{"task":
    "gender"}``) keeps the trials with those values: a sweep over tasks gets importances per task, since one
    fANOVA over values of different tasks would mostly measure the task."""
    within = within or {}
    complete = [
        t for t in sd.trials if t.state == "COMPLETE" and t.value is not None and _in(t.params, within)
    ]
    if len(complete) < 3:
        return [], f"too few complete trials for parameter importances ({len(complete)}; need at least 3)"
    varying = [p for p in lb.varying([t.params for t in complete]) if p not in within]
    if not varying:
        return [], "no parameter varies among the complete trials"
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=sd.name, storage=st.get_storage(url))
    if within:  # the trials of this task alone, in an in-memory study (the storage is only read)
        subset = optuna.create_study(directions=study.directions)
        subset.add_trials(
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if _in(t.params, within)
        )
        study = subset
    evaluator: Any
    if len(complete) <= 1000:
        evaluator, name = FanovaImportanceEvaluator(seed=0), "fANOVA"
    else:
        evaluator, name = PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
    except Exception as exc:  # noqa: BLE001 - too few distinct values, conditional params …
        return [], f"parameter importances unavailable: {type(exc).__name__}: {exc}"
    where = "".join(f", {k} {v}" for k, v in within.items())
    return [
        (k, float(v)) for k, v in imp.items()
    ], f"{name} over {len(complete)} complete trials{where} (Optuna)"


def _fold_confusions(run_dir: Path) -> dict[str, Any]:
    """A cross-validated trial's confusion matrices: each fold's ``fold*/confusion.json``, summed over folds
    (the usual way to report a k-fold confusion matrix)."""
    total: dict[str, Any] = {}
    for path in sorted(run_dir.glob("fold*/confusion.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, v in data.items() if isinstance(data, dict) else ():
            if not (isinstance(v, dict) and isinstance(v.get("matrix"), list)):
                continue
            name = f"{key} (sum over folds) confusion"
            if name not in total:
                total[name] = {
                    "classes": v.get("classes"),
                    "matrix": [list(map(float, r)) for r in v["matrix"]],
                }
            else:
                acc = total[name]["matrix"]
                if len(acc) == len(v["matrix"]):
                    total[name]["matrix"] = [
                        [a + b for a, b in zip(ra, rb, strict=False)]
                        for ra, rb in zip(acc, v["matrix"], strict=False)
                    ]
    return total


def confusion_matrices(rec: lb.TrialRec) -> list[tuple[str, list[str], list[list[float]]]]:
    """Confusion matrices a trial recorded, found in (first match wins):

    - the summary (``orchestrate.summary``) or ``<run_dir>/summary.json``: keys ending in ``confusion`` whose value
      is ``{"classes": [...], "matrix": [[...]]}`` or a bare square matrix;
    - ``<run_dir>/confusion.json``: ``{"<name>": {"classes", "matrix"}}``.
    """
    sources: list[dict[str, Any]] = []
    summary = rec.attrs.get(st.ATTR_SUMMARY)
    if isinstance(summary, dict):
        sources.append(summary)
    run_dir = rec.attrs.get(st.ATTR_RUN_DIR)
    if run_dir:
        folds = _fold_confusions(Path(run_dir))
        if folds:
            sources.append(folds)
        for name in ("summary.json", "confusion.json"):
            try:
                data = json.loads((Path(run_dir) / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                sources.append(
                    data if name == "summary.json" else {f"{k} confusion": v for k, v in data.items()}
                )
    out = []
    for src in sources:
        for key, v in src.items():
            if not str(key).lower().endswith("confusion"):
                continue
            matrix = v.get("matrix") if isinstance(v, dict) else v
            if not (
                isinstance(matrix, list)
                and matrix
                and all(isinstance(r, list) and len(r) == len(matrix) for r in matrix)
            ):
                continue
            classes = v.get("classes") if isinstance(v, dict) else None
            if not (isinstance(classes, list) and len(classes) == len(matrix)):
                classes = [str(i) for i in range(len(matrix))]
            out.append((str(key), [str(c) for c in classes], [[float(x) for x in r] for r in matrix]))
        if out:
            break
    return out


def pruning_summary(sd: lb.StudyData) -> dict[str, Any]:
    rows = lb.trial_rows(sd)
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    budget = max((int(r["epochs"] or 0) for r in complete), default=0) or max(
        (int(r["epochs"] or 0) for r in finished), default=0
    )
    run = sum(int(r["epochs"] or 0) for r in finished)
    full = budget * len(finished)
    saved = sum(max(0, budget - int(r["epochs"] or 0)) for r in pruned)
    per_epoch = [r["duration_s"] / r["epochs"] for r in complete if r["duration_s"] and r["epochs"]]
    sec = sum(per_epoch) / len(per_epoch) if per_epoch else None
    return {
        "trials": len(rows),
        "finished": len(finished),
        "pruned": len(pruned),
        "epoch_budget": budget,
        "epochs_run": run,
        "epochs_full": full,
        "epochs_saved": saved,
        "saved_fraction": round(saved / full, 4) if full else None,
        "hours_saved": round(saved * sec / 3600, 4) if sec is not None else None,
        "pruned_at_epochs": sorted(int(r["epochs"] or 0) for r in pruned),
    }


def _arch_param(table: dict[str, Any]) -> str | None:
    for p in table["params"]:
        if p.rpartition(".")[2].lower() in ARCH_PARAMS:
            return str(p)
    return None


def _table_html(t: dict[str, Any]) -> str:
    """The page shows the leaderboard's compact columns (cells wrap at spaces); report.md and report.json have
    every column."""
    cols = lb.compact_columns(t)
    head = "".join(f"<th>{_e(c.removeprefix('param:'))}</th>" for c in cols)
    body = []
    for r in t["rows"]:
        cls = str(r["state"]).split()[0].lower() if str(r["state"]).isupper() else "mixed"
        tds = "".join(f"<td>{_e(lb.cell(r, c))}</td>" for c in cols)
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _kv_html(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(lb._fmt(v))}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def _kv_md(d: dict[str, Any]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {lb._fmt(v)} |" for k, v in d.items()) + "\n"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1360px}
h1{font-size:22px}h2{font-size:18px;border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:36px}
h3{font-size:15px;margin-top:24px}.note{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
td{min-width:3em}.caution{color:#a06000;font-weight:bold}
th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}
tr.pruned td{color:#a06000}tr.fail td{color:#c00}tr.running td{color:#07a}
table.kv th{text-align:left}.scroll{overflow-x:auto}.charts{display:flex;flex-wrap:wrap;gap:16px}
svg{border:1px solid #eee;max-width:100%;height:auto}figure{margin:8px 0}
figcaption{max-width:680px}.charts>figure{flex:0 0 auto}
"""


class _Page:
    """The HTML and Markdown of one sweep's section, written side by side; charts also go to ``out`` as files."""

    def __init__(self, name: str, out: Path) -> None:
        self.slug = safe_name(name)
        self.out = out
        self.h: list[str] = [f'<h2 id="{_e(self.slug)}">{_e(name)}</h2>']
        self.m: list[str] = [f"## {name}\n"]

    def chart(self, kind: str, svg: str | None, caption: str) -> None:
        if svg is None:
            return
        file = f"{self.slug}-{kind}.svg"
        (self.out / file).write_text(svg, encoding="utf-8")
        self.h.append(f"<figure>{svg}<figcaption class='note'>{_e(caption)}</figcaption></figure>")
        self.m.append(f"![{caption}]({file})\n")

    def note(self, text: str) -> None:
        """A note in both: escaped in the HTML, a paragraph of its own in the Markdown."""
        self.h.append(f"<p class='note'>{_e(text)}</p>")
        self.m.append(f"{text}\n")


def _section(url: str, sd: lb.StudyData, out: Path, top: int) -> tuple[str, str, dict[str, Any]]:
    """(html, markdown, json tables) of one sweep."""
    metric = sd.metric or "objective"
    page = _Page(sd.name, out)
    rows = lb.trial_rows(sd)
    tables = lb.build(url, studies=[sd], top=top)
    board = tables[0]
    _overview(page, sd, rows, metric)
    _leaderboard(page, board, top)
    arch = _arch_param(board) if not board.get("group_by") else None
    data: dict[str, Any] = {"leaderboard": json.loads(lb.render([board], "json"))["sweeps"][0]}
    if arch:
        data["architectures"] = _architectures(page, url, sd, arch, metric)
    top_trials = [int(r["trial"]) for r in lb.rank([dict(r) for r in rows], sd.direction)[: min(top, 8)]]
    _curves(page, sd, top_trials, metric)
    data.update(_importances(page, url, sd))
    _parallel(page, sd, rows, metric)
    _confusions(page, sd, top_trials)
    data["pruning"] = _pruning(page, sd)
    return "\n".join(page.h), "\n".join(page.m), data


def _overview(page: _Page, sd: lb.StudyData, rows: list[dict[str, Any]], metric: str) -> None:
    """Trials by state, GPU-hours, the best trial (one per task/dataset/metric when the sweep spans several)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    overview = {
        "metric": f"{metric} ({sd.direction})",
        "method": sd.spec.get("method", ""),
        "trials": len(rows),
        **{k.lower(): v for k, v in sorted(counts.items())},
        "GPU-hours": round(sum(r["gpu_hours"] or 0 for r in rows), 4),
        "duration (h, sum)": round(sum(r["duration_s"] or 0 for r in rows) / 3600, 4),
    }
    split = lb.strata(lb.varying([r["_params"] for r in rows]))  # tasks/datasets: one best per task
    for r in lb.rank_within([dict(r) for r in rows], split, sd.direction):
        if r["rank"] == 1 and r["state"] == "COMPLETE":
            label = ", ".join(f"{k} {r['_params'].get(k)}" for k in split)
            overview["best trial" + (f" ({label})" if label else "")] = r["trial"]
            overview[f"best {metric}" + (f" ({label})" if label else "")] = r["value"]
    page.h.append(_kv_html(overview))
    page.m.append(_kv_md(overview))


def _leaderboard(page: _Page, board: dict[str, Any], top: int) -> None:
    title = f"Leaderboard (top {top})" + (
        f", mean ± std over {', '.join(board['repeats'])}" if board["aggregated"] else ""
    )
    page.h.append(
        f"<h3>{_e(title)}</h3>"
        + _table_html(board)
        + "<p class='note'>every column (best/last epoch, all metrics, duration, GPU-hours, host, W&amp;B run): "
        + "report.md, report.json, or <code>orchestrate leaderboard --wide</code></p>"
    )
    page.m.append(f"### {title}\n\n" + lb.render([board], "markdown").split("\n", 2)[2])


def _architectures(page: _Page, url: str, sd: lb.StudyData, arch: str, metric: str) -> Any:
    """The ``--group-by`` table of the backbone-like parameter and its bar charts; returns its JSON table."""
    grouped = lb.build(url, studies=[sd], group_by=arch)[0]
    per = " × ".join(grouped["group_by"] or [arch])
    note = f" ({grouped['note']})" if grouped.get("note") else ""
    page.h.append(f"<h3>Architecture comparison (best per {_e(per)})</h3>")
    if note:
        page.h.append(f"<p class='note'>{_e(note.strip(' ()'))}</p>")
    page.h.append(_table_html(grouped))
    page.m.append(
        f"### Architecture comparison (best per {per})\n\n"
        + (f"{note.strip(' ()')}\n\n" if note else "")
        + lb.render([grouped], "markdown").split("\n", 2)[2]
    )
    # one chart panel per task/dataset/metric (lb.strata): bars of different tasks never share an axis
    others = [k for k in grouped["group_by"] or [] if k != arch]
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in grouped["rows"]:
        if lb._finite(r["value"]):
            label = ", ".join(f"{k} {r['_params'].get(k)}" for k in others)
            panels.setdefault(label, []).append(r)
    for i, (label, good) in enumerate(panels.items()):
        errs, what = _error_bars(grouped, good)
        page.chart(
            "architectures" if len(panels) == 1 else f"architectures-{i + 1}",
            bars_svg(
                f"{metric} per {arch}" + (f" — {label}" if label else ""),
                [str(r["_params"].get(arch)) for r in good],
                [float(r["value"]) for r in good],
                errs,
                metric,
                what,
            ),
            "Architecture comparison" + (f" — {label}" if label else "") + f" — {what}",
        )
    return json.loads(lb.render([grouped], "json"))["sweeps"][0]


def _error_bars(grouped: dict[str, Any], good: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """The error bar of each bar of an architecture panel, and what bar and error bar mean."""
    repeats = bool(grouped["aggregated"])
    folds = not repeats and all(r.get("value_std") is not None for r in good)  # `folds:` trials
    errs = [r.get("value_std") if repeats or folds else r.get("group_std") for r in good]
    if repeats:
        what = f"bar: best configuration's mean over {', '.join(grouped['repeats'])}; error bar: its std"
    elif folds:
        what = "bar: best configuration's mean over its folds; error bar: its std over folds"
    else:
        what = "bar: best trial; error bar: std over all complete trials with that value"
    return errs, what


def _curves(page: _Page, sd: lb.StudyData, top_trials: list[int], metric: str) -> None:
    page.h.append("<h3>Learning curves, optimisation history</h3><div class='charts'>")
    page.m.append("### Learning curves, optimisation history\n")
    page.chart(
        "curves", curves_svg(sd, top_trials, metric), f"{metric} per epoch of the top trials (dashed: pruned)"
    )
    page.chart("history", history_svg(sd, metric), f"{metric} of every trial in order, and the best so far")
    losses, n_folds = loss_curves_svg(sd, top_trials[:4])
    page.chart(
        "losses",
        losses,
        "train (dashed) and val (solid) loss per epoch of the top trials"
        + (f"; mean over up to {n_folds} folds, band: min–max over folds" if n_folds > 1 else ""),
    )
    page.h.append("</div>")


def _importances(page: _Page, url: str, sd: lb.StudyData) -> dict[str, Any]:
    """The importances chart (with a caution on few trials), or why there is none; returns the JSON entries.
    A sweep over tasks/datasets/metrics gets one chart per task (``importances_within``), never one over all."""
    page.h.append("<h3>Parameter importances</h3>")
    page.m.append("### Parameter importances\n")
    complete = [t for t in sd.trials if t.state == "COMPLETE" and t.value is not None]
    split = lb.strata(lb.varying([t.params for t in complete]))
    if not split:
        return _importance_chart(page, url, sd, {}, "importances")
    combos: dict[str, dict[str, Any]] = {}
    for t in complete:
        combo = {k: t.params.get(k) for k in split}
        combos.setdefault(json.dumps(combo, sort_keys=True, default=str), combo)
    data: dict[str, Any] = {"importances": {}, "importances_within": []}
    for i, combo in enumerate(combos.values(), 1):
        label = ", ".join(f"{k} {v}" for k, v in combo.items())
        page.h.append(f"<h4>{_e(label)}</h4>")
        page.m.append(f"#### {label}\n")
        data["importances_within"].append(
            {**combo, **_importance_chart(page, url, sd, combo, f"importances-{i}")}
        )
    return data


def _importance_chart(
    page: _Page, url: str, sd: lb.StudyData, within: dict[str, Any], kind: str
) -> dict[str, Any]:
    imp, note = importances(url, sd, within)
    data: dict[str, Any] = {"importances": dict(imp)}
    n_complete = sum(
        1 for t in sd.trials if t.state == "COMPLETE" and t.value is not None and _in(t.params, within)
    )
    if imp and n_complete < FEW_TRIALS:
        caution = (
            f"Caution: only {n_complete} complete trials (fewer than {FEW_TRIALS}): these importances rest on few "
            "points and may change with more trials."
        )
        page.h.append(f"<p class='note caution'>{_e(caution)}</p>")
        page.m.append(f"> {caution}\n")
        data["importances_caution"] = caution
    if imp:
        page.chart(kind, hbar_svg("Parameter importances", imp, note), note)
    else:
        page.note(note)
    return data


def _parallel(page: _Page, sd: lb.StudyData, rows: list[dict[str, Any]], metric: str) -> None:
    params = lb.varying([r["_params"] for r in rows])
    page.h.append("<h3>Parallel coordinates</h3>")
    page.m.append("### Parallel coordinates\n")
    pc = parallel_svg(rows, [p for p in params if not lb.is_repeat(p)], metric, sd.direction == "maximize")
    if pc:
        page.chart("parallel", pc, "one line per complete trial")
    else:
        page.h.append("<p class='note'>needs at least two complete trials and a varying parameter</p>")
        page.m.append("needs at least two complete trials and a varying parameter\n")


def _confusions(page: _Page, sd: lb.StudyData, top_trials: list[int]) -> None:
    page.h.append("<h3>Confusion matrices of the best trials</h3>")
    page.m.append("### Confusion matrices of the best trials\n")
    recs = {t.number: t for t in sd.trials}
    found = 0
    page.h.append("<div class='charts'>")
    for n in top_trials[:3]:
        for i, (key, classes, matrix) in enumerate(confusion_matrices(recs[n])):
            found += 1
            page.chart(
                f"confusion-{n}-{i}", heatmap_svg(f"trial {n}: {key}", classes, matrix), f"trial {n}: {key}"
            )
    page.h.append("</div>")
    if not found:
        page.note(
            "no confusion matrices recorded for these trials (the experiment logs them to W&B; "
            "a `…confusion` entry {classes, matrix} in its summary or run dir shows them here)"
        )


def _pruning(page: _Page, sd: lb.StudyData) -> dict[str, Any]:
    ps = pruning_summary(sd)
    page.h.append("<h3>Pruning summary</h3>")
    page.m.append("### Pruning summary\n")
    shown = {k.replace("_", " "): v for k, v in ps.items() if k != "pruned_at_epochs"}
    shown["pruned at epochs"] = ", ".join(map(str, ps["pruned_at_epochs"])) or "-"
    page.h.append(_kv_html(shown))
    page.m.append(_kv_md(shown))
    page.h.append(
        f"<p class='note'>epochs saved = Σ over pruned trials of (budget − epochs run); budget = the most epochs a "
        f"complete trial ran ({ps['epoch_budget']}); hours saved use the complete trials' mean epoch time.</p>"
    )
    return ps


def write_report(url: str, out: Path, sweeps: list[str] | None = None, top: int = 10) -> Path:
    """Write ``report.html``, ``report.md``, ``report.json`` and the SVG charts into ``out``; return the HTML path."""
    from orchestrator.trial.errors import UsageError

    if sweeps:
        names = lb.study_names(url)
        missing = [s for s in sweeps if s not in names]
        if missing:
            raise UsageError(
                f"no sweep named {', '.join(map(repr, missing))} in {mask_url(url)}",
                hint="sweeps there: " + (", ".join(names) or "none yet"),
            )
    studies = lb.load(url, sweeps, curves=True)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    html_parts = []
    md_parts = [f"# orchestrate report\n\nstorage `{mask_url(url)}`, generated {stamp}\n"]
    data: dict[str, Any] = {"storage": mask_url(url), "generated": stamp, "sweeps": {}}
    toc = []
    for sd in studies:
        h, m, d = _section(url, sd, out, top)
        html_parts.append(h)
        md_parts.append(m)
        data["sweeps"][sd.name] = d
        toc.append(f'<a href="#{_e(safe_name(sd.name))}">{_e(sd.name)}</a>')
    if not studies:
        html_parts.append("<p>no sweeps in this storage yet — run <code>orchestrate launch</code> first</p>")
        md_parts.append("no sweeps in this storage yet\n")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>orchestrate report</title>'
        f"<style>{CSS}</style></head><body><h1>orchestrate report</h1>"
        f"<p class='note'>storage <code>{_e(mask_url(url))}</code>, generated {stamp}. Sweeps: {' · '.join(toc)}</p>"
        + "\n".join(html_parts)
        + "</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    (out / "report.md").write_text("\n".join(md_parts), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return path
