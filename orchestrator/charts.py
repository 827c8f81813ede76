"""The chart kit of ``orchestrate report``: SVG drawn by hand (matplotlib is not a dependency), one function per
chart, each returning the ``<svg>`` text (or None when there is nothing to draw).

:class:`_Plot` is a linear x/y plot area (axes, ticks, title, legend) on which lines, bands and dots are drawn;
the bar, horizontal-bar, parallel-coordinates and heat-map charts lay themselves out. Epoch and trial axes have
integer ticks; bar charts of values that are all ≥ 0 start at 0.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from orchestrator import leaderboard as lb
from orchestrator import storage as st

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
    """Every trial's value in order and the best so far; a sweep over tasks/datasets/metrics gets a best-so-far
    line (and a colour) per task, never one line across values of different tasks."""
    rows = lb.trial_rows(sd)
    split = lb.strata(lb.varying([r["_params"] for r in rows]))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{k} {r['_params'].get(k)}" for k in split)
        groups.setdefault(label, []).append(r)
    series = []
    for label, group in groups.items():
        done = [
            (float(r["trial"]), float(r["value"]))
            for r in group
            if r["state"] == "COMPLETE" and lb._finite(r["value"])
        ]
        pruned = [
            (float(r["trial"]), float(r["best"]))
            for r in group
            if r["state"] == "PRUNED" and lb._finite(r["best"])
        ]
        series.append((label, done, pruned))
    points = [p for _, done, pruned in series for p in done + pruned]
    if not points:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    plot = _Plot(
        "Optimisation history", "trial", metric, (min(xs) - 0.5, max(xs) + 0.5), _range(ys), integer_x=True
    )
    for i, (label, done, pruned) in enumerate(series):
        tag = f" ({label})" if label else ""
        plot.dots(pruned, "#999999", f"pruned (best epoch){tag}", hollow=True)
        plot.dots(done, PALETTE[(2 * i) % len(PALETTE)], f"complete{tag}")
        best: list[tuple[float, float]] = []
        cur: float | None = None
        for x, y in sorted(done):
            if cur is None or (y > cur if sd.direction == "maximize" else y < cur):
                cur = y
            best.append((x, cur))
        plot.line(best, PALETTE[(2 * i + 3) % len(PALETTE)], f"best so far{tag}")
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
