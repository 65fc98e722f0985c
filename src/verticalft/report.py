"""The run report: `runs/<recipe>/<profile>/report.md` (+ `plots/*.png`), rebuilt from the manifest.

The first screen answers "buy or not": one row per model with its eval score, retention, effective
and saturated $/1M tokens, latency and throughput at the priced operating point, then sentences
computed from those numbers (student vs teacher, self-hosted vs each API with payback and
break-even volume). Then the routing decision (which model answers, when it escalates), the
assumptions the dollars rest on (each API price with its source), the bandwidth bound next to the
measured decode speed, the GPU spend so far, and the per-stage detail. Every figure is read from
`manifest.json`; nothing here is measured or hard-coded.

`render` is pure (manifest in, markdown out) so it is testable and cheap; `plots.write_plots` draws the
PNGs and `write_report` ties both to the run directory. matplotlib is imported only when plotting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from verticalft.formatting import is_num, num, score, usd
from verticalft.metrics import (
    ApiPrice,
    BenchMetrics,
    CostAssumptions,
    CostMetrics,
    CostModel,
    CptMetrics,
    DistillMetrics,
    DpoMetrics,
    EvalMetrics,
    MetricsError,
    RouteMetrics,
    RunMetrics,
    load_run,
)
from verticalft.rundir import RunDir, atomic_write_text
from verticalft.stages import registry

PLOT_ALTS = {
    "quality_vs_cost": "eval score vs effective $/1M tokens",
    "routing_frontier": "routing frontier: quality vs effective $/1M, single models and cascades",
    "calibration": "reliability diagram: confidence vs accuracy per model",
    "monthly_cost": "monthly bill: APIs vs self-hosted",
    "latency_vs_throughput": "end-to-end latency vs output throughput",
    "loss_curves": "training loss curves",
    "funnel": "curation funnel",
}


# ---- formatting (the rest: verticalft.formatting)


def _months(p: Any) -> str:
    """Payback period; None means the savings never repay the spend (the API is cheaper)."""
    if p is None:
        return "never"
    if not is_num(p):
        return "–"
    return "< 0.01 months" if p < 0.01 else f"{p:,.2f} months"


# ---- the report


def render(manifest: dict[str, Any], title: str, images: dict[str, str] | None = None) -> str:
    """The markdown report; `images` maps plot name → path relative to report.md (from `write_report`).
    The manifest is read once, through the metrics contract (`metrics.load_run`)."""
    images = images or {}
    run = load_run(manifest)
    lines = [f"# {title}"]
    decision = _decision_section(run, images)
    lines += decision
    lines += _routing_section(run.route, images)
    lines += _general_section(run.eval)
    lines += _assumptions_section(run, note_shown=bool(decision))
    lines += _physical_section(run, images)
    lines += _training_cost_section(run.cost)
    lines += _stage_section(run, images)
    lines += _distill_section(run.distill)
    lines += ["", "Every number comes from `manifest.json` next to this file.", ""]
    return "\n".join(lines)


def _img(images: dict[str, str], name: str) -> list[str]:
    return ["", f"![{PLOT_ALTS.get(name, name)}]({images[name]})"] if name in images else []


def _decision_models(run: RunMetrics) -> list[str]:
    """Models with eval and/or cost results, in eval order (base → teachers → students)."""
    ev = run.eval.models if run.eval else {}
    priced = run.cost.models if run.cost else {}
    return list(ev) + [n for n in priced if n not in ev]


def _decision_section(run: RunMetrics, images: dict[str, str]) -> list[str]:
    """One row per model (score, retention, $/1M, latency, throughput), then what the figures
    mean, the repeats that disagree, the sentences, failed gates and the two plots."""
    names = _decision_models(run)
    if not names:
        return []
    note = run.cost.assumptions.note if run.cost else None
    lines = ["", "## Decision", ""]
    if note:
        lines += [f"> **{'CPU figures. ' if run.cpu else ''}Note:** {note}", ""]
    evaluated = run.eval.models if run.eval else {}
    # the column once models were scored on the general set against the base (eval.general_retention)
    general = "base" in evaluated and any(m.general is not None or m.lm_eval for m in evaluated.values())
    lines += _decision_header(general)
    lines += [_decision_row(run, name, general) for name in names]
    lines += _decision_notes(run)
    sentences = _decision_sentences(run)
    if sentences:
        lines += [""] + [f"- {s}" for s in sentences]
    if run.eval and run.eval.gates_failed:
        lines += ["", "**Eval gates failed:**", ""] + [f"- {g}" for g in run.eval.gates_failed]
    lines += _img(images, "quality_vs_cost") + _img(images, "monthly_cost")
    return lines


def _decision_header(general: bool) -> list[str]:
    return [
        "| model | role | domain eval score | retention vs teacher "
        + ("| general retention vs base " if general else "")
        + "| $/1M effective at volume | $/1M saturated | p50 / p99 e2e latency (ms) "
        "| output tok/s | priced at concurrency | LoRA parity |",
        "|---|---|---:|---:|" + ("---:|" if general else "") + "---:|---:|---:|---:|---:|---|",
    ]


def _decision_row(run: RunMetrics, name: str, general: bool) -> str:
    """One model's row; "–" only where the run did not measure the figure (no eval, no price)."""
    e = run.eval.models.get(name) if run.eval else None
    c = run.cost.models.get(name) if run.cost else None
    b = run.bench.models.get(name) if run.bench else None
    students = run.distill.students if run.distill else {}
    role = (e.role if e else None) or ("student" if name in students else "–")
    if e and e.quantization:
        role = f"{role}, {e.quantization} of {e.quantized_from}"
    if run.eval and name == run.eval.teacher:
        role, ret = "teacher (final)", "1.000"
    else:
        ret = num(e.retention.overall if e and e.retention else None, "{:.3f}")
    conc = num(c.priced_at_concurrency if c else None, "{:.0f}")
    if c and c.slo_met is False:
        conc += " (SLO not met)"
    elif c and c.slo_met is None:
        conc += " (SLO not checked)"
    if c and c.unstable_points:
        conc += " ⚠ repeats disagree"
    par = f"{b.parity.identical}/{b.parity.prompts}" if b and b.parity else "–"
    return (
        f"| {name} | {role} | {score(e.domain if e else None)} | {ret} "
        + (f"| {num(e.general_retention if e else None, '{:.3f}')} " if general else "")
        + f"| {usd(c.effective_usd_per_m if c else None)} | {usd(c.saturated_usd_per_m if c else None)} "
        f"| {num(c.p50_e2el_ms if c else None, '{:,.0f}')} / {num(c.p99_e2el_ms if c else None, '{:,.0f}')} "
        f"| {num(c.output_tokens_per_s if c else None, '{:,.0f}')} | {conc} | {par} |"
    )


