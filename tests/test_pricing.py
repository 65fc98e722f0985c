import math

import pytest

from verticalft.pricing import (
    api_monthly_cost,
    compare_to_api,
    hourly_from_monthly,
    monthly_from_hourly,
    payback_months,
    training_cost,
    usd_per_million_tokens,
)


def test_quoted_self_hosting_figures_that_follow_from_their_prices():
    # Quoted self-hosting figure: 8B at ~16,200 tok/s on an H100 at $2/h ≈ $0.03 per 1M tokens.
    assert usd_per_million_tokens(16_200, 2.0) == pytest.approx(0.0343, abs=5e-4)
    # 7B on an L40S at ~10,000 tok/s, at a quoted L40S month ($1,620 → $2.25/h) ≈ $0.06.
    assert usd_per_million_tokens(10_000, hourly_from_monthly(1620)) == pytest.approx(0.0625)


def test_l40s_month_is_2_25_per_hour_and_back():
    assert hourly_from_monthly(1620) == pytest.approx(2.25)
    assert monthly_from_hourly(2.25) == pytest.approx(1620)


def test_quoted_figures_that_do_not_follow_are_computed_not_matched():
    # Quoted: 14B on an A100 at ~3,004 tok/s = $0.32/1M; at a quoted A100 price ($1.50–2.00/h) it is $0.14–0.18.
    assert 0.13 < usd_per_million_tokens(3_004, 1.5) < usd_per_million_tokens(3_004, 2.0) < 0.19
    # Quoted ROI: "Sonnet, 5M tok/day = $45,000/month"; at $3 in / $15 out the bill is at most $2,250.
    assert api_monthly_cost(5e6, 3.0, 15.0, input_fraction=0.0) == pytest.approx(2250)
    assert api_monthly_cost(5e6, 3.0, 15.0, input_fraction=1.0) == pytest.approx(450)
    assert api_monthly_cost(5e6, 3.0, 15.0) == pytest.approx(1350)


def test_training_cost_and_payback():
    assert training_cost(3600 * 10, 2.5, gpus=8) == pytest.approx(200)
    assert payback_months(5720, 2000) == pytest.approx(2.86)
    assert math.isinf(payback_months(5720, -10))


def test_comparison_with_an_api():
    c = compare_to_api(
        "claude-sonnet",
        daily_tokens=5e6,
        input_usd_per_m=3.0,
        output_usd_per_m=15.0,
        self_hosted_monthly_usd=1620,
        upfront_usd=4100,
    )
    assert c.api_monthly_usd == pytest.approx(1350)
    assert c.monthly_savings_usd == pytest.approx(-270)
    assert math.isinf(c.payback_months)  # at 5M tokens/day one L40S does not pay for itself


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        usd_per_million_tokens(0, 2.0)
    with pytest.raises(ValueError):
        api_monthly_cost(1e6, 1, 1, input_fraction=1.5)


def test_fit_separates_input_and_output_token_costs():
    from verticalft.pricing import fit_token_seconds

    # by hand: 0.001 s per input token, 0.01 s per output token
    # shape A 100 in / 50 out: 0.1 + 0.5 = 0.6 s; shape B 25 in / 50 out: 0.025 + 0.5 = 0.525 s
    t = fit_token_seconds([(0.6, 100, 50), (0.525, 25, 50)])
    assert t.input_s == pytest.approx(0.001) and t.output_s == pytest.approx(0.01) and t.clamped is None
    # mix 80% input: 0.8 × 0.001 + 0.2 × 0.01 = 0.0028 s/token → 357.14 tokens/s flat out
    assert t.seconds_per_token(0.8) == pytest.approx(0.0028)
    assert t.capacity(0.8) == pytest.approx(357.142857)


def test_fit_with_repeats_is_least_squares():
    import numpy as np

    from verticalft.pricing import fit_token_seconds

    runs = [(0.61, 100, 50), (0.59, 100, 50), (0.53, 25, 50), (0.52, 25, 50)]
    ref, *_ = np.linalg.lstsq(
        np.array([[i, o] for _, i, o in runs], float), np.array([d for d, _, _ in runs])
    )
    t = fit_token_seconds(runs)
    assert (t.input_s, t.output_s) == pytest.approx(tuple(ref))


def test_fit_clamps_a_negative_cost_and_refuses_one_shape():
    from verticalft.pricing import fit_token_seconds

    # free fit: 100a + 50b = 1.0, 25a + 50b = 1.1 → a = −0.1/75 < 0; so a = 0 and
    # b = Σ d·o / Σ o² = (50 + 55) / (2500 + 2500) = 0.021
    t = fit_token_seconds([(1.0, 100, 50), (1.1, 25, 50)])
    assert t.input_s == 0.0 and t.output_s == pytest.approx(0.021) and t.clamped == "input"
    with pytest.raises(ValueError, match="one input:output ratio"):
        fit_token_seconds([(1.0, 100, 50), (2.0, 200, 100)])
    with pytest.raises(ValueError, match="at least two"):
        fit_token_seconds([(1.0, 100, 50)])


def test_saturated_price_of_a_mix():
    from verticalft.pricing import TokenSeconds, usd_per_million_at_mix

    t = TokenSeconds(0.001, 0.01)
    # 0.0028 s/token × $2.50/h ÷ 3600 × 1e6 = $1.9444 per 1M tokens; two GPUs per replica double it
    assert usd_per_million_at_mix(t, 0.8, 2.50) == pytest.approx(1.944444, rel=1e-5)
    assert usd_per_million_at_mix(t, 0.8, 2.50, gpus=2) == pytest.approx(3.888889, rel=1e-5)


