"""cost: dollars from what the run measured — no GPU, no model loading, rerun whenever prices change.

Inputs (all from the run directory): the bench stage's sweeps, each stage's attempts
(`attempts.jsonl`) and the recipe's prices and volumes. Per benchmarked model:

- what an input and an output token each cost a replica (`pricing.fit_token_seconds` on the bench's
  two request shapes at the priced concurrency), hence the *saturated* $/1M of the recipe's own
  token mix (`cost.input_fraction`) — the same mix the API bill uses;
- replicas sized for the peak (`cost.peak_to_average`), the monthly bill at `cost.daily_tokens`
  and the *effective* $/1M actually paid at that volume (bill ÷ tokens);
- per API in `cost.compare`: its bill, the savings, the payback of the spend so far and the
  break-even daily volume;
- the decode bandwidth bound next to the measured TPOT (model-bandwidth utilisation).

Throughput measured on one device is priced on `cost.serve_gpu` only when they are the same kind
of device or the recipe states `cost.throughput_scale`. Every assumption is written next to the
numbers; the arithmetic is `verticalft.pricing` (pure, unit-tested by hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from verticalft import pricing as c
from verticalft.metrics import ApiComparison, CostModel, TokenSecondsRecord, to_dict
from verticalft.plan import MFU_DEFAULTS, mfu_for
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.registry import serving_stages, training_stages


def same_device(serve_gpu: str, device: dict[str, Any] | None) -> bool | None:
    """Whether the bench's device is the kind `serve_gpu` names (None: the bench did not say)."""
    if not device:
        return None
    if serve_gpu == "cpu" or device.get("kind") == "cpu":
        return serve_gpu == "cpu" and device.get("kind") == "cpu"
    return serve_gpu.split("-")[0].lower() in str(device.get("name", "")).lower()


def throughput_scale(ctx: StageContext, serve_gpu: str, device: dict[str, Any] | None) -> float:
    """1.0 on the measured device; the recipe's stated factor elsewhere; an error without one."""
    stated = ctx.recipe.cost.throughput_scale
    if stated is not None:
        return stated
    if device is not None and same_device(serve_gpu, device) is False:
        raise ValueError(
            f"the bench measured throughput on {device.get('name')} ({device.get('kind')}) but "
            f"cost.serve_gpu is '{serve_gpu}': run the bench on a {serve_gpu}, or state the assumption "
            f"as cost.throughput_scale (throughput on {serve_gpu} ÷ throughput measured); the report shows it"
        )
    return 1.0


def spend(ctx: StageContext, train_price: float, serve_price: float) -> dict[str, Any]:
    """GPU spend per stage over *every* attempt (done, failed, killed), measured wall time × GPUs ×
    price; `verticalft plan`'s estimate beside each training stage."""
    from verticalft.plan import plan_recipe

    recipe = ctx.recipe
    try:
        planned = {s.stage: s.usd for s in plan_recipe(recipe).stages}
    except Exception:  # noqa: BLE001 - the plan is context, never a reason to lose the measurement
        planned = {}
    bench = recipe.stages.bench
    serve_gpus = bench.gpus_for("teacher", True) if bench else 1  # the widest served model
    out = {}
    trained = training_stages()
    for stage in (*trained, *serving_stages()):
        attempts = ctx.run.attempts(stage)
        if not attempts:
            continue
        seconds = sum(a["seconds"] for a in attempts)
        training = stage in trained
        gpus = recipe.compute.training_gpus if training else serve_gpus
        price = train_price if training else serve_price
        plan_usd = sum(
            v for k, v in planned.items() if k == stage or k.startswith((f"{stage}:", f"{stage} "))
        )
        line = {
            "wall_time_s": round(seconds, 2),
            "attempts": len(attempts),
            "failed_or_killed": sum(a["status"] != "done" for a in attempts),
            "gpus": gpus,
            "usd_per_gpu_hour": price,
            "usd": round(c.training_cost(seconds, price, gpus), 6),
            "planned_usd": round(plan_usd, 2) if plan_usd else None,
        }
        if stage == "distill":
            m = ctx.run.record(stage).metrics
            caches = list((m.get("caches") or {}).values()) or ([m["cache"]] if m.get("cache") else [])
            built = [c["build_seconds"] for c in caches if c.get("build_seconds") is not None]
            line["of_which_cache_build_s"] = round(sum(built), 2) if built else None
        out[stage] = line
    return out


