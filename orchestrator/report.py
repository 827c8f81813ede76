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

Charts are drawn here as SVG (matplotlib is not a dependency). Epoch and trial axes have integer ticks; bar
charts of values that are all ≥ 0 start at 0.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

from orchestrator import leaderboard as lb
from orchestrator import storage as st
from orchestrator.faults import mask_url
from orchestrator.trial.rundir import safe_name

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
FEW_TRIALS = 10  # importances over fewer complete trials than this carry a caution
ARCH_PARAMS = ("backbone", "arch", "architecture", "model", "network", "net")
W, H = 640, 360
ML, MR, MT, MB = 64, 150, 36, 48  # margins: left (y labels), right (legend), top (title), bottom (x labels)


# ------------------------------------------------------------------------------------------ SVG drawing
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


class _Plot:
    """A linear x/y plot area with axes, ticks, a title and a legend."""

    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        xr: tuple[float, float],
        yr: tuple[float, float],
        width: int = W,
        height: int = H,
        right: int = MR,
        xticks: bool = True,
        integer_x: bool = False,
    ) -> None:
        self.w, self.h, self.right = width, height, right
        self.x0, self.x1 = xr
        self.y0, self.y1 = yr
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        if self.y1 <= self.y0:
            pad = abs(self.y0) * 0.05 or 0.5
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        self.parts: list[str] = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{ML}" y="20" font-size="13" font-weight="bold">{_e(title)}</text>',
        ]
        self.legend: list[tuple[str, str, str]] = []
        self.integer_x = integer_x  # epochs, trial numbers: whole ticks only
        self._axes(xlabel, ylabel, xticks)

    @property
    def pw(self) -> float:
        return self.w - ML - self.right

    @property
    def ph(self) -> float:
        return self.h - MT - MB

    def sx(self, x: float) -> float:
        return ML + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def sy(self, y: float) -> float:
        return MT + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.ph

    def _axes(self, xlabel: str, ylabel: str, xticks: bool) -> None:
        p = self.parts
        for t in _nice_ticks(self.y0, self.y1):
            y = self.sy(t)
            p.append(f'<line x1="{ML}" x2="{ML + self.pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            p.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        xt = _nice_ticks(self.x0, self.x1, 6) if xticks else []
        if self.integer_x and xt:
            step = max(1, math.ceil(xt[1] - xt[0]) if len(xt) > 1 else 1)
            xt = [float(v) for v in range(math.ceil(self.x0), math.floor(self.x1) + 1) if v % step == 0]
        for t in xt:
            x = self.sx(t)
            p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{MT + self.ph}" stroke="#f0f0f0"/>')
            p.append(f'<text x="{x:.1f}" y="{MT + self.ph + 15}" text-anchor="middle">{_fmt(t)}</text>')
        p.append(
            f'<rect x="{ML}" y="{MT}" width="{self.pw:.1f}" height="{self.ph:.1f}" fill="none" stroke="#999"/>'
        )
        p.append(
            f'<text x="{ML + self.pw / 2:.1f}" y="{self.h - 10}" text-anchor="middle">{_e(xlabel)}</text>'
        )
        p.append(
            f'<text transform="translate(14 {MT + self.ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
            f"{_e(ylabel)}</text>"
        )

    def line(
        self, pts: list[tuple[float, float]], color: str, label: str | None = None, dash: str = ""
    ) -> None:
        if not pts:
            return
        d = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in pts)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.8"{extra}/>')
        if label:
            self.legend.append((label, color, "line"))

    def band(self, lows: list[tuple[float, float]], highs: list[tuple[float, float]], color: str) -> None:
        """A shaded area between two curves (the spread over folds)."""
        if len(lows) < 2:
            return
        pts = [*lows, *reversed(highs)]
        d = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in pts)
        self.parts.append(f'<polygon points="{d}" fill="{color}" opacity="0.15" stroke="none"/>')

    def dots(
        self, pts: list[tuple[float, float]], color: str, label: str | None = None, hollow: bool = False
    ) -> None:
        for x, y in pts:
            fill = "white" if hollow else color
            self.parts.append(
                f'<circle cx="{self.sx(x):.1f}" cy="{self.sy(y):.1f}" r="3.2" fill="{fill}" stroke="{color}"/>'
            )
        if label and pts:
            self.legend.append((label, color, "hollow" if hollow else "dot"))

    def svg(self) -> str:
        lx = ML + self.pw + 12
        for i, (label, color, kind) in enumerate(self.legend[:16]):
            y = MT + 8 + i * 16
            if kind == "line":
                self.parts.append(
                    f'<line x1="{lx}" x2="{lx + 16}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2"/>'
                )
            else:
                fill = "white" if kind == "hollow" else color
                self.parts.append(f'<circle cx="{lx + 8}" cy="{y}" r="3.5" fill="{fill}" stroke="{color}"/>')
            self.parts.append(f'<text x="{lx + 22}" y="{y + 4}">{_e(label)}</text>')
        return "\n".join(self.parts + ["</svg>"])


