"""route: which model should answer — the cheap one first, the teacher when it is unsure.

No GPU and no model loading: the eval stage already stored every model's answer to every item
with its confidence (`eval/<model>.jsonl`), and the cost stage every model's capacity and
replica price. For each cascade in `route.cascades` (default: each distilled student → the
final teacher) this stage tries every threshold (`routing.frontier`), picks the point that meets
`route.target` on one half of the eval items and reports it on the other half, so the chosen
quality is not the one the threshold was fitted to. Also each model alone on the report half
(the frontier's other points) and each model's calibration (ECE, reliability bins).

An `api:<name>` tier reads its answers from `route.apis.<name>.answers` (rows: the item's
`prompt`, or its `system`/`messages` as the eval file writes them, and `prediction`; matched by
`scoring.item_key`) and is priced at its list price for the recipe's token mix (cost.compare, else the shipped table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verticalft import pricing as c
from verticalft import routing as r
from verticalft.data import DataError, parse_jsonl
from verticalft.metrics import (
    Calibration,
    CalibrationBin,
    Cascade,
    CascadePoint,
    RouteItems,
    RouteMetrics,
    from_dict,
    to_dict,
)
from verticalft.rundir import atomic_write_json
from verticalft.scoring import item_key, item_text, load_items, score_answer
from verticalft.stages.base import StageContext, StageResult


def eval_rows(path: str) -> list[dict[str, Any]]:
    """A model's domain answers from the eval stage's JSONL, in item order."""
    return [
        row for _, row, _ in parse_jsonl(Path(path)) if isinstance(row, dict) and row.get("set") == "domain"
    ]


def api_rows(name: str, answers: str, items: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """An API tier's answers, matched to the eval items by their key (`scoring.item_key`: the
    prompt, or the chat of an item with `system`/`messages`) and scored like the eval stage."""
    by_key = {}
    for n, row, _ in parse_jsonl(Path(answers)):
        if (
            not isinstance(row, dict)
            or not (row.get("prompt") or row.get("messages"))
            or "prediction" not in row
        ):
            raise DataError(
                f"{answers}:{n}: route.apis.{name}: a row needs `prompt` (or the item's `messages`) and `prediction`"
            )
        by_key[item_key(row)] = row
    missing = [it for it in items if item_key(it) not in by_key]
    if missing:
        raise DataError(
            f"{answers}: route.apis.{name} has no answer for {len(missing)} of {len(items)} eval prompts "
            f"(first: {item_text(missing[0])[:80]!r})"
        )
    out = []
    for it in items:
        row = by_key[item_key(it)]
        ok = score_answer(str(row["prediction"]), it["answer"], it["kind"], tolerance, it.get("choices"))
        out.append({"prompt": item_text(it), "correct": ok, "confidence": row.get("confidence")})
    return out


def tier_for(
    ctx: StageContext, name: str, rows: dict[str, list[dict[str, Any]]], priced: dict[str, Any]
) -> r.Tier:
    cfg = ctx.recipe.cost
    if name.startswith("api:"):
        api = name.removeprefix("api:")
        price = cfg.compare.get(api)
        p_in, p_out = c.api_price(
            api, price.input_usd_per_m if price else None, price.output_usd_per_m if price else None
        )
        tier_price = r.TierPrice(api_usd_per_m=c.api_usd_per_million(p_in, p_out, cfg.input_fraction))
    else:
        p = priced.get(name)
        if not p or not p.get("capacity_tokens_per_s"):
            raise ValueError(
                f"route: '{name}' has no price (the bench stage did not serve it); priced: {', '.join(priced)}"
            )
        tier_price = r.TierPrice(p["capacity_tokens_per_s"], p["replica_monthly_usd"], cfg.peak_to_average)
    return r.Tier(
        name, [bool(x["correct"]) for x in rows[name]], [x.get("confidence") for x in rows[name]], tier_price
    )


def point_record(p: r.CascadePoint) -> CascadePoint:
    """A point as the manifest records it: ∞ (never answers, cannot be priced) as None."""
    return CascadePoint(
        thresholds=[None if t == float("inf") else round(t, 6) for t in p.thresholds],
        quality=round(p.quality, 4),
        shares=[round(s, 4) for s in p.shares],
        usd_per_m=None if p.usd_per_m == float("inf") else round(p.usd_per_m, 6),
    )


def route_cascade(
    names: list[str], tiers: list[r.Tier], pick: list[int], report: list[int], daily: float, target: Any
) -> Cascade:
    """Thresholds chosen on `pick`, reported on `report`, with the report half's frontier."""
    top = tiers[-1]
    top_pick = r.simulate([top], [], pick, daily)
    top_report = r.simulate([top], [], report, daily)
    min_q = target.min_quality
    if target.min_retention is not None:
        min_q = target.min_retention * top_pick.quality
    points = r.frontier(tiers, pick, daily)
    chosen, met = r.choose(points, min_quality=min_q, max_usd_per_m=target.max_usd_per_m)
    reported = r.simulate(tiers, chosen.thresholds, report, daily)
    seen = r.frontier(tiers, report, daily, grid=[r.candidate_thresholds(t, pick) for t in tiers[:-1]])
    return Cascade(
        tiers=names,
        target={k: v for k, v in target.model_dump().items() if v is not None},
        target_quality_on_pick_half=None if min_q is None else round(min_q, 4),
        target_met_on_pick_half=met,
        chosen_on_pick_half=point_record(chosen),
        chosen=point_record(reported),
        sentence=r.describe(names, reported, top_report.quality, top_report.usd_per_m),
        last_tier_alone=point_record(top_report),
        frontier=[point_record(p) for p in r.pareto(seen)],
        points=[point_record(p) for p in seen],
    )