def _decision_notes(run: RunMetrics) -> list[str]:
    """What the columns mean (on how many items, which backend) and the repeats that disagree."""
    lines = []
    items = run.eval.items.get("domain") if run.eval else None
    if run.eval and items:
        lines += [
            "",
            f"Scores are on {items:,} domain eval items (`{run.eval.backend}` backend); retention is a "
            f"student's score / the final teacher `{run.eval.teacher}`'s. Latency and throughput are at "
            "the highest benchmarked concurrency that meets the SLO (where none does, marked, at the "
            "best-throughput point). Saturated $/1M: a replica busy all month at the recipe's token mix; "
            "effective $/1M: the monthly bill at the stated volume ÷ the tokens served (what is paid).",
        ]
    priced = run.cost.models if run.cost else {}
    unstable = {n: c.unstable_points for n, c in priced.items() if c.unstable_points}
    if unstable:
        lines += [
            "",
            "⚠ **Benchmark repeats disagree** by more than the allowed spread at: "
            + "; ".join(f"`{n}` concurrency {', '.join(map(str, v))}" for n, v in unstable.items())
            + " — the slower repeat is priced; see the bench sweep for each repeat.",
        ]
    return lines


def _general_section(ev: EvalMetrics | None) -> list[str]:
    """Each model on the lm-eval tasks (stages.eval.general): the metric per task, the mean, and
    the mean against the base model's; then the lm-eval command line of one model."""
    g = ev.general_eval if ev else None
    if ev is None or g is None:
        return []
    tasks = g.tasks
    lines = [
        "",
        "## General ability (lm-evaluation-harness)",
        "",
        f"`{g.metric}` on each task ({', '.join(f'{t}: {g.samples.get(t, 0)} items' for t in tasks)}; lm-eval "
        f"`{g.backend}` model); retention = the model's mean / the base model's.",
        "",
        "| model | " + " | ".join(tasks) + " | mean | retention vs base |",
        "|---|" + "---:|" * (len(tasks) + 2),
    ]
    for name, m in ev.models.items():
        if not m.lm_eval:
            continue
        mean = sum(m.lm_eval.values()) / len(m.lm_eval)
        cells = " | ".join(num(m.lm_eval.get(t), "{:.3f}") for t in tasks)
        lines.append(f"| {name} | {cells} | {mean:.3f} | {num(m.general_retention, '{:.3f}')} |")
    first = next(iter(g.commands.items()), None)
    if first:
        lines += [
            "",
            f"lm-eval's command for `{first[0]}` (the others differ in the model path):",
            "",
            "```",
            first[1],
            "```",
        ]
    return lines