def _range(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or (abs(hi) or 1.0)
    return lo - span * pad, hi + span * pad


def curves_svg(sd: lb.StudyData, trials: list[int], metric: str) -> str | None:
    recs = {t.number: t for t in sd.trials}
    series: list[tuple[int, list[tuple[float, float]]]] = []
    for n in trials:
        if n in recs:
            pts = [(float(s), v) for s, v in sorted(recs[n].inter.items()) if math.isfinite(v)]
            if pts:
                series.append((n, pts))
    if not series:
        return None
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    plot = _Plot(
        f"Learning curves of the top {len(series)} trials",
        "epoch",
        metric,
        (min(xs), max(xs)),
        _range(ys),
        integer_x=True,
    )
    for i, (n, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        state = recs[n].state
        plot.line(
            pts,
            color,
            f"trial {n}" + (" (pruned)" if state == "PRUNED" else ""),
            "4 3" if state == "PRUNED" else "",
        )
        plot.dots(pts[-1:], color)
    return plot.svg()


def _epoch_metrics(run_dir: Path, keys: tuple[str, ...]) -> list[dict[str, dict[int, float]]]:
    """Per job of a trial (its folds, or itself): ``{key: {epoch: value}}`` from ``metrics.jsonl``."""
    files = sorted(run_dir.glob("fold*/metrics.jsonl")) or [run_dir / "metrics.jsonl"]
    jobs = []
    for path in files:
        curves: dict[str, dict[int, float]] = {k: {} for k in keys}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = row.get("step") if isinstance(row, dict) else None
            if not isinstance(step, int):
                continue
            for k in keys:
                v = lb._num(row.get(k))
                if v is not None and math.isfinite(v):
                    curves[k][step] = v
        if any(curves.values()):
            jobs.append(curves)
    return jobs


def loss_curves_svg(sd: lb.StudyData, trials: list[int]) -> tuple[str | None, int]:
    """Train (dashed) and val (solid) loss per epoch of each trial; with folds, the mean over the folds and a
    min–max band. Also the largest number of folds seen (for the caption)."""
    recs = {t.number: t for t in sd.trials}
    plot_data = []
    most = 0
    for n in trials:
        run_dir = recs[n].attrs.get(st.ATTR_RUN_DIR) if n in recs else None
        if not run_dir:
            continue
        jobs = _epoch_metrics(Path(run_dir), ("train/loss", "val/loss"))
        if not jobs:
            continue
        most = max(most, len(jobs))
        series = {}
        for key in ("train/loss", "val/loss"):
            epochs = sorted({e for j in jobs for e in j[key]})
            mean, low, high = [], [], []
            for e in epochs:
                vals = [j[key][e] for j in jobs if e in j[key]]
                mean.append((float(e), sum(vals) / len(vals)))
                low.append((float(e), min(vals)))
                high.append((float(e), max(vals)))
            series[key] = (mean, low, high)
        plot_data.append((n, series))
    if not plot_data:
        return None, 0
    xs = [x for _, s in plot_data for m, _, _ in s.values() for x, _ in m]
    ys = [y for _, s in plot_data for _, lo, hi in s.values() for _, y in lo + hi]
    plot = _Plot(
        f"Train and val loss of the top {len(plot_data)} trials",
        "epoch",
        "loss",
        (min(xs), max(xs)),
        _range(ys),
        integer_x=True,
    )
    for i, (n, series) in enumerate(plot_data):
        color = PALETTE[i % len(PALETTE)]
        for key, (mean, low, high) in series.items():
            if most > 1:
                plot.band(low, high, color)
            train = key == "train/loss"
            plot.line(mean, color, f"trial {n} {'train' if train else 'val'}", "5 3" if train else "")
    return plot.svg(), most


def history_svg(sd: lb.StudyData, metric: str) -> str | None:
    rows = lb.trial_rows(sd)
    done = [
        (float(r["trial"]), float(r["value"]))
        for r in rows
        if r["state"] == "COMPLETE" and lb._finite(r["value"])
    ]
    pruned = [
        (float(r["trial"]), float(r["best"]))
        for r in rows
        if r["state"] == "PRUNED" and lb._finite(r["best"])
    ]
    if not done and not pruned:
        return None
    xs = [x for x, _ in done + pruned]
    ys = [y for _, y in done + pruned]
    plot = _Plot(
        "Optimisation history", "trial", metric, (min(xs) - 0.5, max(xs) + 0.5), _range(ys), integer_x=True
    )
    plot.dots(pruned, "#999999", "pruned (best epoch)", hollow=True)
    plot.dots(done, PALETTE[0], "complete")
    best: list[tuple[float, float]] = []
    cur: float | None = None
    for x, y in sorted(done):
        if cur is None or (y > cur if sd.direction == "maximize" else y < cur):
            cur = y
        best.append((x, cur))
    plot.line(best, PALETTE[3], "best so far")
    return plot.svg()


def hbar_svg(title: str, items: list[tuple[str, float]], xlabel: str) -> str:
    height = MT + MB + 26 * len(items)
    left = 20 + 7 * max(len(k) for k, _ in items)
    width = W
    x1 = max(v for _, v in items) or 1.0
    pw = width - left - 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="13" font-weight="bold">{_e(title)}</text>',
    ]
    for i, (k, v) in enumerate(items):
        y = MT + i * 26
        bw = max(1.0, v / x1 * pw)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{_e(k)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{bw:.1f}" height="18" fill="{PALETTE[0]}"/>')
        parts.append(f'<text x="{left + bw + 5:.1f}" y="{y + 15}">{v:.3f}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 12}" text-anchor="middle">{_e(xlabel)}</text>')
    return "\n".join(parts + ["</svg>"])


def bars_svg(
    title: str, labels: list[str], values: list[float], errors: list[float | None], ylabel: str, caption: str
) -> str:
    tops = [v + (e or 0) for v, e in zip(values, errors, strict=True)]
    lows = [v - (e or 0) for v, e in zip(values, errors, strict=True)]
    lo, hi = _range(lows + tops, 0.15)
    if all(v >= 0 for v in values):
        lo = 0.0  # a bar's length is its value: bars start at 0
    n = len(labels)
    plot = _Plot(title, caption, ylabel, (-0.5, n - 0.5), (lo, hi), right=20, xticks=False)
    bw = plot.pw / n * 0.6
    for i, (label, v, e) in enumerate(zip(labels, values, errors, strict=True)):
        x = plot.sx(i)
        y0, y = plot.sy(max(lo, 0.0) if lo <= 0 <= hi else lo), plot.sy(v)
        top, height = min(y, y0), abs(y0 - y)
        plot.parts.append(
            f'<rect x="{x - bw / 2:.1f}" y="{top:.1f}" width="{bw:.1f}" height="{height:.1f}" '
            f'fill="{PALETTE[i % len(PALETTE)]}" opacity="0.85"/>'
        )
        if e:
            ya, yb = plot.sy(v - e), plot.sy(v + e)
            plot.parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ya:.1f}" y2="{yb:.1f}" stroke="black" stroke-width="1.5"/>'
                f'<line x1="{x - 8:.1f}" x2="{x + 8:.1f}" y1="{ya:.1f}" y2="{ya:.1f}" stroke="black"/>'
                f'<line x1="{x - 8:.1f}" x2="{x + 8:.1f}" y1="{yb:.1f}" y2="{yb:.1f}" stroke="black"/>'
            )
        label_y = min(top, plot.sy(v + e) if e else top) - 5
        plot.parts.append(f'<text x="{x:.1f}" y="{label_y:.1f}" text-anchor="middle">{_fmt(v)}</text>')
        plot.parts.append(
            f'<text x="{x:.1f}" y="{MT + plot.ph + 15}" text-anchor="middle">{_e(label)}</text>'
        )
    return plot.svg()