def with_teacher(cascades: list[list[str]], teacher: str | None) -> list[list[str]]:
    """The cascades with `teacher` replaced by the model the eval stage scored as the final teacher
    (None: it scored none, `stages.eval.include_base: false` and no trained teacher stage)."""
    if teacher is not None:
        return [[teacher if n == "teacher" else n for n in cas] for cas in cascades]
    if any("teacher" in cas for cas in cascades):
        raise ValueError(
            "route: a cascade ends in 'teacher' but the eval stage scored no teacher "
            "(stages.eval.include_base: false and no cpt/sft/dpo stage); name the tiers in route.cascades"
        )
    return cascades


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.recipe.route
    ev = ctx.run.record("eval")
    if ev.status != "done":
        raise ValueError("route needs the eval stage's answers: run eval first")
    priced = (ctx.run.record("cost").metrics or {}).get("models") or {}
    teacher = ev.metrics.get("teacher")
    rows = {name: eval_rows(path) for name, path in ev.outputs.items()}
    items = next(iter(rows.values()))
    students = [n for n, m in (ev.metrics.get("models") or {}).items() if m.get("role") == "student"]
    cascades = cfg.cascades or [[s, "teacher"] for s in students if s in priced]
    cascades = with_teacher(cascades, teacher)
    _add_api_rows(ctx, cascades, rows=rows, items=items, models=list(ev.outputs))
    pick, report = r.split_halves([item_key(it) for it in items])
    daily = ctx.recipe.cost.daily_tokens
    singles = {}
    for name in [n for n in rows if n in priced or n.startswith("api:")]:
        alone = r.simulate([tier_for(ctx, name, rows, priced)], [], report, daily)
        singles[name] = point_record(alone)
    routes = {}
    for cas in cascades:
        tiers = [tier_for(ctx, n, rows, priced) for n in cas]
        routes[" → ".join(cas)] = route_cascade(cas, tiers, pick, report, daily, cfg.target)
    calibration = {name: _calibration(name, model_rows) for name, model_rows in rows.items()}
    record = RouteMetrics(
        items=RouteItems(pick=len(pick), report=len(report)),
        daily_tokens=daily,
        singles=singles,
        cascades=routes,
        calibration=calibration,
    )
    metrics = to_dict(record)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ctx.dir / "route.json", metrics)
    summary = "; ".join(f"{k}: {v.sentence}" for k, v in routes.items()) or "no cascade to route"
    return StageResult(outputs={"route": str(ctx.dir / "route.json")}, metrics=metrics, summary=summary)


def _add_api_rows(
    ctx: StageContext,
    cascades: list[list[str]],
    *,
    rows: dict[str, list[dict[str, Any]]],
    items: list[dict[str, Any]],
    models: list[str],
) -> None:
    """Score each `api:<name>` tier's recorded answers (route.apis.<name>.answers) on the eval
    items into `rows`, so an API can stand in a cascade beside the run's own models; a tier that
    is neither an API with answers nor an evaluated model is an error naming what exists."""
    cfg = ctx.recipe.route
    for cas in cascades:
        for n in cas:
            if n.startswith("api:") and n not in rows:
                api = n.removeprefix("api:")
                if api not in cfg.apis:
                    raise ValueError(f"route: tier '{n}' needs its answers in route.apis.{api}.answers")
                full = (
                    {item_key(it): it for it in load_items(ctx.recipe.data.eval)}
                    if ctx.recipe.data.eval
                    else {}
                )
                scored = [{**it, "choices": (full.get(item_key(it)) or {}).get("choices")} for it in items]
                rows[n] = api_rows(
                    api, cfg.apis[api].answers, scored, ctx.recipe.evaluation.numeric_tolerance
                )
            elif n not in rows:
                raise ValueError(f"route: '{n}' has no eval answers; models: {', '.join(models)}")


def _calibration(name: str, model_rows: list[dict[str, Any]]) -> Calibration:
    """Expected calibration error of one model's confidences against its correct answers."""
    ece, bins = r.expected_calibration_error(
        [x.get("confidence") for x in model_rows], [bool(x["correct"]) for x in model_rows]
    )
    return Calibration(
        ece=None if ece is None else round(ece, 4),
        bins=[from_dict(CalibrationBin, b, f"route: {name} bin") for b in bins],
    )