def _decision_sentences(run: RunMetrics) -> list[str]:
    """Student vs teacher (quality kept, effective cost per token), then self-hosted vs each API
    per month, with the payback and the break-even volume."""
    ev = run.eval.models if run.eval else {}
    teacher = run.eval.teacher if run.eval else None
    priced = run.cost.models if run.cost else {}
    daily = run.cost.assumptions.daily_tokens if run.cost else None
    t_eval, t_cost = ev.get(teacher or ""), priced.get(teacher or "")
    t_score = t_eval.domain.score if t_eval else None
    t_price = t_cost.effective_usd_per_m if t_cost else None
    out = []
    student_names = [n for n, m in ev.items() if m.role == "student"]
    for name in student_names:
        m = ev[name]
        ret = m.retention.overall if m.retention else None
        if not is_num(ret):
            continue
        s = (
            f"**{name}** keeps {ret:.0%} of the teacher `{teacher}`'s domain score "
            f"({score(m.domain)} vs {num(t_score, '{:.3f}')})"
        )
        price = priced[name].effective_usd_per_m if name in priced else None
        if is_num(price) and is_num(t_price) and t_price > 0:
            s += (
                f" at {price / t_price:.0%} of its effective cost per token "
                f"({usd(price)} vs {usd(t_price)} per 1M tokens at {num(daily, '{:,.0f}')} tokens/day)"
            )
        elif is_num(price):
            s += f" at {usd(price)} per 1M tokens (effective)"
        out.append(s + ".")
    # Which deployments to set against the APIs: the students if any were priced, else the teacher,
    # else whatever was priced.
    candidates: list[str] = [n for n in student_names if n in priced]
    candidates = candidates or ([teacher] if teacher is not None and teacher in priced else list(priced))
    upfront = run.cost.upfront_usd if run.cost else None
    out += [line for name in candidates if (line := _api_sentence(name, priced[name], daily, upfront))]
    return out


def _api_sentence(name: str, c: CostModel, daily: float | None, upfront: float | None) -> str | None:
    """Self-hosted vs each API per month, with the payback and the break-even volume."""
    if not c.compare:
        return None
    vs = "; ".join(
        f"vs {api} {usd(x.api_monthly_usd)}/month → payback {_months(x.payback_months)}"
        + (
            f", break-even at {num(x.break_even_daily_tokens, '{:,.0f}')} tokens/day"
            if is_num(x.break_even_daily_tokens)
            else ", the API is cheaper at any volume"
        )
        for api, x in c.compare.items()
    )
    replicas = c.replicas
    return (
        f"At {num(daily, '{:,.0f}')} tokens/day, **{name}** self-hosted costs "
        f"{usd(c.self_hosted_monthly_usd)}/month"
        + (f" ({replicas} replica{'s' if replicas != 1 else ''})" if is_num(replicas) else "")
        + f": {vs} (payback = months of savings to repay the {usd(upfront)} "
        "spent so far)."
    )