def parallel_svg(rows: list[dict[str, Any]], params: list[str], metric: str, maximize: bool) -> str | None:
    rows = [r for r in rows if r["state"] == "COMPLETE" and lb._finite(r["value"])]
    if len(rows) < 2 or not params:
        return None
    axes = [*params, metric]
    width = max(W, 150 * len(axes))
    left, right, top, bottom = 70, 70, 62, 40
    step = (width - left - right) / max(1, len(axes) - 1)
    ph = H - top - bottom
    vals = [r["value"] for r in rows]
    vlo, vhi = min(vals), max(vals)
    scales: list[Any] = []
    for name in axes:
        col = [r["value"] if name == metric else r["_params"].get(name) for r in rows]
        nums = [lb._num(v) for v in col]
        if all(n is not None for n in nums) and not all(isinstance(v, str) for v in col):
            fl = [float(n) for n in nums if n is not None]
            log = min(fl) > 0 and max(fl) / min(fl) >= 100
            tr = (math.log10) if log else (lambda v: v)
            lo, hi = tr(min(fl)), tr(max(fl))
            span = (hi - lo) or 1.0
            ticks = sorted(set(fl))
            if len(ticks) > 6:
                ticks = [min(fl), max(fl)]
            scales.append(("num", tr, lo, span, ticks, log))
        else:
            cats = sorted({json.dumps(v, default=str) if not isinstance(v, str) else v for v in col})
            scales.append(("cat", cats))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" viewBox="0 0 {width} {H}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{H}" fill="white"/>',
        '<text x="10" y="20" font-size="13" font-weight="bold">Parallel coordinates (complete trials; colour = '
        f"{_e(metric)}, darker is better)</text>",
    ]

    def ypos(scale: Any, v: Any) -> float:
        if scale[0] == "num":
            _, tr, lo, span, _, _ = scale
            return top + (1 - (tr(float(v)) - lo) / span) * ph
        cats = scale[1]
        key = json.dumps(v, default=str) if not isinstance(v, str) else v
        i = cats.index(key)
        return top + (1 - (i / (len(cats) - 1) if len(cats) > 1 else 0.5)) * ph

    ordered = sorted(rows, key=lambda r: r["value"] if maximize else -r["value"])
    for r in ordered:
        q = (r["value"] - vlo) / ((vhi - vlo) or 1.0)
        q = q if maximize else 1 - q
        light = int(215 - 175 * q)
        color = f"rgb({light},{light + 15 if light < 240 else 255},255)"
        pts = []
        for i, (name, scale) in enumerate(zip(axes, scales, strict=True)):
            v = r["value"] if name == metric else r["_params"].get(name)
            pts.append(f"{left + i * step:.1f},{ypos(scale, v):.1f}")
        parts.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="1.6" opacity="0.9"/>'
        )
    for i, (name, scale) in enumerate(zip(axes, scales, strict=True)):
        x = left + i * step
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{top - 16}" text-anchor="middle" font-weight="bold">{_e(name)}</text>'
        )
        if scale[0] == "num":
            for t in scale[4]:
                parts.append(f'<text x="{x + 4:.1f}" y="{ypos(scale, t) + 4:.1f}">{_fmt(float(t))}</text>')
            if scale[5]:
                parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">(log)</text>')
        else:
            for c in scale[1]:
                parts.append(f'<text x="{x + 4:.1f}" y="{ypos(scale, c) + 4:.1f}">{_e(c)}</text>')
    return "\n".join(parts + ["</svg>"])


