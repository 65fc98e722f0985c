import math

import pytest

from verticalft.cost import (
    api_monthly_cost,
    compare_to_api,
    hourly_from_monthly,
    monthly_from_hourly,
    payback_months,
    training_cost,
    usd_per_million_tokens,
)


def test_seed_self_hosting_figures_that_follow_from_its_prices():
    # Seed "Self-hosting vs API": 8B at ~16,200 tok/s on an H100 at $2/h ≈ $0.03 per 1M tokens.
    assert usd_per_million_tokens(16_200, 2.0) == pytest.approx(0.0343, abs=5e-4)
    # 7B on an L40S at ~10,000 tok/s, at the seed's L40S month ($1,620 → $2.25/h) ≈ $0.06.
    assert usd_per_million_tokens(10_000, hourly_from_monthly(1620)) == pytest.approx(0.0625)


def test_l40s_month_is_2_25_per_hour_and_back():
    assert hourly_from_monthly(1620) == pytest.approx(2.25)
    assert monthly_from_hourly(2.25) == pytest.approx(1620)


def test_seed_figures_that_do_not_follow_are_computed_not_matched():
    # Seed: 14B on an A100 at ~3,004 tok/s = $0.32/1M; at its A100 price ($1.50–2.00/h) it is $0.14–0.18.
    assert 0.13 < usd_per_million_tokens(3_004, 1.5) < usd_per_million_tokens(3_004, 2.0) < 0.19
    # Seed ROI: "Sonnet, 5M tok/day = $45,000/month"; at $3 in / $15 out the bill is at most $2,250.
    assert api_monthly_cost(5e6, 3.0, 15.0, input_fraction=0.0) == pytest.approx(2250)
    assert api_monthly_cost(5e6, 3.0, 15.0, input_fraction=1.0) == pytest.approx(450)
    assert api_monthly_cost(5e6, 3.0, 15.0) == pytest.approx(1350)


def test_training_cost_and_payback():
    assert training_cost(3600 * 10, 2.5, gpus=8) == pytest.approx(200)
    assert payback_months(5720, 2000) == pytest.approx(2.86)
    assert math.isinf(payback_months(5720, -10))


def test_comparison_with_an_api():
    c = compare_to_api("claude-sonnet", 5e6, 3.0, 15.0, self_hosted_monthly_usd=1620, upfront_usd=4100)
    assert c.api_monthly_usd == pytest.approx(1350)
    assert c.monthly_savings_usd == pytest.approx(-270)
    assert math.isinf(c.payback_months)  # at 5M tokens/day one L40S does not pay for itself


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        usd_per_million_tokens(0, 2.0)
    with pytest.raises(ValueError):
        api_monthly_cost(1e6, 1, 1, input_fraction=1.5)


def test_serving_prices_charge_the_gpu_hour_per_token_kind():
    from verticalft.cost import serving_prices

    p = serving_prices(input_tokens_per_s=20_000, output_tokens_per_s=10_000, usd_per_gpu_hour=2.25)
    assert p["output_usd_per_m"] == pytest.approx(0.0625)  # the seed's 7B-on-L40S figure
    assert p["input_usd_per_m"] == pytest.approx(0.03125)
    assert p["blended_usd_per_m"] == pytest.approx(2.25 / (30_000 * 3600) * 1e6)


def test_replicas_for_a_daily_volume():
    from verticalft.cost import replicas_needed

    # 5M tokens/day is ~58 tokens/s: one replica of anything that serves 200 tokens/s at 50% load.
    assert replicas_needed(5e6, 200, 0.5) == 1
    assert replicas_needed(5e9, 16_200, 0.5) == 8  # 57,870 tok/s needed / 8,100 per replica
    with pytest.raises(ValueError):
        replicas_needed(5e6, 100, 0.0)


def test_bandwidth_bound_and_utilisation():
    from verticalft.cost import bandwidth_utilisation, decode_floor_ms

    # An 8B model in bf16 (16 GB) on an H100 (3.35 TB/s) cannot decode faster than ~4.8 ms/token.
    assert decode_floor_ms(16e9, 3.35) == pytest.approx(4.776, abs=1e-3)
    assert bandwidth_utilisation(16e9, 8.0, 3.35) == pytest.approx(0.597, abs=1e-3)
    assert bandwidth_utilisation(16e9, 2.0, 3.35) > 1  # faster than physics: a broken measurement


def test_api_prices_come_from_the_recipe_or_the_shipped_table():
    from verticalft.cost import api_price
    from verticalft.recipe import RecipeError, load_recipe

    assert api_price("claude-sonnet", None, None) == (3.0, 15.0)
    assert api_price("claude-sonnet", 2.0, None) == (2.0, 15.0)
    assert api_price("my-api", 1.0, 4.0) == (1.0, 4.0)
    with pytest.raises(ValueError, match="no price for API 'my-api'"):
        api_price("my-api", 1.0, None)
    with pytest.raises(RecipeError) as err:
        load_recipe("recipes/finance.yaml", overrides=["cost.compare.my-api={}"])
    assert "cost" in str(err.value) and "no price for API 'my-api'" in str(err.value)
