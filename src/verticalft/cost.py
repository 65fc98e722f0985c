"""What a model costs to run and to train, from first principles. Pure functions, no torch.

Every figure comes from a measured or stated input (throughput, $/GPU-hour, token volume, token
mix) so a reader can redo the arithmetic; nothing is bent to match a quoted figure. The seed's
tables (../shared/seeds/004_*.txt) are unit-test cases where they are internally consistent.

Conventions: a month is 30 days (720 hours) — the seed's "L40S, 1 month = $1,620" is 720 h at
$2.25/h; prices are per 1M tokens; `input_fraction` is the share of tokens that are prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOURS_PER_MONTH = 720.0
DAYS_PER_MONTH = 30.0


def usd_per_million_tokens(tokens_per_second: float, usd_per_gpu_hour: float, gpus: int = 1) -> float:
    """Serving cost per 1M tokens: usd_per_gpu_hour × gpus / (tokens/s × 3600) × 1e6."""
    if tokens_per_second <= 0:
        raise ValueError("throughput must be positive to price tokens")
    return usd_per_gpu_hour * gpus / (tokens_per_second * 3600.0) * 1e6


def hourly_from_monthly(usd_per_month: float, hours: float = HOURS_PER_MONTH) -> float:
    return usd_per_month / hours


def monthly_from_hourly(usd_per_hour: float, gpus: int = 1, hours: float = HOURS_PER_MONTH) -> float:
    return usd_per_hour * gpus * hours


def api_monthly_cost(
    daily_tokens: float,
    input_usd_per_m: float,
    output_usd_per_m: float,
    input_fraction: float = 0.5,
    days: float = DAYS_PER_MONTH,
) -> float:
    """An API bill for a month at `daily_tokens`, split input/output by `input_fraction`."""
    if not 0.0 <= input_fraction <= 1.0:
        raise ValueError("input_fraction must be within [0, 1]")
    per_m = input_fraction * input_usd_per_m + (1.0 - input_fraction) * output_usd_per_m
    return daily_tokens * days / 1e6 * per_m


def training_cost(wall_seconds: float, usd_per_gpu_hour: float, gpus: int = 1) -> float:
    """What a measured training run cost: wall time × GPUs × price."""
    return wall_seconds / 3600.0 * gpus * usd_per_gpu_hour


def payback_months(upfront_usd: float, monthly_savings_usd: float) -> float:
    """Months until savings repay the upfront spend; infinity when there are no savings."""
    return float("inf") if monthly_savings_usd <= 0 else upfront_usd / monthly_savings_usd


@dataclass(frozen=True)
class Comparison:
    api: str
    api_monthly_usd: float
    self_hosted_monthly_usd: float
    monthly_savings_usd: float
    payback_months: float


def compare_to_api(
    name: str,
    daily_tokens: float,
    input_usd_per_m: float,
    output_usd_per_m: float,
    self_hosted_monthly_usd: float,
    upfront_usd: float,
    input_fraction: float = 0.5,
) -> Comparison:
    """Monthly API bill vs a self-hosted deployment that serves the same volume."""
    api = api_monthly_cost(daily_tokens, input_usd_per_m, output_usd_per_m, input_fraction)
    savings = api - self_hosted_monthly_usd
    return Comparison(name, api, self_hosted_monthly_usd, savings, payback_months(upfront_usd, savings))


# --------------------------------------------------------------------------- shipped prices
# $ per 1M tokens (input, output). The seed's "Self-hosting vs API" table quotes one figure per
# API, the input price; the output prices are the providers' list prices of the same models.
# A recipe overrides or extends this in `cost.compare`.
API_PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet": (3.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gemini-flash-lite": (0.075, 0.30),
    "deepseek-v3": (0.28, 0.42),
}


def api_price(
    name: str, input_usd_per_m: float | None, output_usd_per_m: float | None
) -> tuple[float, float]:
    """A compare entry's prices: the recipe's figures, else the shipped table's."""
    if input_usd_per_m is not None and output_usd_per_m is not None:
        return input_usd_per_m, output_usd_per_m
    if name not in API_PRICES:
        raise ValueError(
            f"no price for API '{name}': give input_usd_per_m and output_usd_per_m, "
            f"or use one of the shipped names ({', '.join(API_PRICES)})"
        )
    table_in, table_out = API_PRICES[name]
    return (
        table_in if input_usd_per_m is None else input_usd_per_m,
        table_out if output_usd_per_m is None else output_usd_per_m,
    )


# --------------------------------------------------------------------------- serving
def serving_prices(
    input_tokens_per_s: float, output_tokens_per_s: float, usd_per_gpu_hour: float, gpus: int = 1
) -> dict[str, float]:
    """$/1M tokens at a measured operating point. Input and output share one GPU-hour, so each of
    `input`/`output` charges the *whole* hour to that kind (an upper bound, the usual way
    self-hosted prices are quoted); `blended` divides it over both."""
    return {
        "input_usd_per_m": usd_per_million_tokens(input_tokens_per_s, usd_per_gpu_hour, gpus),
        "output_usd_per_m": usd_per_million_tokens(output_tokens_per_s, usd_per_gpu_hour, gpus),
        "blended_usd_per_m": usd_per_million_tokens(
            input_tokens_per_s + output_tokens_per_s, usd_per_gpu_hour, gpus
        ),
    }


def replicas_needed(daily_tokens: float, tokens_per_second: float, utilisation: float = 0.5) -> int:
    """Serving replicas for a daily volume at an average load of `utilisation` (at least one)."""
    if tokens_per_second <= 0 or not 0 < utilisation <= 1:
        raise ValueError("throughput must be positive and utilisation within (0, 1]")
    return max(1, math.ceil(daily_tokens / 86_400.0 / (tokens_per_second * utilisation)))


def decode_floor_ms(weight_bytes: float, bandwidth_tb_per_s: float) -> float:
    """The memory-bandwidth bound on one decode step at batch 1: every weight read once."""
    return weight_bytes / (bandwidth_tb_per_s * 1e12) * 1e3


def bandwidth_utilisation(weight_bytes: float, tpot_ms: float, bandwidth_tb_per_s: float) -> float:
    """Model-bandwidth utilisation (MBU): the bound over the measured time per output token.
    Above 1 means the measurement (or the bandwidth figure) is wrong."""
    if tpot_ms <= 0:
        raise ValueError("time per output token must be positive")
    return decode_floor_ms(weight_bytes, bandwidth_tb_per_s) / tpot_ms