def _routing_section(m: RouteMetrics | None, images: dict[str, str]) -> list[str]:
    """Cascades: the chosen point in words and numbers (on the half it was not chosen on), the
    frontier, and how well each model's confidence tracks its accuracy."""
    if m is None:
        return []
    lines = [
        "",
        "## Routing: the student answers first, the teacher when it is unsure",
        "",
        f"A tier answers when its confidence (geometric-mean probability of its answer's tokens) is at "
        f"least its threshold, else passes the query on; an escalated query pays for both tiers. Thresholds "
        f"are chosen on {m.items.pick} eval items and every figure below is on the other "
        f"{m.items.report}; $/1M is effective at {num(m.daily_tokens, '{:,.0f}')} tokens/day.",
        "",
        "| cascade | target | thresholds | answered by each tier | quality | effective $/1M | last tier alone |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for name, cas in m.cascades.items():
        ch, top = cas.chosen, cas.last_tier_alone
        target = ", ".join(f"{k} {v:g}" for k, v in cas.target.items())
        if cas.target_met_on_pick_half is False:
            target += " (not reachable: closest point)"
        ths = ", ".join("∞" if t is None else f"{t:.3f}" for t in ch.thresholds)
        shares = ", ".join(f"{t} {x:.0%}" for t, x in zip(cas.tiers, ch.shares, strict=False))
        lines.append(
            f"| {name} | {target} | {ths} | {shares} | {num(ch.quality, '{:.3f}')} "
            f"| {usd(ch.usd_per_m)} | {num(top.quality, '{:.3f}')} at {usd(top.usd_per_m)} |"
        )
    lines += [""] + [f"- **{n}**: {cas.sentence}." for n, cas in m.cascades.items()]
    lines += _img(images, "routing_frontier")
    if m.calibration:
        lines += [
            "",
            "Calibration (expected calibration error over 10 confidence bins; 0 = confidence equals accuracy):",
            "",
            "| model | ECE | items with a confidence |",
            "|---|---:|---:|",
        ]
        for n, x in m.calibration.items():
            counted = sum(b.items for b in x.bins)
            lines.append(f"| {n} | {num(x.ece, '{:.3f}')} | {counted} |")
        lines += _img(images, "calibration")
    return lines


def _assumptions_section(run: RunMetrics, note_shown: bool) -> list[str]:
    """What the dollars rest on, so a reader can redo the arithmetic with their own prices."""
    if run.cost is None:
        return []
    a = run.cost.assumptions
    lines = ["", "## Assumptions", ""]
    if a.note and not note_shown:
        lines += [f"> **{'CPU figures. ' if a.serve_gpu == 'cpu' else ''}Note:** {a.note}", ""]
    lines += _pricing_lines(a, run.cost.upfront_usd)
    lines += _api_price_lines(a.api_prices)
    lines += _token_cost_lines(run.cost.models)
    lines += _bench_lines(run.bench)
    if a.note and note_shown:
        lines.append("- Scope of the figures: see the note at the top of the Decision section")
    return lines


def _pricing_lines(a: CostAssumptions, upfront_usd: float) -> list[str]:
    """Hardware, prices, MFU, replica size, volume and mix: the inputs of every $ figure."""
    frac, scale = a.input_fraction, a.throughput_scale
    return [
        f"- Serving: `{a.serve_gpu}` at {usd(a.serve_usd_per_gpu_hour)}/GPU-hour "
        f"(memory bandwidth {num(a.serve_gpu_bandwidth_tb_per_s, '{:g}')} TB/s behind the decode floor, "
        f"peak {num(a.serve_gpu_peak_tflops, '{:g}')} bf16 TFLOP/s); "
        f"training: `{a.train_gpu}` × {num(a.training_gpus, '{:.0f}')} at "
        f"{usd(a.train_usd_per_gpu_hour)}/GPU-hour",
        "- MFU behind the planned $ (`verticalft plan`): "
        + (", ".join(f"{k} {v:.0%}" for k, v in a.mfu.items()) or "–"),
        "- GPUs per replica (vLLM tensor parallelism): "
        + (", ".join(f"{n} {g}" for n, g in a.gpus_per_replica.items()) or "–"),
        f"- Volume: {num(a.daily_tokens, '{:,.0f}')} tokens/day, "
        + (f"{frac:.0%} input / {1 - frac:.0%} output" if is_num(frac) else "token mix –")
        + " — the same mix prices the self-hosted models and the APIs",
        f"- Peak-to-average: {num(a.peak_to_average, '{:g}')} (replicas carry the busiest hour "
        "at full measured capacity)",
        "- Throughput: "
        + (
            f"measured × {scale:g} (the recipe's cost.throughput_scale: {a.serve_gpu} vs the bench device)"
            if is_num(scale)
            else "as measured on the bench device"
        ),
        f"- A month is {num(a.hours_per_month, '{:,.0f}')} hours",
        f"- Other upfront spend: {usd(a.other_upfront_usd)}; total upfront (GPU spend + other): "
        f"{usd(upfront_usd)}",
    ]


def _api_price_lines(prices: dict[str, ApiPrice]) -> list[str]:
    """The API list prices compared against, with model id, date and source."""
    if not prices:
        return []
    lines = [
        "",
        "| API | model | $/1M input | $/1M output | as of | source |",
        "|---|---|---:|---:|---|---|",
    ]
    for api, p in prices.items():
        lines.append(
            f"| {api} | `{p.model}` | {usd(p.input_usd_per_m)} | {usd(p.output_usd_per_m)} "
            f"| {p.as_of or '–'} | {p.source or '–'} |"
        )
    return [*lines, ""]


def _token_cost_lines(priced: dict[str, CostModel]) -> list[str]:
    """The fitted input/output token costs per model, and any model priced at another mix."""
    lines = []
    fits = {n: m.token_seconds for n, m in priced.items() if m.token_seconds}
    if fits:
        lines.append(
            "- Token costs fitted on the bench's two request shapes (replica-seconds per 1k tokens, input / output): "
            + "; ".join(
                f"{n} {t.input_s * 1e3:.4g} / {t.output_s * 1e3:.4g}"
                + (f" (the {t.clamped} cost fitted as 0: within the noise)" if t.clamped else "")
                for n, t in fits.items()
            )
        )
    for n, m in priced.items():
        if m.mix_note:
            lines.append(f"- `{n}`: {m.mix_note} ({num(m.priced_mix, '{:.0%}')} input)")
    return lines


def _bench_lines(b: BenchMetrics | None) -> list[str]:
    """How the throughput was measured: request shape, sweep, repeats, SLO, device, serving mode."""
    if b is None:
        return []
    slo = b.slo
    bounds = [
        f"{k.removesuffix('_ms').upper()} ≤ {num(v, '{:,.0f}')} ms"
        for k, v in slo.items()
        if k.endswith("_ms") and is_num(v)
    ]
    lines = [
        f"- Benchmark: {num(b.input_len, '{:.0f}')} input / {num(b.output_len, '{:.0f}')} "
        f"output tokens per request, concurrency {', '.join(str(x) for x in b.concurrency)}"
        + _repeats_clause(b)
        + "; "
        f"SLO {', '.join(bounds) or 'none'}"
        + (f" for ≥ {slo['min_attainment']:.0%} of requests" if is_num(slo.get("min_attainment")) else "")
    ]
    dev = b.device
    if dev:
        memory = f", {dev.memory_gb:g} GB" if is_num(dev.memory_gb) else ""
        unit = "GPU(s)" if dev.kind == "gpu" else "cores"
        lines.append(f"- Benchmarked on: {dev.name} × {dev.count} {unit}{memory}")
    for name, why in b.served_merged_because.items():
        lines.append(f"- `{name}` served as merged weights, not a LoRA adapter: {why}")
    return lines


def _repeats_clause(b: BenchMetrics) -> str:
    """How often each point ran, how short a point may be, and the token-cost fit's shape."""
    if not (b.repeats and b.fit_shape):
        return ""
    resized = (
        f"; a point under {b.min_seconds:g} s is re-run with more requests"
        if is_num(b.min_seconds) and b.min_seconds > 0
        else ""
    )
    return (
        f", each point {b.repeats}× (spread recorded{resized}), plus {b.fit_shape.input_len} in / "
        f"{b.fit_shape.output_len} out at the priced concurrency for the token-cost fit"
    )


def _physical_section(run: RunMetrics, images: dict[str, str]) -> list[str]:
    """Measured decode speed against the memory-bandwidth bound: a sanity check on the bench."""
    priced = run.cost.models if run.cost else {}
    bench = run.bench.models if run.bench else {}
    if not priced and "latency_vs_throughput" not in images:
        return []
    lines = ["", "## Physical limit", ""]
    if priced:
        lines += [
            "Decode floor = weight bytes / memory bandwidth: no batch-1 decode step can be faster. "
            "MBU (model-bandwidth utilisation) = floor / measured TPOT at concurrency 1; above 100% is "
            "impossible, so the measurement (or the bandwidth figure) is wrong. TPOT is the median over "
            "requests that streamed one token per chunk; when the server sent several tokens per chunk "
            "it is the pooled (e2e − TTFT) / (tokens − 1) over all requests (column *how*).",
            "",
            "| model | weight bytes | decode floor (ms) | measured TPOT at concurrency 1 (ms) | how | MBU | check |",
            "|---|---:|---:|---:|---|---:|---|",
        ]
        for name, c in priced.items():
            wb = bench[name].weight_bytes if name in bench else None
            mbu = c.bandwidth_utilisation
            flag = "**check the measurement** (MBU > 1)" if is_num(mbu) and mbu > 1 else ""
            size = f"{wb:,} ({wb / 1e6:,.1f} MB)" if is_num(wb) else "–"
            lines.append(
                f"| {name} | {size} | {num(c.decode_floor_ms, '{:.4g}')} "
                f"| {num(c.measured_tpot_ms_at_1, '{:.4g}')} | {c.tpot_method_at_1 or '–'} "
                f"| {num(mbu, '{:.1%}')} | {flag} |"
            )
    lines += _img(images, "latency_vs_throughput")
    return lines


def _training_cost_section(cost: CostMetrics | None) -> list[str]:
    """GPU spend per stage over every attempt (failed and killed ones too), next to the plan."""
    if cost is None or not cost.spend:
        return []
    lines = [
        "",
        "## Spend so far",
        "",
        "| stage | attempts | wall time | GPUs | $/GPU-hour | measured $ | planned $ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, t in cost.spend.items():
        tries = num(t.attempts, "{:.0f}")
        if t.failed_or_killed:
            tries += f" ({t.failed_or_killed} failed or killed)"
        wall = num(t.wall_time_s, "{:,.0f}s")
        if is_num(t.of_which_cache_build_s):
            wall += f" (teacher cache {t.of_which_cache_build_s:,.0f}s)"
        lines.append(
            f"| {stage} | {tries} | {wall} | {num(t.gpus, '{:.0f}')} | {usd(t.usd_per_gpu_hour)} "
            f"| {usd(t.usd)} | {usd(t.planned_usd)} |"
        )
    lines.append(f"| **upfront total** (incl. other spend) | | | | | {usd(cost.upfront_usd)} | |")
    return lines


def _stage_section(run: RunMetrics, images: dict[str, str]) -> list[str]:
    """Per-stage status and what each training stage measured (the report's original table)."""
    lines = [
        "",
        "## Stages",
        "",
        "| stage | status | wall time | tokens | loss first → last | eval score before → after | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_stage_row(run, name) for name in run.stage_order]
    lines += _img(images, "loss_curves") + _img(images, "funnel")
    final = next(
        (t.eval_after for s in reversed(run.stage_order) if (t := run.training(s)) and t.eval_after), None
    )
    if final:
        lines += [
            "",
            "## Domain eval of the latest model, by task and difficulty",
            "",
            "| task | score |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in final.by_task.items()]
        lines += [f"| difficulty {k} | {v:.3f} |" for k, v in final.by_difficulty.items()]
    return lines


def _stage_row(run: RunMetrics, name: str) -> str:
    """A stage's status and wall time; for cpt/sft/dpo its tokens, losses, scores and notes."""
    rec, t = run.stages[name], run.training(name)
    notes = []
    if isinstance(t, CptMetrics) and t.heldout_perplexity_before is not None:
        notes.append(
            f"held-out perplexity {num(t.heldout_perplexity_before)} → {num(t.heldout_perplexity_after)}"
        )
    if isinstance(t, DpoMetrics) and t.reward_accuracy is not None:
        notes.append(f"reward accuracy {t.reward_accuracy:.3f}, margin {num(t.reward_margin)}")
    if t and t.resumed_from:
        notes.append(f"resumed from {t.resumed_from}")
    if name in registry.stage_order():
        notes += registry.stage(name).report_notes(rec.metrics)
    return (
        f"| {name} | {rec.status} | {num(rec.wall_time_s, '{:.0f}s')} | {num(t.tokens_seen if t else None, '{:,}')} "
        f"| {num(t.first_loss if t else None)} → {num(t.last_loss if t else None)} "
        f"| {score(t.eval_before if t else None)} → {score(t.eval_after if t else None)} | {'; '.join(notes)} |"
    )


def _distill_section(m: DistillMetrics | None) -> list[str]:
    """Teacher vs each student: eval score and retention (student / teacher)."""
    if m is None or (not m.students and not m.failed_students):
        return []
    caches = m.caches or ({"sft": m.cache} if m.cache else {})
    lines = [
        "",
        f"## Distillation ({m.kind}{', teacher top-k cache' if caches else ''})",
        "",
        "| model | eval score | retention | train time | peak RSS | teacher in memory |",
        "|---|---|---|---|---|---|",
        f"| teacher `{m.teacher}` | {score(m.teacher_eval)} | 1.000 | – | – | – |",
    ]
    for name, st in m.students.items():
        seconds = sum(p.train.train_seconds for p in st.phases) if st.phases else st.train.train_seconds
        lines.append(
            f"| {name} | {score(st.eval)} | {num(st.retention, '{:.3f}')} "
            f"| {num(seconds, '{:.0f}s')} | {num(st.peak_rss_mb, '{:,.0f} MB')} "
            f"| {'yes' if st.teacher_in_memory else 'no'} |"
        )
    for name, err in m.failed_students.items():
        lines.append(f"| {name} | failed: {err} | – | – | – | – |")
    lines += _phase_table(m)
    if m.teacher_eval_rephrased:
        lines += [
            "",
            f"On the rephrased eval set (data.eval_rephrased, {m.teacher_eval_rephrased.n} items: the tasks "
            f"asked unlike the training data): teacher {score(m.teacher_eval_rephrased)}; "
            + ", ".join(
                f"{n} {score(st.eval_rephrased)} (retention {num(st.retention_rephrased, '{:.3f}')})"
                for n, st in m.students.items()
            )
            + ".",
        ]
    for data, cache in caches.items():
        lines += [
            "",
            f"Teacher cache ({data}): top-{cache.k} of {cache.tokens:,} target tokens, "
            f"{cache.bytes_per_token} bytes/token, built in {cache.build_seconds}s "
            f"(0 s = reused).",
        ]
    return lines


def _phase_table(m: DistillMetrics) -> list[str]:
    """Retention after every phase of every student, overall and per task: where a student loses
    what the teacher knows (pruning, then each phase's data), and which phase brings it back."""
    tasks = sorted(m.teacher_eval.by_task) if m.teacher_eval else []
    rows = [(name, p) for name, st in m.students.items() for p in st.phases]
    if not rows:
        return []
    lines = [
        "",
        "Retention after each phase (student score / teacher score), overall and per task:",
        "",
        "| student | phase | data | student tokens | score | retention | "
        + "".join(f"{t} | " for t in tasks),
        "|---|---|---|---|---|---|" + "---|" * len(tasks),
    ]
    for name, p in rows:
        per_task = "".join(f"{num(p.retention_by_task.get(t), '{:.3f}')} | " for t in tasks)
        lines.append(
            f"| {name} | {p.name} | {p.data} | {p.tokens:,} | {score(p.eval)} "
            f"| {num(p.retention, '{:.3f}')} | {per_task}"
        )
    return lines


def _funnel(run: RunMetrics, root: Path) -> Path | None:
    """The curation stage's own funnel plot, next to its report, if it was drawn."""
    report = run.stages["curate"].outputs.get("report") if "curate" in run.stages else None
    if not report:
        return None
    path = Path(report)
    path = (path if path.is_absolute() else root / path).parent / "funnel.png"
    return path if path.is_file() else None


def write_report(run: RunDir, title: str) -> str:
    """report.md and its plots from the run's manifest; a manifest that does not match the metrics
    contract is a `MetricsError` naming the file and the key, before anything is written."""
    manifest = run.manifest()
    try:
        loaded = load_run(manifest)
    except MetricsError as exc:
        raise MetricsError(f"{run.manifest_path}: {exc}") from None
    path = run.root / "report.md"
    from verticalft.plots import write_plots

    images = dict(write_plots(manifest, run.root / "plots"))
    funnel = _funnel(loaded, run.root)
    if funnel:
        images["funnel"] = funnel
    rel = {k: Path(os.path.relpath(p, run.root)).as_posix() for k, p in images.items()}
    atomic_write_text(path, render(manifest, title, rel))
    return str(path)