def heatmap_svg(title: str, classes: list[str], matrix: list[list[float]]) -> str:
    n = len(matrix)
    cell = max(18, min(48, 360 // max(1, n)))
    left, top = 40 + 7 * max((len(c) for c in classes), default=4), 60
    width = max(left + cell * n + 30, 20 + 7 * len(title))
    height = top + cell * n + 50
    peak = max((v for row in matrix for v in row), default=1) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="10">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="18" font-size="12" font-weight="bold">{_e(title)}</text>',
        f'<text x="{left + cell * n / 2:.1f}" y="{top - 26}" text-anchor="middle">predicted</text>',
        f'<text transform="translate(12 {top + cell * n / 2:.1f}) rotate(-90)" text-anchor="middle">true</text>',
    ]
    for j, c in enumerate(classes):
        parts.append(
            f'<text x="{left + j * cell + cell / 2:.1f}" y="{top - 6}" text-anchor="middle">{_e(c)}</text>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{top + j * cell + cell / 2 + 4:.1f}" text-anchor="end">{_e(c)}</text>'
        )
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            q = v / peak
            shade = int(255 - 200 * q)
            fg = "white" if q > 0.55 else "black"
            x, y = left + j * cell, top + i * cell
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({shade},{shade},255)" stroke="#ddd"/>'
            )
            parts.append(
                f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" fill="{fg}">{_fmt(float(v))}</text>'
            )
    return "\n".join(parts + ["</svg>"])


