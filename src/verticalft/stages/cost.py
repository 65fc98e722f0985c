"""cost: dollars from what the run measured — no GPU, no model loading, rerun whenever prices change.

Inputs (all from the manifest): the bench stage's sweeps, the eval stage's scores, each training
stage's wall time. Per benchmarked model: $/1M input, output and blended tokens at the highest
concurrency that meets the SLO, the monthly bill at the recipe's daily volume against each API in
`cost.compare`, and the payback of the training spend; the decode bandwidth bound next to the
measured TPOT (model-bandwidth utilisation). Every assumption is written next to the numbers.
The arithmetic is `verticalft.cost` (pure, unit-tested on the seed's figures).
"""

from __future__ import annotations

from typing import Any

from verticalft import cost as c
from verticalft.plan import GPUS
from verticalft.stages.base import StageContext, StageResult

TRAINING = ("cpt", "sft", "dpo", "distill")


def gpu_and_price(name: str, price: float | None) -> tuple[Any, float]:
    if name not in GPUS:
        raise ValueError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
    return GPUS[name], price or GPUS[name].usd_per_hour


def training_costs(ctx: StageContext, usd_per_hour: float) -> dict[str, Any]:
    """Measured: wall time × GPUs × price per training stage; planned: `verticalft plan` beside it."""
    from verticalft.plan import plan_recipe

    gpus = ctx.recipe.compute.training_gpus
    try:
        planned = {s.stage: s.usd for s in plan_recipe(ctx.recipe).stages}
    except Exception:  # noqa: BLE001 - the plan is context, never a reason to lose the measurement
        planned = {}
    out = {}
    for stage in TRAINING:
        rec = ctx.run.record(stage)
        if rec.status == "done" and rec.wall_time_s:
            plan_usd = sum(
                v
                for k, v in planned.items()
                if k == stage or k.startswith(f"{stage}:") or k.startswith(f"{stage} ")
            )
            out[stage] = {
                "wall_time_s": rec.wall_time_s,
                "gpus": gpus,
                "usd": round(c.training_cost(rec.wall_time_s, usd_per_hour, gpus), 6),
                "planned_usd": round(plan_usd, 2) if plan_usd else None,
            }
    return out


def price_model(
    bench: dict[str, Any], ctx: StageContext, gpu: Any, usd_per_hour: float, upfront: float
) -> dict[str, Any]:
    cfg = ctx.recipe.cost
    gpus = ctx.recipe.stages.bench.gpus_per_model if ctx.recipe.stages.bench else 1
    sweep = bench["sweep"]
    op = next((p for p in sweep if p["max_concurrency"] == bench.get("operating_concurrency")), None)
    # None: no point's SLO could be checked (no goodput figure), which is not "met"
    slo_met = None if all(p.get("meets_slo") is None for p in sweep) else op is not None
    if op is None:  # no point met the SLO (or none was checked): price the best throughput, and say so
        op = max(sweep, key=lambda p: p["output_throughput"] or 0)
    prices = c.serving_prices(op["input_throughput"], op["output_throughput"], usd_per_hour, gpus)
    total_tps = op["input_throughput"] + op["output_throughput"]
    replicas = c.replicas_needed(cfg.daily_tokens, total_tps, cfg.utilisation)
    monthly = c.monthly_from_hourly(usd_per_hour, gpus * replicas)
    comparisons = {}
    for api, price in cfg.compare.items():
        p_in, p_out = c.api_price(api, price.input_usd_per_m, price.output_usd_per_m)
        cmp = c.compare_to_api(api, cfg.daily_tokens, p_in, p_out, monthly, upfront, cfg.input_fraction)
        api_blended = cfg.input_fraction * p_in + (1 - cfg.input_fraction) * p_out
        comparisons[api] = {
            "api_monthly_usd": round(cmp.api_monthly_usd, 2),
            "monthly_savings_usd": round(cmp.monthly_savings_usd, 2),
            "payback_months": None if cmp.payback_months == float("inf") else round(cmp.payback_months, 3),
            "api_blended_usd_per_m": round(api_blended, 4),
            "per_token_ratio": round(api_blended / prices["blended_usd_per_m"], 2),
        }
    one = min(sweep, key=lambda p: p["max_concurrency"])
    floor = c.decode_floor_ms(bench["weight_bytes"], gpu.mem_bandwidth_tbs)
    tpot = one.get("median_tpot_ms")
    return {
        "priced_at_concurrency": op["max_concurrency"],
        "slo_met": slo_met,
        **{k: round(v, 6) for k, v in prices.items()},
        "output_tokens_per_s": round(op["output_throughput"], 2),
        "p50_e2el_ms": op.get("median_e2el_ms"),
        "p99_e2el_ms": op.get("p99_e2el_ms"),
        "p50_ttft_ms": op.get("median_ttft_ms"),
        "p99_ttft_ms": op.get("p99_ttft_ms"),
        "replicas": replicas,
        "self_hosted_monthly_usd": round(monthly, 2),
        "compare": comparisons,
        "decode_floor_ms": round(floor, 6),
        "measured_tpot_ms_at_1": tpot,
        "bandwidth_utilisation": round(
            c.bandwidth_utilisation(bench["weight_bytes"], tpot, gpu.mem_bandwidth_tbs), 4
        )
        if tpot
        else None,
    }


def run(ctx: StageContext) -> StageResult:
    cfg, compute = ctx.recipe.cost, ctx.recipe.compute
    train_gpu, train_price = gpu_and_price(compute.gpu, cfg.usd_per_gpu_hour)
    serve_name = cfg.serve_gpu or compute.gpu
    serve_gpu, serve_price = gpu_and_price(
        serve_name,
        cfg.serve_usd_per_gpu_hour or (cfg.usd_per_gpu_hour if serve_name == compute.gpu else None),
    )
    training = training_costs(ctx, train_price)
    upfront = sum(t["usd"] for t in training.values()) + cfg.other_upfront_usd
    bench = ctx.run.record("bench").metrics.get("models", {}) if ctx.run.is_done("bench") else {}
    models = {name: price_model(b, ctx, serve_gpu, serve_price, upfront) for name, b in bench.items()}
    on_cpu = serve_name == "cpu"
    assumptions = {
        "serve_gpu": serve_name,
        "serve_usd_per_gpu_hour": serve_price,
        "train_gpu": compute.gpu,
        "train_usd_per_gpu_hour": train_price,
        "daily_tokens": cfg.daily_tokens,
        "input_fraction": cfg.input_fraction,
        "utilisation": cfg.utilisation,
        "hours_per_month": c.HOURS_PER_MONTH,
        "other_upfront_usd": cfg.other_upfront_usd,
        "api_prices": {
            api: c.api_price(api, p.input_usd_per_m, p.output_usd_per_m) for api, p in cfg.compare.items()
        },
        "note": (
            "CPU run: throughput, latency and $ are CPU figures (the price is the GPU table's 'cpu' row), "
            "not a forecast for a GPU deployment; the bandwidth line uses a CPU memory bandwidth."
            if on_cpu
            else "Prices at the measured operating point; input and output $/1M each charge the whole GPU-hour."
        ),
    }
    metrics = {
        "assumptions": assumptions,
        "training": training,
        "upfront_usd": round(upfront, 4),
        "models": models,
    }
    summary = (
        "; ".join(f"{n}: ${m['blended_usd_per_m']:.4g}/1M tokens" for n, m in models.items())
        or "no bench results to price"
    )
    return StageResult(outputs={}, metrics=metrics, summary=summary)