def test_replicas_carry_the_peak():
    from verticalft.pricing import replicas_for

    # 5M tokens/day = 57.87 tokens/s on average, 115.74 at a peak of twice that: one replica of 357
    assert replicas_for(5e6, 357.14, 2.0) == 1
    # 5B/day: 57,870.4 × 2 = 115,740.7 tokens/s at peak ÷ 16,200 per replica = 7.14 → 8
    assert replicas_for(5e9, 16_200, 2.0) == 8
    assert replicas_for(5e9, 16_200, 1.0) == 4  # 57,870.4 / 16,200 = 3.57 → 4
    with pytest.raises(ValueError):
        replicas_for(5e6, 100, 0.5)


def test_effective_price_at_the_stated_volume():
    from verticalft.pricing import effective_usd_per_million, monthly_bill, monthly_from_hourly

    # One H100 at $2.50/h is $1,800/month; 5M tokens/day is 150M a month,
    # so each million tokens actually served costs $12 — whatever the saturated price is.
    replica = monthly_from_hourly(2.50)
    assert replica == pytest.approx(1800.0)
    bill = monthly_bill(5e6, 357.14, replica, 2.0)
    assert bill == pytest.approx(1800.0)
    assert effective_usd_per_million(bill, 5e6) == pytest.approx(12.0)
    assert effective_usd_per_million(bill, 0) == float("inf")


def test_break_even_volume_against_an_api():
    from verticalft.pricing import api_usd_per_million, break_even_daily_tokens

    sonnet = api_usd_per_million(3.0, 15.0, 0.5)  # $9/1M at half input
    assert sonnet == pytest.approx(9.0)
    # $1,800/month = V × 30 × $9 / 1e6 → V = 6,666,667 tokens/day; one replica of 357.14 tokens/s
    # carries 357.14 × 86,400 / 2 = 15.4M/day at a peak of twice the average: reachable
    assert break_even_daily_tokens(1800.0, 357.14, sonnet, 2.0) == pytest.approx(6_666_666.67)
    # gpt-4o-mini at $0.375/1M would need 160M tokens/day from that replica: it never breaks even
    mini = api_usd_per_million(0.15, 0.60, 0.5)
    assert mini == pytest.approx(0.375)
    assert break_even_daily_tokens(1800.0, 357.14, mini, 2.0) is None


def test_api_table_rows_carry_model_date_and_source():
    from types import SimpleNamespace

    from verticalft.pricing import API_PRICES, api_price_row

    for name in ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "gemini-flash", "gemini-flash-lite",
                 "deepseek"):  # fmt: skip
        row = API_PRICES[name]
        assert row.model and row.as_of and row.source and row.input_usd_per_m > 0
    shipped = api_price_row("gpt-4o")
    assert shipped["model"] == "gpt-4o-2024-08-06" and (
        shipped["input_usd_per_m"],
        shipped["output_usd_per_m"],
    ) == (
        2.5,
        10.0,
    )
    mine = api_price_row("gpt-4o", SimpleNamespace(input_usd_per_m=2.0, output_usd_per_m=8.0, source="our contract",
                                                    as_of="2026-11"))  # fmt: skip
    assert mine == {"model": "gpt-4o", "input_usd_per_m": 2.0, "output_usd_per_m": 8.0, "as_of": "2026-11",
                    "source": "our contract"}  # fmt: skip
    unsourced = api_price_row("my-api", SimpleNamespace(input_usd_per_m=1.0, output_usd_per_m=2.0, source=None,
                                                         as_of=None))  # fmt: skip
    assert "no source given" in unsourced["source"]


def test_bandwidth_bound_and_utilisation():
    from verticalft.pricing import bandwidth_utilisation, decode_floor_ms

    # An 8B model in bf16 (16 GB) on an H100 (3.35 TB/s) cannot decode faster than ~4.8 ms/token.
    assert decode_floor_ms(16e9, 3.35) == pytest.approx(4.776, abs=1e-3)
    assert bandwidth_utilisation(16e9, 8.0, 3.35) == pytest.approx(0.597, abs=1e-3)
    assert bandwidth_utilisation(16e9, 2.0, 3.35) > 1  # faster than physics: a broken measurement


def test_api_prices_come_from_the_recipe_or_the_shipped_table():
    from verticalft.pricing import api_price
    from verticalft.recipe import RecipeError, load_recipe

    assert api_price("claude-sonnet-4", None, None) == (3.0, 15.0)
    assert api_price("claude-sonnet-4", 2.0, None) == (2.0, 15.0)
    assert api_price("my-api", 1.0, 4.0) == (1.0, 4.0)
    with pytest.raises(ValueError, match="no price for API 'my-api'"):
        api_price("my-api", 1.0, None)
    with pytest.raises(RecipeError) as err:
        load_recipe("recipes/finance.yaml", overrides=["cost.compare.my-api={}"])
    assert "cost" in str(err.value) and "no price for API 'my-api'" in str(err.value)


def test_gpu_prices_come_from_the_recipe_or_the_shipped_table():
    from verticalft.pricing import gpu_and_price

    gpu, usd = gpu_and_price("l40s")
    # a quoted L40S month, $1,620 over 720 h, is $2.25/h; 48 GB of memory
    assert (gpu.name, gpu.vram_gb, usd) == ("l40s", 48, pytest.approx(1620 / 720))
    assert gpu_and_price("l40s", 1.9)[1] == 1.9
    with pytest.raises(ValueError, match=r"unknown GPU 'rtx-9090'; known: a100-80gb, h100-sxm, .*l40s, cpu"):
        gpu_and_price("rtx-9090")
