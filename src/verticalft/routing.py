"""Cascade routing, decided offline from the eval stage's answers: the cheap model answers first
and hands the query to the next tier when its confidence is below a threshold (RouteLLM-style
"answer small, escalate the hard ones"). Pure functions, no GPU, no model loading.

Inputs per tier: per eval item whether its answer was right and its confidence (geometric-mean
token probability, from the eval stage), and what serving it costs as a function of the volume it
receives. An escalated query pays for both tiers' tokens: the first tier always serves the full
volume, the next one the share that reached it, and so on.

Honest selection: thresholds are chosen on one half of the eval items (`split_halves`) and the
chosen cascade is reported on the other half; the frontier shown is the report half's.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from verticalft import pricing as c


@dataclass(frozen=True)
class TierPrice:
    """What a tier costs per month as a function of the daily tokens it receives: self-hosted
    (replicas sized for the peak × a replica's month) or an API (list price × tokens)."""

    capacity_tokens_per_s: float | None = None
    replica_monthly_usd: float | None = None
    peak_to_average: float = 2.0
    api_usd_per_m: float | None = None

    def monthly(self, daily_tokens: float) -> float:
        if self.api_usd_per_m is not None:
            return daily_tokens * c.DAYS_PER_MONTH / 1e6 * self.api_usd_per_m
        if daily_tokens <= 0:
            return 0.0  # a tier nothing reaches needs no replica
        assert self.capacity_tokens_per_s and self.replica_monthly_usd is not None
        return c.monthly_bill(
            daily_tokens, self.capacity_tokens_per_s, self.replica_monthly_usd, self.peak_to_average
        )


@dataclass(frozen=True)
class Tier:
    name: str
    correct: Sequence[bool]  # per eval item
    confidence: Sequence[float | None]  # per eval item; None: unknown (always escalates)
    price: TierPrice


@dataclass(frozen=True)
class CascadePoint:
    thresholds: tuple[float, ...]  # one per tier but the last: answer when confidence ≥ threshold
    quality: float  # share of items answered correctly
    shares: tuple[float, ...]  # share of queries each tier *answers*
    reached: tuple[float, ...]  # share of queries each tier *serves* (answers or escalates)
    usd_per_m: float  # effective: the cascade's monthly bill ÷ the monthly tokens


def split_halves(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    """Item indices split in two by a hash of each item's key (`scoring.item_key`: its prompt, or
    its whole chat for an item with `system`/`messages`): stable when the eval
    file is reordered or grows. The first half picks thresholds, the second reports them."""
    pick: list[int] = []
    report: list[int] = []
    for i, key in enumerate(keys):
        (pick if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else report).append(i)
    return pick, report


def simulate(
    tiers: Sequence[Tier], thresholds: Sequence[float], items: Sequence[int], daily_tokens: float
) -> CascadePoint:
    """Run the cascade over `items`: tier k answers when its confidence ≥ thresholds[k]; the last
    tier answers whatever reaches it. Cost at `daily_tokens`, each tier billed for what reaches it."""
    if len(thresholds) != len(tiers) - 1:
        raise ValueError("one threshold per tier except the last")
    answered = [0] * len(tiers)
    reached = [0] * len(tiers)
    right = 0
    for i in items:
        for k, tier in enumerate(tiers):
            reached[k] += 1
            conf = tier.confidence[i]
            last = k == len(tiers) - 1
            if last or (conf is not None and conf >= thresholds[k]):
                answered[k] += 1
                right += bool(tier.correct[i])
                break
    n = len(items)
    if n == 0:
        raise ValueError("no items to route")
    reach = tuple(r / n for r in reached)
    bill = sum(t.price.monthly(daily_tokens * share) for t, share in zip(tiers, reach, strict=True))
    return CascadePoint(
        tuple(thresholds),
        right / n,
        tuple(a / n for a in answered),
        reach,
        c.effective_usd_per_million(bill, daily_tokens),
    )


def candidate_thresholds(tier: Tier, items: Sequence[int], max_points: int = 41) -> list[float]:
    """Thresholds worth trying for a tier: each distinct confidence it gave on `items` (every
    escalation share those items allow), thinned to evenly spaced quantiles past `max_points`,
    plus +∞ (always escalate). 0 answers everything with a known confidence."""
    values = sorted({c for i in items if (c := tier.confidence[i]) is not None})
    if len(values) > max_points:
        step = (len(values) - 1) / (max_points - 1)
        values = [values[round(j * step)] for j in range(max_points)]
    return [0.0, *[v for v in values if v > 0.0], float("inf")]


def frontier(
    tiers: Sequence[Tier],
    items: Sequence[int],
    daily_tokens: float,
    grid: Sequence[Sequence[float]] | None = None,
) -> list[CascadePoint]:
    """Every threshold combination's point on `items` (grid: per non-final tier its candidates)."""
    grid = grid or [candidate_thresholds(t, items) for t in tiers[:-1]]
    return [simulate(tiers, combo, items, daily_tokens) for combo in itertools.product(*grid)]


def pareto(points: Sequence[CascadePoint]) -> list[CascadePoint]:
    """The points no other point beats on both quality (higher) and cost (lower), by cost."""
    best: list[CascadePoint] = []
    for p in sorted(points, key=lambda p: (p.usd_per_m, -p.quality)):
        if not best or p.quality > best[-1].quality:
            best.append(p)
    return best


def choose(
    points: Sequence[CascadePoint],
    min_quality: float | None = None,
    max_usd_per_m: float | None = None,
) -> tuple[CascadePoint, bool]:
    """The point a target picks, and whether the target was met: the cheapest point with quality
    ≥ `min_quality`, or the best quality at ≤ `max_usd_per_m`. Unmet: the closest point (best
    quality, or lowest cost) — the caller says so."""
    if min_quality is not None and max_usd_per_m is None:
        ok = [p for p in points if p.quality >= min_quality - 1e-12]
        if ok:
            return min(ok, key=lambda p: (p.usd_per_m, -p.quality)), True
        return max(points, key=lambda p: (p.quality, -p.usd_per_m)), False
    if min_quality is not None or max_usd_per_m is None:
        raise ValueError("give exactly one target: min_quality or max_usd_per_m")
    ok = [p for p in points if p.usd_per_m <= max_usd_per_m + 1e-12]
    if ok:
        return max(ok, key=lambda p: (p.quality, -p.usd_per_m)), True
    return min(points, key=lambda p: (p.usd_per_m, -p.quality)), False


def expected_calibration_error(
    confidence: Sequence[float | None], correct: Sequence[bool], bins: int = 10
) -> tuple[float | None, list[dict[str, float]]]:
    """ECE over equal-width confidence bins: Σ (items in bin / items) × |accuracy − mean confidence|,
    and the reliability diagram's bins (items without a confidence are left out)."""
    pairs = [(p, bool(ok)) for p, ok in zip(confidence, correct, strict=True) if p is not None]
    if not pairs:
        return None, []
    table: list[dict[str, float]] = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, ok) for p, ok in pairs if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if not inside:
            continue
        acc = sum(ok for _, ok in inside) / len(inside)
        conf = sum(p for p, _ in inside) / len(inside)
        ece += len(inside) / len(pairs) * abs(acc - conf)
        table.append({"lo": lo, "hi": hi, "items": len(inside), "accuracy": acc, "confidence": conf})
    return ece, table


def describe(tiers: Sequence[str], point: CascadePoint, top_quality: float, top_usd_per_m: float) -> str:
    """The chosen point in words, against the last tier alone."""
    parts = [
        f"{name} answers {share:.0%}" for name, share in zip(tiers, point.shares, strict=True) if share > 0
    ]
    rel_q = f"{point.quality / top_quality:.2f}" if top_quality else "–"
    rel_c = (
        f"{point.usd_per_m / top_usd_per_m:.0%}" if top_usd_per_m and top_usd_per_m != float("inf") else "–"
    )
    return f"{', '.join(parts)}; {rel_q} of {tiers[-1]}'s quality at {rel_c} of its cost"
