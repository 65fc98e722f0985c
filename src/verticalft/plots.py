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

from verticalft.formatting import cpu_run, is_num, metrics_of, num, usd


def _loss_curves(manifest: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Every loss curve in the run: training stages, then each distilled student."""
    stages = manifest.get("stages", {})
    order = [s for s in manifest.get("stage_order", []) if s in stages] + [
        s for s in stages if s not in manifest.get("stage_order", [])
    ]
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in order:
        m = metrics_of(stages, name)
        if m.get("loss_curve"):
            curves[name] = m["loss_curve"]
        for student, st in (m.get("students") or {}).items():
            curve = (st.get("train") or {}).get("loss_curve")
            if curve:
                curves[f"{name}: {student}"] = curve
    out = {}
    for label, curve in curves.items():
        pts = [(p["step"], p["loss"]) for p in curve if is_num(p.get("step")) and is_num(p.get("loss"))]
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


def _plot_loss(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    curves = _loss_curves(manifest)
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


def _plot_latency(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    bench = metrics_of(manifest.get("stages", {}), "bench")
    models = {
        n: sorted((p for p in b.get("sweep") or [] if is_num(p.get("output_throughput"))), key=_conc)
        for n, b in (bench.get("models") or {}).items()
    }
    models = {n: s for n, s in models.items() if s}
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, sweep) in enumerate(models.items()):
        color = f"C{i}"
        x = [p["output_throughput"] for p in sweep]
        for key, style, tag in (("median_e2el_ms", "-o", "p50"), ("p99_e2el_ms", "--s", "p99")):
            pts = [(xi, p[key], p) for xi, p in zip(x, sweep, strict=True) if is_num(p.get(key))]
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
                        f"c={p.get('max_concurrency')}",
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                    )
    slo = (bench.get("slo") or {}).get("e2el_ms")
    if is_num(slo):
        ax.axhline(slo, color="grey", linestyle=":", label="e2e latency SLO")
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    title = f"Latency vs throughput (c = concurrency){suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _conc(p: dict[str, Any]) -> float:
    c = p.get("max_concurrency")
    return c if is_num(c) else math.inf


def _plot_monthly(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    cost = metrics_of(manifest.get("stages", {}), "cost")
    priced = cost.get("models") or {}
    apis: dict[str, float] = {}
    for c in priced.values():
        for api, x in (c.get("compare") or {}).items():
            if is_num(x.get("api_monthly_usd")):
                apis.setdefault(api, x["api_monthly_usd"])
    hosted = {
        n: c["self_hosted_monthly_usd"] for n, c in priced.items() if is_num(c.get("self_hosted_monthly_usd"))
    }
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
    daily = (cost.get("assumptions") or {}).get("daily_tokens")
    title = f"Monthly cost at {num(daily, '{:,.0f}')} tokens/day{suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


def _plot_quality(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    import matplotlib.pyplot as plt

    stages = manifest.get("stages", {})
    ev = metrics_of(stages, "eval").get("models") or {}
    priced = metrics_of(stages, "cost").get("models") or {}
    pts = [
        (n, priced[n]["effective_usd_per_m"], ev[n]["domain"]["score"])
        for n in ev
        if n in priced
        and is_num(priced[n].get("effective_usd_per_m"))
        and is_num((ev[n].get("domain") or {}).get("score"))
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


def _plot_routing(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    """Quality vs effective $/1M on the report half: each model alone, each cascade's thresholds
    (dots), its frontier (line) and the chosen point (star)."""
    import matplotlib.pyplot as plt

    m = metrics_of(manifest.get("stages", {}), "route")
    cascades, singles = m.get("cascades") or {}, m.get("singles") or {}
    ok = lambda p: is_num(p.get("usd_per_m")) and is_num(p.get("quality"))  # noqa: E731
    if not cascades and not singles:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for i, (name, cas) in enumerate(cascades.items()):
        color = f"C{i}"
        pts = [p for p in cas.get("points") or [] if ok(p)]
        ax.scatter([p["usd_per_m"] for p in pts], [p["quality"] for p in pts], color=color, s=8, alpha=0.35)
        front = sorted((p for p in cas.get("frontier") or [] if ok(p)), key=lambda p: p["usd_per_m"])
        ax.plot([p["usd_per_m"] for p in front], [p["quality"] for p in front], color=color, label=name)
        ch = cas.get("chosen") or {}
        if ok(ch):
            ax.scatter(
                [ch["usd_per_m"]],
                [ch["quality"]],
                color=color,
                marker="*",
                s=180,
                edgecolor="black",
                zorder=5,
            )
    for name, p in singles.items():
        if ok(p):
            ax.scatter([p["usd_per_m"]], [p["quality"]], color="black", marker="s", s=30, zorder=4)
            ax.annotate(
                name, (p["usd_per_m"], p["quality"]), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    xs = [p["usd_per_m"] for p in singles.values() if ok(p)] + [
        p["usd_per_m"] for cas in cascades.values() for p in cas.get("points") or [] if ok(p)
    ]
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


def _plot_calibration(manifest: dict[str, Any], path: Path, suffix: str) -> Path | None:
    """Reliability diagram: per confidence bin, accuracy against mean confidence, per model."""
    import matplotlib.pyplot as plt

    cal = metrics_of(manifest.get("stages", {}), "route").get("calibration") or {}
    cal = {n: x for n, x in cal.items() if x.get("bins")}
    if not cal:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for i, (name, x) in enumerate(cal.items()):
        bins = x["bins"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=f"C{i}",
                label=f"{name} (ECE {num(x.get('ece'), '{:.3f}')})")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (mean over the bin)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    title = f"Calibration{suffix}"
    ax.set_title(title)
    return _save(fig, path, title)


PLOTS: dict[str, Callable[[dict[str, Any], Path, str], Path | None]] = {
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
    suffix = " (CPU figures)" if cpu_run(manifest.get("stages", {})) else ""
    out: dict[str, Path] = {}
    for name, plot in PLOTS.items():
        try:
            path = plot(manifest, Path(out_dir) / f"{name}.png", suffix)
        except Exception as exc:  # noqa: BLE001 - see docstring
            warnings.warn(f"report: could not draw {name}.png: {exc!r}", stacklevel=2)
            continue
        if path is not None:
            out[name] = path
    return out
