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

from verticalft.formatting import cpu_run, is_num, metrics_of, num, score, usd
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
    """The markdown report; `images` maps plot name → path relative to report.md (from `write_report`)."""
    images = images or {}
    stages = manifest.get("stages", {})
    lines = [f"# {title}"]
    decision = _decision_section(stages, images)
    lines += decision
    lines += _routing_section(stages, images)
    lines += _assumptions_section(stages, note_shown=bool(decision))
    lines += _physical_section(stages, images)
    lines += _training_cost_section(stages)
    lines += _stage_section(manifest, images)
    lines += _distill_section(stages.get("distill"))
    lines += ["", "Every number comes from `manifest.json` next to this file.", ""]
    return "\n".join(lines)


def _img(images: dict[str, str], name: str) -> list[str]:
    return ["", f"![{PLOT_ALTS.get(name, name)}]({images[name]})"] if name in images else []


def _decision_models(stages: dict[str, Any]) -> list[str]:
    """Models with eval and/or cost results, in eval order (base → teachers → students)."""
    ev = metrics_of(stages, "eval").get("models") or {}
    priced = metrics_of(stages, "cost").get("models") or {}
    return list(ev) + [n for n in priced if n not in ev]


def _decision_section(stages: dict[str, Any], images: dict[str, str]) -> list[str]:
    names = _decision_models(stages)
    if not names:
        return []
    ev_m = metrics_of(stages, "eval")
    ev, teacher = ev_m.get("models") or {}, ev_m.get("teacher")
    cost = metrics_of(stages, "cost")
    priced, note = cost.get("models") or {}, (cost.get("assumptions") or {}).get("note")
    bench = metrics_of(stages, "bench").get("models") or {}
    students = set((metrics_of(stages, "distill").get("students") or {}).keys())
    lines = ["", "## Decision", ""]
    if note:
        lines += [f"> **{'CPU figures. ' if cpu_run(stages) else ''}Note:** {note}", ""]
    general = any("general_retention" in m for m in ev.values())
    lines += [
        "| model | role | domain eval score | retention vs teacher "
        + ("| general retention vs base " if general else "")
        + "| $/1M effective at volume | $/1M saturated | p50 / p99 e2e latency (ms) "
        "| output tok/s | priced at concurrency | LoRA parity |",
        "|---|---|---:|---:|" + ("---:|" if general else "") + "---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        e, c, b = ev.get(name) or {}, priced.get(name) or {}, bench.get(name) or {}
        role = e.get("role") or ("student" if name in students else "–")
        if name == teacher:
            role, ret = "teacher (final)", "1.000"
        else:
            ret = num((e.get("retention") or {}).get("overall"), "{:.3f}")
        conc = num(c.get("priced_at_concurrency"), "{:.0f}")
        if c and c.get("slo_met") is False:
            conc += " (SLO not met)"
        elif c and "slo_met" in c and c["slo_met"] is None:
            conc += " (SLO not checked)"
        if c.get("unstable_points"):
            conc += " ⚠ repeats disagree"
        parity = b.get("parity") or {}
        par = (
            f"{parity['identical']}/{parity['prompts']}"
            if "identical" in parity and "prompts" in parity
            else "–"
        )
        lines.append(
            f"| {name} | {role} | {score(e.get('domain'))} | {ret} "
            + (f"| {num(e.get('general_retention'), '{:.3f}')} " if general else "")
            + f"| {usd(c.get('effective_usd_per_m'))} | {usd(c.get('saturated_usd_per_m'))} "
            f"| {num(c.get('p50_e2el_ms'), '{:,.0f}')} / {num(c.get('p99_e2el_ms'), '{:,.0f}')} "
            f"| {num(c.get('output_tokens_per_s'), '{:,.0f}')} | {conc} | {par} |"
        )
    items = (ev_m.get("items") or {}).get("domain")
    if items:
        lines += [
            "",
            f"Scores are on {items:,} domain eval items (`{ev_m.get('backend')}` backend); retention is a "
            f"student's score / the final teacher `{teacher}`'s. Latency and throughput are at "
            "the highest benchmarked concurrency that meets the SLO (where none does, marked, at the "
            "best-throughput point). Saturated $/1M: a replica busy all month at the recipe's token mix; "
            "effective $/1M: the monthly bill at the stated volume ÷ the tokens served (what is paid).",
        ]
    unstable = {n: c["unstable_points"] for n, c in priced.items() if c.get("unstable_points")}
    if unstable:
        lines += [
            "",
            "⚠ **Benchmark repeats disagree** by more than the allowed spread at: "
            + "; ".join(f"`{n}` concurrency {', '.join(map(str, v))}" for n, v in unstable.items())
            + " — the slower repeat is priced; see the bench sweep for each repeat.",
        ]
    sentences = _decision_sentences(stages)
    if sentences:
        lines += [""] + [f"- {s}" for s in sentences]
    if ev_m.get("gates_failed"):
        lines += ["", "**Eval gates failed:**", ""] + [f"- {g}" for g in ev_m["gates_failed"]]
    lines += _img(images, "quality_vs_cost") + _img(images, "monthly_cost")
    return lines


def _decision_sentences(stages: dict[str, Any]) -> list[str]:
    """Student vs teacher (quality kept, effective cost per token), then self-hosted vs each API
    per month, with the payback and the break-even volume."""
    ev_m, cost = metrics_of(stages, "eval"), metrics_of(stages, "cost")
    ev, teacher = ev_m.get("models") or {}, ev_m.get("teacher")
    priced, a = cost.get("models") or {}, cost.get("assumptions") or {}
    t_score = ((ev.get(teacher) or {}).get("domain") or {}).get("score")
    t_price = (priced.get(teacher) or {}).get("effective_usd_per_m")
    daily = a.get("daily_tokens")
    out = []
    student_names = [n for n, m in ev.items() if m.get("role") == "student"]
    for name in student_names:
        m = ev[name]
        ret = (m.get("retention") or {}).get("overall")
        if not is_num(ret):
            continue
        s = (
            f"**{name}** keeps {ret:.0%} of the teacher `{teacher}`'s domain score "
            f"({score(m.get('domain'))} vs {num(t_score, '{:.3f}')})"
        )
        price = (priced.get(name) or {}).get("effective_usd_per_m")
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
    candidates = [n for n in student_names if n in priced] or (
        [teacher] if teacher in priced else list(priced)
    )
    for name in candidates:
        c = priced[name]
        compare = c.get("compare") or {}
        if not compare:
            continue
        vs = "; ".join(
            f"vs {api} {usd(x.get('api_monthly_usd'))}/month → payback {_months(x.get('payback_months'))}"
            + (
                f", break-even at {num(x['break_even_daily_tokens'], '{:,.0f}')} tokens/day"
                if is_num(x.get("break_even_daily_tokens"))
                else (", the API is cheaper at any volume" if "break_even_daily_tokens" in x else "")
            )
            for api, x in compare.items()
        )
        replicas = c.get("replicas")
        out.append(
            f"At {num(daily, '{:,.0f}')} tokens/day, **{name}** self-hosted costs "
            f"{usd(c.get('self_hosted_monthly_usd'))}/month"
            + (f" ({replicas} replica{'s' if replicas != 1 else ''})" if is_num(replicas) else "")
            + f": {vs} (payback = months of savings to repay the {usd(cost.get('upfront_usd'))} "
            "spent so far)."
        )
    return out


def _routing_section(stages: dict[str, Any], images: dict[str, str]) -> list[str]:
    """Cascades: the chosen point in words and numbers (on the half it was not chosen on), the
    frontier, and how well each model's confidence tracks its accuracy."""
    m = metrics_of(stages, "route")
    if not m:
        return []
    items = m.get("items") or {}
    lines = [
        "",
        "## Routing: the student answers first, the teacher when it is unsure",
        "",
        f"A tier answers when its confidence (geometric-mean probability of its answer's tokens) is at "
        f"least its threshold, else passes the query on; an escalated query pays for both tiers. Thresholds "
        f"are chosen on {items.get('pick', '–')} eval items and every figure below is on the other "
        f"{items.get('report', '–')}; $/1M is effective at {num(m.get('daily_tokens'), '{:,.0f}')} tokens/day.",
        "",
        "| cascade | target | thresholds | answered by each tier | quality | effective $/1M | last tier alone |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for name, cas in (m.get("cascades") or {}).items():
        ch, top = cas.get("chosen") or {}, cas.get("last_tier_alone") or {}
        target = ", ".join(f"{k} {v:g}" for k, v in (cas.get("target") or {}).items())
        if cas.get("target_met_on_pick_half") is False:
            target += " (not reachable: closest point)"
        ths = ", ".join("∞" if t is None else f"{t:.3f}" for t in ch.get("thresholds") or [])
        shares = ", ".join(
            f"{t} {x:.0%}" for t, x in zip(cas.get("tiers") or [], ch.get("shares") or [], strict=False)
        )
        lines.append(
            f"| {name} | {target} | {ths} | {shares} | {num(ch.get('quality'), '{:.3f}')} "
            f"| {usd(ch.get('usd_per_m'))} | {num(top.get('quality'), '{:.3f}')} at {usd(top.get('usd_per_m'))} |"
        )
    lines += [""] + [f"- **{n}**: {cas['sentence']}." for n, cas in (m.get("cascades") or {}).items()]
    lines += _img(images, "routing_frontier")
    cal = m.get("calibration") or {}
    if cal:
        lines += [
            "",
            "Calibration (expected calibration error over 10 confidence bins; 0 = confidence equals accuracy):",
            "",
            "| model | ECE | items with a confidence |",
            "|---|---:|---:|",
        ]
        for n, x in cal.items():
            counted = sum(b.get("items", 0) for b in x.get("bins") or [])
            lines.append(f"| {n} | {num(x.get('ece'), '{:.3f}')} | {counted} |")
        lines += _img(images, "calibration")
    return lines


def _assumptions_section(stages: dict[str, Any], note_shown: bool) -> list[str]:
    """What the dollars rest on, so a reader can redo the arithmetic with their own prices."""
    a = metrics_of(stages, "cost").get("assumptions")
    if not a:
        return []
    lines = ["", "## Assumptions", ""]
    if a.get("note") and not note_shown:
        lines += [f"> **{'CPU figures. ' if a.get('serve_gpu') == 'cpu' else ''}Note:** {a['note']}", ""]
    lines += _pricing_lines(a, metrics_of(stages, "cost").get("upfront_usd"))
    lines += _api_price_lines(a.get("api_prices") or {})
    lines += _token_cost_lines(metrics_of(stages, "cost").get("models") or {})
    lines += _bench_lines(metrics_of(stages, "bench"))
    if a.get("note") and note_shown:
        lines.append("- Scope of the figures: see the note at the top of the Decision section")
    return lines


def _pricing_lines(a: dict[str, Any], upfront_usd: Any) -> list[str]:
    """Hardware, prices, MFU, replica size, volume and mix: the inputs of every $ figure."""
    frac = a.get("input_fraction")
    gpus = a.get("gpus_per_replica") or {}
    scale = a.get("throughput_scale")
    return [
        f"- Serving: `{a.get('serve_gpu')}` at {usd(a.get('serve_usd_per_gpu_hour'))}/GPU-hour "
        f"(memory bandwidth {num(a.get('serve_gpu_bandwidth_tb_per_s'), '{:g}')} TB/s behind the decode floor, "
        f"peak {num(a.get('serve_gpu_peak_tflops'), '{:g}')} bf16 TFLOP/s); "
        f"training: `{a.get('train_gpu')}` × {num(a.get('training_gpus'), '{:.0f}')} at "
        f"{usd(a.get('train_usd_per_gpu_hour'))}/GPU-hour",
        "- MFU behind the planned $ (`verticalft plan`): "
        + (", ".join(f"{k} {v:.0%}" for k, v in (a.get("mfu") or {}).items()) or "–"),
        "- GPUs per replica (vLLM tensor parallelism): "
        + (", ".join(f"{n} {g}" for n, g in gpus.items()) or "–"),
        f"- Volume: {num(a.get('daily_tokens'), '{:,.0f}')} tokens/day, "
        + (f"{frac:.0%} input / {1 - frac:.0%} output" if is_num(frac) else "token mix –")
        + " — the same mix prices the self-hosted models and the APIs",
        f"- Peak-to-average: {num(a.get('peak_to_average'), '{:g}')} (replicas carry the busiest hour "
        "at full measured capacity)",
        "- Throughput: "
        + (
            f"measured × {scale:g} (the recipe's cost.throughput_scale: {a.get('serve_gpu')} vs the bench device)"
            if is_num(scale)
            else "as measured on the bench device"
        ),
        f"- A month is {num(a.get('hours_per_month'), '{:,.0f}')} hours",
        f"- Other upfront spend: {usd(a.get('other_upfront_usd'))}; total upfront (GPU spend + other): "
        f"{usd(upfront_usd)}",
    ]


def _api_price_lines(prices: dict[str, Any]) -> list[str]:
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
            f"| {api} | `{p.get('model')}` | {usd(p.get('input_usd_per_m'))} | {usd(p.get('output_usd_per_m'))} "
            f"| {p.get('as_of') or '–'} | {p.get('source') or '–'} |"
        )
    return [*lines, ""]


def _token_cost_lines(priced: dict[str, Any]) -> list[str]:
    """The fitted input/output token costs per model, and any model priced at another mix."""
    lines = []
    fits = {n: m for n, m in priced.items() if m.get("token_seconds")}
    if fits:
        lines.append(
            "- Token costs fitted on the bench's two request shapes (replica-seconds per 1k tokens, input / output): "
            + "; ".join(
                f"{n} {m['token_seconds']['input_s'] * 1e3:.4g} / {m['token_seconds']['output_s'] * 1e3:.4g}"
                + (
                    f" (the {m['token_seconds']['clamped']} cost fitted as 0: within the noise)"
                    if m["token_seconds"].get("clamped")
                    else ""
                )  # fmt: skip
                for n, m in fits.items()
            )
        )
    for n, m in priced.items():
        if m.get("mix_note"):
            lines.append(f"- `{n}`: {m['mix_note']} ({num(m.get('priced_mix'), '{:.0%}')} input)")
    return lines


def _bench_lines(b: dict[str, Any]) -> list[str]:
    """How the throughput was measured: request shape, sweep, repeats, SLO, device, serving mode."""
    if not b:
        return []
    slo = b.get("slo") or {}
    bounds = [
        f"{k.removesuffix('_ms').upper()} ≤ {num(v, '{:,.0f}')} ms"
        for k, v in slo.items()
        if k.endswith("_ms") and is_num(v)
    ]
    lines = [
        f"- Benchmark: {num(b.get('input_len'), '{:.0f}')} input / {num(b.get('output_len'), '{:.0f}')} "
        f"output tokens per request, concurrency {', '.join(str(x) for x in b.get('concurrency') or [])}"
        + (
            f", each point {b['repeats']}× (spread recorded"
            + (
                f"; a point under {b['min_seconds']:g} s is re-run with more requests"
                if is_num(b.get("min_seconds")) and b["min_seconds"] > 0
                else ""
            )
            + f"), plus {b['fit_shape']['input_len']} in / "
            f"{b['fit_shape']['output_len']} out at the priced concurrency for the token-cost fit"
            if b.get("repeats") and b.get("fit_shape")
            else ""
        )
        + "; "
        f"SLO {', '.join(bounds) or 'none'}"
        + (f" for ≥ {slo['min_attainment']:.0%} of requests" if is_num(slo.get("min_attainment")) else "")
    ]
    dev = b.get("device") or {}
    if dev:
        memory = f", {dev['memory_gb']:g} GB" if is_num(dev.get("memory_gb")) else ""
        unit = "GPU(s)" if dev.get("kind") == "gpu" else "cores"
        lines.append(f"- Benchmarked on: {dev.get('name')} × {dev.get('count')} {unit}{memory}")
    for name, why in (b.get("served_merged_because") or {}).items():
        lines.append(f"- `{name}` served as merged weights, not a LoRA adapter: {why}")
    return lines


def _physical_section(stages: dict[str, Any], images: dict[str, str]) -> list[str]:
    """Measured decode speed against the memory-bandwidth bound: a sanity check on the bench."""
    priced = metrics_of(stages, "cost").get("models") or {}
    bench = metrics_of(stages, "bench").get("models") or {}
    rows = [n for n in priced if any(k in priced[n] for k in ("decode_floor_ms", "bandwidth_utilisation"))]
    if not rows and "latency_vs_throughput" not in images:
        return []
    lines = ["", "## Physical limit", ""]
    if rows:
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
        for name in rows:
            c, wb = priced[name], (bench.get(name) or {}).get("weight_bytes")
            mbu = c.get("bandwidth_utilisation")
            flag = "**check the measurement** (MBU > 1)" if is_num(mbu) and mbu > 1 else ""
            size = f"{wb:,} ({wb / 1e6:,.1f} MB)" if is_num(wb) else "–"
            lines.append(
                f"| {name} | {size} | {num(c.get('decode_floor_ms'), '{:.4g}')} "
                f"| {num(c.get('measured_tpot_ms_at_1'), '{:.4g}')} | {c.get('tpot_method_at_1') or '–'} "
                f"| {num(mbu, '{:.1%}')} | {flag} |"
            )
    lines += _img(images, "latency_vs_throughput")
    return lines


def _training_cost_section(stages: dict[str, Any]) -> list[str]:
    """GPU spend per stage over every attempt (failed and killed ones too), next to the plan."""
    cost = metrics_of(stages, "cost")
    spent = cost.get("spend") or {}
    if not spent:
        return []
    lines = [
        "",
        "## Spend so far",
        "",
        "| stage | attempts | wall time | GPUs | $/GPU-hour | measured $ | planned $ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, t in spent.items():
        tries = num(t.get("attempts"), "{:.0f}")
        if t.get("failed_or_killed"):
            tries += f" ({t['failed_or_killed']} failed or killed)"
        wall = num(t.get("wall_time_s"), "{:,.0f}s")
        if is_num(t.get("of_which_cache_build_s")):
            wall += f" (teacher cache {t['of_which_cache_build_s']:,.0f}s)"
        lines.append(
            f"| {stage} | {tries} | {wall} | {num(t.get('gpus'), '{:.0f}')} | {usd(t.get('usd_per_gpu_hour'))} "
            f"| {usd(t.get('usd'))} | {usd(t.get('planned_usd'))} |"
        )
    lines.append(f"| **upfront total** (incl. other spend) | | | | | {usd(cost.get('upfront_usd'))} | |")
    return lines


def _stage_section(manifest: dict[str, Any], images: dict[str, str]) -> list[str]:
    """Per-stage status and what each training stage measured (the report's original table)."""
    stages = manifest.get("stages", {})
    lines = [
        "",
        "## Stages",
        "",
        "| stage | status | wall time | tokens | loss first → last | eval score before → after | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [s for s in manifest.get("stage_order", []) if s in stages] + [
        s for s in stages if s not in manifest.get("stage_order", [])
    ]
    for name in order:
        rec = stages[name]
        m = rec.get("metrics") or {}
        spec = registry.stage(name) if name in registry.stage_order() else None
        before = m.get(spec.score_before_key if spec else "eval_before")
        after = m.get("eval_after")
        notes = []
        if m.get("heldout_perplexity_before") is not None:
            notes.append(
                f"held-out perplexity {num(m['heldout_perplexity_before'])} → {num(m.get('heldout_perplexity_after'))}"
            )
        if m.get("reward_accuracy") is not None:
            notes.append(f"reward accuracy {m['reward_accuracy']:.3f}, margin {num(m.get('reward_margin'))}")
        if m.get("resumed_from"):
            notes.append(f"resumed from {m['resumed_from']}")
        if spec:
            notes += spec.report_notes(m)
        lines.append(
            f"| {name} | {rec.get('status')} | {num(rec.get('wall_time_s'), '{:.0f}s')} | {num(m.get('tokens_seen'), '{:,}')} "
            f"| {num(m.get('first_loss'))} → {num(m.get('last_loss'))} | {score(before)} → {score(after)} | {'; '.join(notes)} |"
        )
    lines += _img(images, "loss_curves") + _img(images, "funnel")
    final = next(
        (
            (stages[s].get("metrics") or {}).get("eval_after")
            for s in reversed(order)
            if isinstance((stages[s].get("metrics") or {}).get("eval_after"), dict)
        ),
        None,
    )
    if final:
        lines += [
            "",
            "## Domain eval of the latest model, by task and difficulty",
            "",
            "| task | score |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in final.get("by_task", {}).items()]
        lines += [f"| difficulty {k} | {v:.3f} |" for k, v in final.get("by_difficulty", {}).items()]
    return lines


def _distill_section(rec: dict[str, Any] | None) -> list[str]:
    """Teacher vs each student: eval score and retention (student / teacher)."""
    m = (rec or {}).get("metrics") or {}
    if not m.get("students") and not m.get("failed_students"):
        return []
    cache = m.get("cache")
    lines = [
        "",
        f"## Distillation ({m.get('kind')}{', teacher top-k cache' if cache else ''})",
        "",
        "| model | eval score | retention | train time | peak RSS | teacher in memory |",
        "|---|---|---|---|---|---|",
        f"| teacher `{m.get('teacher')}` | {score(m.get('teacher_eval'))} | 1.000 | – | – | – |",
    ]
    for name, st in m.get("students", {}).items():
        train = st.get("train", {})
        lines.append(
            f"| {name} | {score(st.get('eval'))} | {num(st.get('retention'), '{:.3f}')} "
            f"| {num(train.get('train_seconds'), '{:.0f}s')} | {num(st.get('peak_rss_mb'), '{:,.0f} MB')} "
            f"| {'yes' if st.get('teacher_in_memory') else 'no'} |"
        )
    for name, err in (m.get("failed_students") or {}).items():
        lines.append(f"| {name} | failed: {err} | – | – | – | – |")
    if cache:
        lines += [
            "",
            f"Teacher cache: top-{cache['k']} of {cache['tokens']:,} response tokens, "
            f"{cache['bytes_per_token']} bytes/token, built in {cache['build_seconds']}s "
            f"(0 s = reused).",
        ]
    return lines


def _funnel(manifest: dict[str, Any], root: Path) -> Path | None:
    """The curation stage's own funnel plot, next to its report, if it was drawn."""
    report = ((manifest.get("stages", {}).get("curate") or {}).get("outputs") or {}).get("report")
    if not report:
        return None
    path = Path(report)
    path = (path if path.is_absolute() else root / path).parent / "funnel.png"
    return path if path.is_file() else None


def write_report(run: RunDir, title: str) -> str:
    manifest = run.manifest()
    path = run.root / "report.md"
    from verticalft.plots import write_plots

    images = dict(write_plots(manifest, run.root / "plots"))
    funnel = _funnel(manifest, run.root)
    if funnel:
        images["funnel"] = funnel
    rel = {k: Path(os.path.relpath(p, run.root)).as_posix() for k, p in images.items()}
    atomic_write_text(path, render(manifest, title, rel))
    return str(path)