def fitted_costs(bench: dict[str, Any]) -> tuple[c.TokenSeconds | None, str | None]:
    """Input/output replica-seconds per token from the bench's two shapes, or why not."""
    runs = [
        (r["duration"], r["total_input_tokens"], r["total_output_tokens"])
        for r in bench["fit_runs"]
        if r.get("duration") and r.get("total_input_tokens") is not None
    ]
    if not runs:
        return None, "no fit run has a duration and token totals: priced at the benchmark's own mix"
    try:
        return c.fit_token_seconds(runs), None
    except ValueError as exc:
        return None, f"{exc}: priced at the benchmark's own mix"


@dataclass(frozen=True)
class Capacity:
    """What one replica serves: tokens/s at the priced mix, and the marginal input / output prices."""

    tokens_per_s: float
    mix: float  # the input fraction priced: the recipe's, or the benchmark's own without a fit
    costs: c.TokenSeconds | None  # fitted replica-seconds per token (scaled to the serving device)
    why_not: str | None  # why there is no fit
    input_usd_per_m: float | None = None
    output_usd_per_m: float | None = None

    @property
    def record(self) -> TokenSecondsRecord | None:
        """The fit as the manifest records it (None: priced at the benchmark's own mix)."""
        if self.costs is None:
            return None
        return TokenSecondsRecord(
            input_s=self.costs.input_s, output_s=self.costs.output_s, clamped=self.costs.clamped
        )


def priced_point(sweep: list[dict[str, Any]], operating: int | None) -> tuple[dict[str, Any], bool | None]:
    """The point prices are quoted at: the bench's operating concurrency (the highest meeting the
    SLO), else the best throughput; and whether the SLO was met (None: no point could be checked)."""
    op = next((p for p in sweep if p["max_concurrency"] == operating), None)
    slo_met = None if all(p.get("meets_slo") is None for p in sweep) else op is not None
    if op is None:  # no point met the SLO (or none was checked): price the best throughput, and say so
        op = max(sweep, key=lambda p: p["output_throughput"] or 0)
    return op, slo_met


def capacity(
    bench: dict[str, Any], op: dict[str, Any], *, mix: float, scale: float, usd_per_hour: float, gpus: int
) -> Capacity:
    """A replica's capacity at the recipe's mix from the fitted token costs; without a fit (see
    `why_not`) only the benchmark's own mix can be priced."""
    costs, why_not = fitted_costs(bench)
    if costs is None:
        total = op["input_throughput"] + op["output_throughput"]
        return Capacity(total * scale, op["input_throughput"] / total, None, why_not)
    costs = c.TokenSeconds(costs.input_s / scale, costs.output_s / scale, costs.clamped)
    return Capacity(
        costs.capacity(mix),
        mix,
        costs,
        None,
        # marginal prices: a mix of only input (fraction 1) or only output (0) tokens
        input_usd_per_m=round(c.usd_per_million_at_mix(costs, 1.0, usd_per_hour, gpus), 6),
        output_usd_per_m=round(c.usd_per_million_at_mix(costs, 0.0, usd_per_hour, gpus), 6),
    )


@dataclass(frozen=True)
class Bill:
    """Replicas sized for the peak and what they cost: per month, and per 1M tokens saturated
    (a replica busy all month) and effective (the bill at the stated volume ÷ its tokens)."""

    saturated: float
    replica_monthly: float
    replicas: int
    monthly: float
    effective: float  # inf without a volume


def bill(cfg: Any, capacity: float, *, usd_per_hour: float, gpus: int) -> Bill:
    replica_monthly = c.monthly_from_hourly(usd_per_hour, gpus)
    replicas = c.replicas_for(cfg.daily_tokens, capacity, cfg.peak_to_average)
    monthly = replicas * replica_monthly
    return Bill(
        saturated=c.usd_per_million_tokens(capacity, usd_per_hour, gpus),
        replica_monthly=replica_monthly,
        replicas=replicas,
        monthly=monthly,
        effective=c.effective_usd_per_million(monthly, cfg.daily_tokens),
    )


