"""Cascade routing on hand-computed examples: four items, a student that is sure of two of them."""

import pytest

from verticalft.routing import (
    Tier,
    TierPrice,
    choose,
    describe,
    expected_calibration_error,
    frontier,
    pareto,
    simulate,
    split_halves,
)

ALL = [0, 1, 2, 3]
# student right on items 0 and 2, its confidence 0.9 / 0.8 / 0.6 / 0.3; the teacher right on 0–2
STUDENT = Tier("s", [True, False, True, False], [0.9, 0.8, 0.6, 0.3], TierPrice(api_usd_per_m=1.0))
TEACHER = Tier("t", [True, True, True, False], [None] * 4, TierPrice(api_usd_per_m=10.0))


def test_a_threshold_splits_the_traffic_and_both_tiers_pay():
    # 0.7: the student answers items 0, 1 (one right), the teacher 2, 3 (one right) → 2/4;
    # the student serves every query ($1) and the teacher half of them (0.5 × $10) → $6 per 1M
    p = simulate([STUDENT, TEACHER], [0.7], ALL, daily_tokens=1e6)
    assert p.quality == 0.5 and p.shares == (0.5, 0.5) and p.reached == (1.0, 0.5)
    assert p.usd_per_m == pytest.approx(6.0)
    # 0.85: the student answers item 0 only (right), the teacher 1–3 (two right) → 3/4 at 1 + 7.5
    p = simulate([STUDENT, TEACHER], [0.85], ALL, daily_tokens=1e6)
    assert (p.quality, p.usd_per_m) == (0.75, pytest.approx(8.5))
    # 0: the student answers everything → 2/4 at $1
    p = simulate([STUDENT, TEACHER], [0.0], ALL, daily_tokens=1e6)
    assert (p.quality, p.usd_per_m, p.shares) == (0.5, pytest.approx(1.0), (1.0, 0.0))


def test_frontier_pareto_and_targets():
    points = frontier([STUDENT, TEACHER], ALL, daily_tokens=1e6)
    by_t = {p.thresholds[0]: (p.quality, round(p.usd_per_m, 6)) for p in points}
    # candidates: 0, every confidence, +inf (always escalate: the student still pays)
    assert by_t == {0.0: (0.5, 1.0), 0.3: (0.5, 1.0), 0.6: (0.5, 3.5), 0.8: (0.5, 6.0), 0.9: (0.75, 8.5),
                    float("inf"): (0.75, 11.0)}  # fmt: skip
    best = pareto(points)
    assert [(p.quality, round(p.usd_per_m, 6)) for p in best] == [(0.5, 1.0), (0.75, 8.5)]
    chosen, met = choose(points, min_quality=0.7)
    assert met and chosen.thresholds == (0.9,)
    chosen, met = choose(points, max_usd_per_m=5.0)
    assert met and (chosen.quality, chosen.usd_per_m) == (0.5, pytest.approx(1.0))
    chosen, met = choose(points, min_quality=0.9)  # unreachable: the best quality, flagged
    assert not met and chosen.quality == 0.75
    with pytest.raises(ValueError):
        choose(points)
    assert (
        describe(["s", "t"], best[1], 0.75, 10.0)
        == "s answers 25%, t answers 75%; 1.00 of t's quality at 85% of its cost"
    )


def test_self_hosted_tier_pays_whole_replicas_for_what_reaches_it():
    price = TierPrice(capacity_tokens_per_s=100.0, replica_monthly_usd=1800.0, peak_to_average=2.0)
    # 5M/day = 57.87 tokens/s, peak 115.7 > 100 → two replicas; half of it fits one; none needs none
    assert price.monthly(5e6) == 3600.0
    assert price.monthly(2.5e6) == 1800.0
    assert price.monthly(0) == 0.0


def test_calibration_error_by_hand():
    # bins 0.9, 0.8, 0.6, 0.3 hold one item each: |1 − 0.9| + |0 − 0.8| + |1 − 0.6| + |0 − 0.3| = 1.6, / 4
    ece, bins = expected_calibration_error([0.9, 0.8, 0.6, 0.3], [True, False, True, False])
    assert ece == pytest.approx(0.4)
    assert [b["items"] for b in bins] == [1, 1, 1, 1]
    assert expected_calibration_error([None], [True]) == (None, [])


def test_halves_are_stable_and_disjoint():
    keys = [f"prompt {i}" for i in range(200)]
    pick, report = split_halves(keys)
    assert sorted(pick + report) == list(range(200)) and 70 < len(pick) < 130
    again, _ = split_halves(list(reversed(keys)))
    assert sorted(keys[i] for i in pick) == sorted(list(reversed(keys))[i] for i in again)