# --------------------------------------------------------------------------------------- the sections
def importances(url: str, sd: lb.StudyData) -> tuple[list[tuple[str, float]], str]:
    """Optuna's parameter importances, or a note saying why there are none."""
    complete = [t for t in sd.trials if t.state == "COMPLETE" and t.value is not None]
    if len(complete) < 3:
        return [], f"too few complete trials for parameter importances ({len(complete)}; need at least 3)"
    varying = lb.varying([t.params for t in complete])
    if not varying:
        return [], "no parameter varies among the complete trials"
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=sd.name, storage=st.get_storage(url))
    evaluator: Any
    if len(complete) <= 1000:
        evaluator, name = FanovaImportanceEvaluator(seed=0), "fANOVA"
    else:
        evaluator, name = PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
    except Exception as exc:  # noqa: BLE001 - too few distinct values, conditional params …
        return [], f"parameter importances unavailable: {type(exc).__name__}: {exc}"
    return [(k, float(v)) for k, v in imp.items()], f"{name} over {len(complete)} complete trials (Optuna)"


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


def _section(url: str, sd: lb.StudyData, out: Path, top: int) -> tuple[str, str, dict[str, Any]]:
    """(html, markdown, json tables) of one sweep."""
    name = sd.name
    metric = sd.metric or "objective"
    slug = safe_name(name)
    h: list[str] = [f'<h2 id="{_e(slug)}">{_e(name)}</h2>']
    m: list[str] = [f"## {name}\n"]

    def chart(kind: str, svg: str | None, caption: str) -> None:
        if svg is None:
            return
        file = f"{slug}-{kind}.svg"
        (out / file).write_text(svg, encoding="utf-8")
        h.append(f"<figure>{svg}<figcaption class='note'>{_e(caption)}</figcaption></figure>")
        m.append(f"![{caption}]({file})\n")

    rows = lb.trial_rows(sd)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    tables = lb.build(url, studies=[sd], top=top)
    board = tables[0]
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
    h.append(_kv_html(overview))
    m.append(_kv_md(overview))

    title = f"Leaderboard (top {top})" + (
        f", mean ± std over {', '.join(board['repeats'])}" if board["aggregated"] else ""
    )
    h.append(
        f"<h3>{_e(title)}</h3>"
        + _table_html(board)
        + "<p class='note'>every column (best/last epoch, all metrics, duration, GPU-hours, host, W&amp;B run): "
        + "report.md, report.json, or <code>orchestrate leaderboard --wide</code></p>"
    )
    m.append(f"### {title}\n\n" + lb.render([board], "markdown").split("\n", 2)[2])

    arch = _arch_param(board) if not board.get("group_by") else None
    data: dict[str, Any] = {"leaderboard": json.loads(lb.render([board], "json"))["sweeps"][0]}
    if arch:
        grouped = lb.build(url, studies=[sd], group_by=arch)[0]
        data["architectures"] = json.loads(lb.render([grouped], "json"))["sweeps"][0]
        per = " × ".join(grouped["group_by"] or [arch])
        note = f" ({grouped['note']})" if grouped.get("note") else ""
        h.append(f"<h3>Architecture comparison (best per {_e(per)})</h3>")
        if note:
            h.append(f"<p class='note'>{_e(note.strip(' ()'))}</p>")
        h.append(_table_html(grouped))
        m.append(
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
            repeats = bool(grouped["aggregated"])
            folds = not repeats and all(r.get("value_std") is not None for r in good)  # `folds:` trials
            errs = [r.get("value_std") if repeats or folds else r.get("group_std") for r in good]
            if repeats:
                what = (
                    f"bar: best configuration's mean over {', '.join(grouped['repeats'])}; error bar: its std"
                )
            elif folds:
                what = "bar: best configuration's mean over its folds; error bar: its std over folds"
            else:
                what = "bar: best trial; error bar: std over all complete trials with that value"
            chart(
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

    top_trials = [int(r["trial"]) for r in lb.rank([dict(r) for r in rows], sd.direction)[: min(top, 8)]]
    h.append("<h3>Learning curves, optimisation history</h3><div class='charts'>")
    m.append("### Learning curves, optimisation history\n")
    chart(
        "curves", curves_svg(sd, top_trials, metric), f"{metric} per epoch of the top trials (dashed: pruned)"
    )
    chart("history", history_svg(sd, metric), f"{metric} of every trial in order, and the best so far")
    losses, n_folds = loss_curves_svg(sd, top_trials[:4])
    chart(
        "losses",
        losses,
        "train (dashed) and val (solid) loss per epoch of the top trials"
        + (f"; mean over up to {n_folds} folds, band: min–max over folds" if n_folds > 1 else ""),
    )
    h.append("</div>")

    imp, note = importances(url, sd)
    data["importances"] = dict(imp)
    h.append("<h3>Parameter importances</h3>")
    m.append("### Parameter importances\n")
    n_complete = sum(1 for t in sd.trials if t.state == "COMPLETE" and t.value is not None)
    if imp and n_complete < FEW_TRIALS:
        caution = (
            f"Caution: only {n_complete} complete trials (fewer than {FEW_TRIALS}): these importances rest on few "
            "points and may change with more trials."
        )
        h.append(f"<p class='note caution'>{_e(caution)}</p>")
        m.append(f"> {caution}\n")
        data["importances_caution"] = caution
    if imp:
        chart("importances", hbar_svg("Parameter importances", imp, note), note)
    else:
        h.append(f"<p class='note'>{_e(note)}</p>")
        m.append(f"{note}\n")

    params = lb.varying([r["_params"] for r in rows])
    h.append("<h3>Parallel coordinates</h3>")
    m.append("### Parallel coordinates\n")
    pc = parallel_svg(rows, [p for p in params if not lb.is_repeat(p)], metric, sd.direction == "maximize")
    if pc:
        chart("parallel", pc, "one line per complete trial")
    else:
        h.append("<p class='note'>needs at least two complete trials and a varying parameter</p>")
        m.append("needs at least two complete trials and a varying parameter\n")

    h.append("<h3>Confusion matrices of the best trials</h3>")
    m.append("### Confusion matrices of the best trials\n")
    recs = {t.number: t for t in sd.trials}
    found = 0
    h.append("<div class='charts'>")
    for n in top_trials[:3]:
        for i, (key, classes, matrix) in enumerate(confusion_matrices(recs[n])):
            found += 1
            chart(
                f"confusion-{n}-{i}", heatmap_svg(f"trial {n}: {key}", classes, matrix), f"trial {n}: {key}"
            )
    h.append("</div>")
    if not found:
        note = (
            "no confusion matrices recorded for these trials (the experiment logs them to W&B; "
            "a `…confusion` entry {classes, matrix} in its summary or run dir shows them here)"
        )
        h.append(f"<p class='note'>{_e(note)}</p>")
        m.append(f"{note}\n")

    ps = pruning_summary(sd)
    data["pruning"] = ps
    h.append("<h3>Pruning summary</h3>")
    m.append("### Pruning summary\n")
    shown = {k.replace("_", " "): v for k, v in ps.items() if k != "pruned_at_epochs"}
    shown["pruned at epochs"] = ", ".join(map(str, ps["pruned_at_epochs"])) or "-"
    h.append(_kv_html(shown))
    m.append(_kv_md(shown))
    h.append(
        f"<p class='note'>epochs saved = Σ over pruned trials of (budget − epochs run); budget = the most epochs a "
        f"complete trial ran ({ps['epoch_budget']}); hours saved use the complete trials' mean epoch time.</p>"
    )
    return "\n".join(h), "\n".join(m), data


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