def compare_apis(cfg: Any, capacity: float, bill: Bill, upfront: float) -> dict[str, ApiComparison]:
    """Per API in `cost.compare`: its bill for the same volume and mix, savings, payback, break-even."""
    out = {}
    for api, price in cfg.compare.items():
        p_in, p_out = c.api_price(api, price.input_usd_per_m, price.output_usd_per_m)
        api_per_m = c.api_usd_per_million(p_in, p_out, cfg.input_fraction)
        cmp = c.compare_to_api(
            api,
            daily_tokens=cfg.daily_tokens,
            input_usd_per_m=p_in,
            output_usd_per_m=p_out,
            self_hosted_monthly_usd=bill.monthly,
            upfront_usd=upfront,
            input_fraction=cfg.input_fraction,
        )
        be = c.break_even_daily_tokens(bill.replica_monthly, capacity, api_per_m, cfg.peak_to_average)
        out[api] = ApiComparison(
            api_usd_per_m=round(api_per_m, 4),
            api_monthly_usd=round(cmp.api_monthly_usd, 2),
            monthly_savings_usd=round(cmp.monthly_savings_usd, 2),
            payback_months=None if cmp.payback_months == float("inf") else round(cmp.payback_months, 3),
            break_even_daily_tokens=None if be is None else round(be),
            effective_ratio=round(api_per_m / bill.effective, 4) if bill.effective != float("inf") else None,
            saturated_ratio=round(api_per_m / bill.saturated, 4),
        )
    return out


class DecodeBound(NamedTuple):
    """The batch-1 decode floor (weight bytes / bandwidth) next to the measured TPOT at the lowest
    concurrency (per-token chunks only: serving/benchmark.decode_tpot), and their ratio (MBU)."""

    floor_ms: float
    tpot_ms: float | None
    tpot_method: str | None
    utilisation: float | None


def decode_bound(bench: dict[str, Any], bandwidth_tbs: float) -> DecodeBound:
    one = min(bench["sweep"], key=lambda p: p["max_concurrency"])
    tpot, weights = one.get("decode_tpot_ms"), bench["weight_bytes"]
    mbu = round(c.bandwidth_utilisation(weights, tpot, bandwidth_tbs), 4) if tpot else None
    return DecodeBound(round(c.decode_floor_ms(weights, bandwidth_tbs), 6), tpot, one.get("tpot_method"), mbu)


def price_model(
    bench: dict[str, Any], ctx: StageContext, *, gpu: Any, usd_per_hour: float, upfront: float, scale: float
) -> CostModel:
    """One benchmarked model in dollars: capacity at the priced point, replicas for the peak, the
    monthly bill and $/1M, each API set against it, and the decode bandwidth bound."""
    cfg = ctx.recipe.cost
    gpus, sweep = bench.get("gpus") or 1, bench["sweep"]
    op, slo_met = priced_point(sweep, bench.get("operating_concurrency"))
    cap = capacity(bench, op, mix=cfg.input_fraction, scale=scale, usd_per_hour=usd_per_hour, gpus=gpus)
    cost = bill(cfg, cap.tokens_per_s, usd_per_hour=usd_per_hour, gpus=gpus)
    decode = decode_bound(bench, gpu.mem_bandwidth_tbs)
    return CostModel(
        priced_at_concurrency=op["max_concurrency"],
        slo_met=slo_met,
        gpus=gpus,
        token_seconds=cap.record,
        priced_mix=round(cap.mix, 4),
        mix_note=cap.why_not,
        input_usd_per_m=cap.input_usd_per_m,
        output_usd_per_m=cap.output_usd_per_m,
        capacity_tokens_per_s=round(cap.tokens_per_s, 3),
        saturated_usd_per_m=round(cost.saturated, 6),
        effective_usd_per_m=None if cost.effective == float("inf") else round(cost.effective, 6),
        replicas=cost.replicas,
        replica_monthly_usd=round(cost.replica_monthly, 2),
        self_hosted_monthly_usd=round(cost.monthly, 2),
        unstable_points=[
            p["max_concurrency"] for p in [*sweep, bench.get("fit_point") or {}] if p.get("unstable")
        ],
        output_tokens_per_s=round(op["output_throughput"], 2),
        p50_e2el_ms=op.get("median_e2el_ms"),
        p99_e2el_ms=op.get("p99_e2el_ms"),
        p50_ttft_ms=op.get("median_ttft_ms"),
        p99_ttft_ms=op.get("p99_ttft_ms"),
        compare=compare_apis(cfg, cap.tokens_per_s, cost, upfront),
        decode_floor_ms=decode.floor_ms,
        measured_tpot_ms_at_1=decode.tpot_ms,
        tpot_method_at_1=decode.tpot_method,
        bandwidth_utilisation=decode.utilisation,
    )


