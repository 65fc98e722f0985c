"""The report's PNG plots (matplotlib, Agg backend), each drawn only when the manifest has its data:
training loss curves, latency vs throughput over the concurrency sweep, monthly cost vs each API,
quality vs cost. Titles say "(CPU figures)" on CPU runs. Images are written atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from verticalft.formatting import is_num, num, usd
from verticalft.metrics import BenchPoint, CascadePoint, LossPoint, RunMetrics, load_run


def _loss_curves(run: RunMetrics) -> dict[str, list[tuple[float, float]]]:
    """Every loss curve in the run: training stages, then each distilled student."""
    curves: dict[str, list[LossPoint]] = {}
    for name in run.stage_order:
        training = run.training(name)
        if training and training.loss_curve:
            curves[name] = training.loss_curve
        students = run.distill.students if name == "distill" and run.distill else {}
        for student, st in students.items():
            if st.train.loss_curve:
                curves[f"{name}: {student}"] = st.train.loss_curve
    out = {}
    for label, curve in curves.items():
        pts = [(p.step, p.loss) for p in curve if is_num(p.step) and is_num(p.loss)]
        if pts:
            out[label] = pts
    return out


def _save(fig: Any, path: Path, title: str) -> Path:
    """Write the PNG atomically (temp file in the same dir, then rename) and free the figure."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110, metadata={"Title": title})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _plot_loss(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    curves = _loss_curves(run)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    title = "Training loss"
    ax.set_title(title)
    return _save(fig, path, title)


def _plot_latency(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    if run.bench is None:
        return None
    bench = run.bench
    models = {
        n: sorted((p for p in b.sweep if is_num(p.output_throughput)), key=_conc)
        for n, b in bench.models.items()
    }
    models = {n: s for n, s in models.items() if s}
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, sweep) in enumerate(models.items()):
        color = f"C{i}"
        for key, style, tag in (("median_e2el_ms", "-o", "p50"), ("p99_e2el_ms", "--s", "p99")):
            pts = [
                (xi, yi, p)
                for p in sweep
                if is_num(xi := p.output_throughput) and is_num(yi := getattr(p, key))
            ]
            if not pts:
                continue
            ax.plot(
                [q[0] for q in pts],
                [q[1] for q in pts],
                style,
                color=color,
                label=f"{name} {tag}",
                markersize=4,
            )
            if tag == "p50":
                for xi, yi, p in pts:
                    ax.annotate(
                        f"c={p.max_concurrency}",
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                    )
    slo = bench.slo.get("e2el_ms")
    if is_num(slo):
        ax.axhline(slo, color="grey", linestyle=":", label="e2e latency SLO")
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    title = f"Latency vs throughput (c = concurrency){suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _conc(p: BenchPoint) -> float:
    c = p.max_concurrency
    return c if is_num(c) else math.inf