def run(ctx: StageContext) -> StageResult:
    cfg, compute = ctx.recipe.cost, ctx.recipe.compute
    train_gpu, train_price = c.gpu_and_price(compute.gpu, cfg.usd_per_gpu_hour)
    serve_name = cfg.serve_gpu or compute.gpu
    serve_gpu, serve_price = c.gpu_and_price(
        serve_name,
        cfg.serve_usd_per_gpu_hour or (cfg.usd_per_gpu_hour if serve_name == compute.gpu else None),
    )
    spent = spend(ctx, train_price, serve_price)
    upfront = sum(t["usd"] for t in spent.values()) + cfg.other_upfront_usd
    bench_metrics = ctx.run.record("bench").metrics if ctx.run.is_done("bench") else {}
    bench = bench_metrics.get("models", {})
    device = bench_metrics.get("device")
    scale = throughput_scale(ctx, serve_name, device) if bench else 1.0
    models = {
        name: price_model(b, ctx, gpu=serve_gpu, usd_per_hour=serve_price, upfront=upfront, scale=scale)
        for name, b in bench.items()
    }
    on_cpu = serve_name == "cpu"
    assumptions = {
        "serve_gpu": serve_name,
        "serve_usd_per_gpu_hour": serve_price,
        "serve_gpu_bandwidth_tb_per_s": serve_gpu.mem_bandwidth_tbs,
        "serve_gpu_peak_tflops": serve_gpu.bf16_tflops,
        "gpus_per_replica": {n: m.gpus for n, m in models.items()},
        "bench_device": device,
        "throughput_scale": cfg.throughput_scale,
        "train_gpu": compute.gpu,
        "train_usd_per_gpu_hour": train_price,
        "training_gpus": compute.training_gpus,
        "mfu": {m: mfu_for(compute, m) for m in MFU_DEFAULTS},  # behind the planned $ of each stage
        "daily_tokens": cfg.daily_tokens,
        "input_fraction": cfg.input_fraction,
        "peak_to_average": cfg.peak_to_average,
        "hours_per_month": c.HOURS_PER_MONTH,
        "other_upfront_usd": cfg.other_upfront_usd,
        "api_prices": {api: c.api_price_row(api, p) for api, p in cfg.compare.items()},
        "note": (
            "CPU run: throughput, latency and $ are CPU figures (the price is the GPU table's 'cpu' row), "
            "not a forecast for a GPU deployment; the bandwidth line uses a CPU memory bandwidth."
            if on_cpu
            else "Saturated $/1M: a replica busy all month; effective $/1M: the bill at the stated volume ÷ its tokens."
        ),
    }
    metrics = {
        "assumptions": assumptions,
        "spend": spent,
        "upfront_usd": round(upfront, 4),
        "models": {n: to_dict(m) for n, m in models.items()},
    }
    summary = (
        "; ".join(
            f"{n}: ${m.effective_usd_per_m or float('inf'):.4g}/1M effective, "
            f"${m.saturated_usd_per_m:.4g}/1M saturated"
            for n, m in models.items()
        )
        or "no bench results to price"
    )
    return StageResult(outputs={}, metrics=metrics, summary=summary)