def _plot_monthly(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    if run.cost is None:
        return None
    priced = run.cost.models
    apis: dict[str, float] = {}
    for c in priced.values():
        for api, x in c.compare.items():
            if is_num(x.api_monthly_usd):
                apis.setdefault(api, x.api_monthly_usd)
    hosted = {n: c.self_hosted_monthly_usd for n, c in priced.items() if is_num(c.self_hosted_monthly_usd)}
    if not hosted:
        return None
    labels = [f"{a} (API)" for a in apis] + [f"{n} (self-hosted)" for n in hosted]
    values = list(apis.values()) + list(hosted.values())
    colors = ["#d8643b"] * len(apis) + ["#3b7dd8"] * len(hosted)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.5))
    bars = ax.bar(range(len(values)), values, color=colors)
    if min(values) > 0 and max(values) / min(values) > 30:  # a $1,350 bill would flatten a $7 one
        ax.set_yscale("log")
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(usd(v), (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("USD per month")
    daily = run.cost.assumptions.daily_tokens
    title = f"Monthly cost at {num(daily, '{:,.0f}')} tokens/day{suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _plot_quality(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    ev = run.eval.models if run.eval else {}
    priced = run.cost.models if run.cost else {}
    pts = [
        (n, x, ev[n].domain.score)
        for n in ev
        if n in priced and is_num(x := priced[n].effective_usd_per_m) and is_num(ev[n].domain.score)
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (name, x, y) in enumerate(pts):
        ax.scatter([x], [y], color=f"C{i}", s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs = [p[1] for p in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("effective $ per 1M tokens at the stated volume")
    ax.set_ylabel("domain eval score")
    ax.margins(x=0.15, y=0.15)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    title = f"Quality vs cost{suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _xy(points: list[CascadePoint]) -> tuple[list[float], list[float]]:
    """$/1M and quality of the points that have both (an unpriceable point has no $/1M)."""
    priced = [(x, p.quality) for p in points if is_num(x := p.usd_per_m) and is_num(p.quality)]
    return [x for x, _ in priced], [y for _, y in priced]


def _plot_routing(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    """Quality vs effective $/1M on the report half: each model alone, each cascade's thresholds
    (dots), its frontier (line) and the chosen point (star)."""
    import matplotlib.pyplot as plt

    if run.route is None:
        return None
    cascades, singles = run.route.cascades, run.route.singles
    if not cascades and not singles:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for i, (name, cas) in enumerate(cascades.items()):
        color = f"C{i}"
        ax.scatter(*_xy(cas.points), color=color, s=8, alpha=0.35)
        ax.plot(*_xy(sorted(cas.frontier, key=lambda p: p.usd_per_m or 0.0)), color=color, label=name)
        ch_x, ch_y = _xy([cas.chosen])
        if ch_x:
            ax.scatter(
                ch_x,
                ch_y,
                color=color,
                marker="*",
                s=180,
                edgecolor="black",
                zorder=5,
            )
    for name, p in singles.items():
        x, y = _xy([p])
        if x:
            ax.scatter(x, y, color="black", marker="s", s=30, zorder=4)
            ax.annotate(name, (x[0], y[0]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs = _xy(list(singles.values()))[0] + [x for cas in cascades.values() for x in _xy(cas.points)[0]]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("effective $ per 1M tokens (escalations pay both tiers)")
    ax.set_ylabel("domain eval score (report half)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if cascades:
        ax.legend(fontsize=8, loc="lower right")
    title = f"Routing frontier (★ chosen, ■ single models){suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _plot_calibration(run: RunMetrics, path: Path, suffix: str) -> Path | None:
    """Reliability diagram: per confidence bin, accuracy against mean confidence, per model."""
    import matplotlib.pyplot as plt

    cal = {n: x for n, x in (run.route.calibration if run.route else {}).items() if x.bins}
    if not cal:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for i, (name, x) in enumerate(cal.items()):
        bins = x.bins
        ax.plot(
            [b.confidence for b in bins],
            [b.accuracy for b in bins],
            marker="o",
            color=f"C{i}",
            label=f"{name} (ECE {num(x.ece, '{:.3f}')})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (mean over the bin)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    title = f"Calibration{suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


PLOTS: dict[str, Callable[[RunMetrics, Path, str], Path | None]] = {
    "quality_vs_cost": _plot_quality,
    "routing_frontier": _plot_routing,
    "calibration": _plot_calibration,
    "monthly_cost": _plot_monthly,
    "latency_vs_throughput": _plot_latency,
    "loss_curves": _plot_loss,
}


def write_plots(manifest: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw every plot the manifest has data for into `out_dir`; returns only those drawn.

    A plot that fails to draw is reported as a warning and left out: the report (which is also
    written after a failed run) must not be lost to a plotting problem.
    """
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(manifest)
    suffix = " (CPU figures)" if run.cpu else ""
    out: dict[str, Path] = {}
    for name, plot in PLOTS.items():
        try:
            path = plot(run, Path(out_dir) / f"{name}.png", suffix)
        except Exception as exc:  # noqa: BLE001 - see docstring
            warnings.warn(f"report: could not draw {name}.png: {exc!r}", stacklevel=2)
            continue
        if path is not None:
            out[name] = path
    return out
