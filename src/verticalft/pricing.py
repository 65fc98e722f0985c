"""What a model costs to run and to train, from first principles. Pure functions, no torch.

Every figure comes from a measured or stated input (throughput, $/GPU-hour, token volume, token
mix) so a reader can redo the arithmetic; nothing is bent to match a quoted figure. Quoted
figures are unit-test cases (tests/test_pricing.py) where they are internally consistent.
The shipped tables (GPUs: memory, FLOP/s, bandwidth, $/hour; API list prices) live here too, the
one place `verticalft plan` and the cost stage read them from.

Conventions: a month is 30 days (720 hours) — a quoted "L40S, 1 month = $1,620" is 720 h at
$2.25/h; prices are per 1M tokens; `input_fraction` is the share of tokens that are prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
    return daily_tokens * days / 1e6 * api_usd_per_million(input_usd_per_m, output_usd_per_m, input_fraction)


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
    *,
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
@dataclass(frozen=True)
class Gpu:
    name: str
    vram_gb: float
    bf16_tflops: float  # dense peak
    usd_per_hour: float  # cloud on-demand price, mid-point of the quoted range
    mem_bandwidth_tbs: float


# Cloud $/hr: mid-point of the quoted rental ranges (A100 80GB $1.50–2.00, H100 SXM $2.00–3.00,
# H200 $2.29–5.00, B200 $4.00–6.00); L40S from a quoted $1,620 per 30-day month.
GPUS: dict[str, Gpu] = {
    "a100-80gb": Gpu("a100-80gb", 80, 312, 1.75, 2.0),
    "h100-sxm": Gpu("h100-sxm", 80, 989, 2.5, 3.35),
    "h200": Gpu("h200", 141, 989, 3.65, 4.8),
    "b200": Gpu("b200", 192, 2250, 5.0, 8.0),
    "l40s": Gpu("l40s", 48, 362, 2.25, 0.864),
    "cpu": Gpu("cpu", 24, 0.2, 0.10, 0.05),  # a 2-core CI runner: say so, do not pretend
}


def gpu_and_price(name: str, usd_per_hour: float | None = None) -> tuple[Gpu, float]:
    """The GPU `name` names in `GPUS` and its $/hour: `usd_per_hour` when the recipe states one,
    else the table's; an unknown name is an error listing the known ones."""
    if name not in GPUS:
        raise ValueError(f"unknown GPU '{name}'; known: {', '.join(GPUS)}")
    return GPUS[name], usd_per_hour or GPUS[name].usd_per_hour


@dataclass(frozen=True)
class ApiListPrice:
    """One API's list price ($ per 1M tokens, standard tier, no cache hits, short prompts), the
    provider's versioned model id, and where and when the figure was read."""

    model: str
    input_usd_per_m: float
    output_usd_per_m: float
    as_of: str
    source: str


# Read 2026-12-02 from stored copies of the pages named (no live web here). Provider pages where
# one was stored; otherwise a third party quoting the provider, and the source says so. Prices
# change: a recipe overrides a row (and should say its source) in `cost.compare`.
_ANTHROPIC = "https://docs.anthropic.com/en/docs/about-claude/pricing"
API_PRICES: dict[str, ApiListPrice] = {
    "gpt-4o": ApiListPrice(
        "gpt-4o-2024-08-06", 2.50, 10.00, "2024-08-06",
        "OpenAI announcement https://community.openai.com/t/introducing-structured-outputs/896022",
    ),
    "gpt-4o-mini": ApiListPrice(
        "gpt-4o-mini-2024-07-18", 0.15, 0.60, "2024-07-22",
        "third party quoting openai.com: https://github.com/promptfoo/promptfoo/pull/1218",
    ),
    "claude-sonnet": ApiListPrice(
        "claude-sonnet-5-5", 2.00, 10.00, "page undated (listed as latest)",
        "Anthropic https://platform.claude.com/docs/en/models/sonnet-5-5/overview",
    ),
    "claude-sonnet-4": ApiListPrice("claude-sonnet-4-20250514", 3.00, 15.00, "page undated", _ANTHROPIC),
    "claude-haiku": ApiListPrice(
        "claude-haiku-5-5", 0.10, 0.50, "2026-10-07 (release; prompts ≤ 100K tokens)",
        "Anthropic https://platform.claude.com/docs/en/models/haiku-5-5/overview.md",
    ),
    "claude-haiku-4-5": ApiListPrice(
        "claude-haiku-4-5-20251001", 1.00, 5.00, "2025-10-15 (release)",
        "Anthropic https://platform.claude.com/docs/en/models/haiku-4-5/overview.md",
    ),
    "gemini-flash": ApiListPrice(
        "gemini-2.5-flash", 0.30, 2.50, "page undated",
        "third party quoting ai.google.dev: https://www.morphllm.com/gemini-api-pricing",
    ),
    "gemini-flash-lite": ApiListPrice(
        "gemini-2.5-flash-lite", 0.10, 0.40, "2026-05-16",
        "third party: https://www.anttisahla.com/ai/models/gemini-2-5-flash-lite",
    ),
    "deepseek": ApiListPrice(
        "deepseek-chat (deepseek-v4-flash, non-thinking)", 0.14, 0.28, "2026-04-26 (price change)",
        "third-party copy of DeepSeek's Models & Pricing page: "
        "https://www.salahadawi.com/hacker-news-ai-detector/deepseek-makes-the-v4-pro-price-discount-permanent",
    ),
    "deepseek-v3": ApiListPrice(
        "deepseek-chat (DeepSeek-V3.2)", 0.28, 0.42, "2026-04-13",
        "third party: https://benchlm.ai/blog/posts/deepseek-api-pricing",
    ),
}  # fmt: skip


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
    row = API_PRICES[name]
    return (
        row.input_usd_per_m if input_usd_per_m is None else input_usd_per_m,
        row.output_usd_per_m if output_usd_per_m is None else output_usd_per_m,
    )


def api_price_row(name: str, override: Any = None) -> dict[str, Any]:
    """The price a report shows for a compare entry, with its model id, date and source: the
    shipped row, or the recipe's figures (`override`: input/output_usd_per_m, source, as_of)."""
    p_in = getattr(override, "input_usd_per_m", None)
    p_out = getattr(override, "output_usd_per_m", None)
    p_in, p_out = api_price(name, p_in, p_out)
    row = API_PRICES.get(name)
    # the shipped row when the prices are its own, else None (the recipe's figures)
    shipped = (
        row if row is not None and (p_in, p_out) == (row.input_usd_per_m, row.output_usd_per_m) else None
    )
    return {
        "model": shipped.model if shipped else name,
        "input_usd_per_m": p_in,
        "output_usd_per_m": p_out,
        "as_of": getattr(override, "as_of", None) or (shipped.as_of if shipped else None),
        "source": getattr(override, "source", None)
        or (shipped.source if shipped else "recipe (cost.compare), no source given"),
    }


# --------------------------------------------------------------------------- serving
def decode_floor_ms(weight_bytes: float, bandwidth_tb_per_s: float) -> float:
    """The memory-bandwidth bound on one decode step at batch 1: every weight read once."""
    return weight_bytes / (bandwidth_tb_per_s * 1e12) * 1e3


def bandwidth_utilisation(weight_bytes: float, tpot_ms: float, bandwidth_tb_per_s: float) -> float:
    """Model-bandwidth utilisation (MBU): the bound over the measured time per output token.
    Above 1 means the measurement (or the bandwidth figure) is wrong."""
    if tpot_ms <= 0:
        raise ValueError("time per output token must be positive")
    return decode_floor_ms(weight_bytes, bandwidth_tb_per_s) / tpot_ms


# --------------------------------------------------------------------------- any token mix
@dataclass(frozen=True)
class TokenSeconds:
    """Replica-seconds one input (prefill) token and one output (decode) token cost at a fixed
    concurrency: the two parameters that price any mix. Fitted from benchmark runs of different
    shapes; `clamped` names a coefficient the fit pinned at zero (its cost is within the noise)."""

    input_s: float
    output_s: float
    clamped: str | None = None

    def seconds_per_token(self, input_fraction: float) -> float:
        """Replica-seconds per token of a workload whose share `input_fraction` is prompt."""
        if not 0.0 <= input_fraction <= 1.0:
            raise ValueError("input_fraction must be within [0, 1]")
        return input_fraction * self.input_s + (1.0 - input_fraction) * self.output_s

    def capacity(self, input_fraction: float) -> float:
        """Tokens per second one replica serves, flat out, at that mix."""
        return 1.0 / self.seconds_per_token(input_fraction)


def fit_token_seconds(runs: list[tuple[float, float, float]]) -> TokenSeconds:
    """Least squares `duration = a·input_tokens + b·output_tokens` over benchmark runs given as
    (duration_s, input_tokens, output_tokens), with a, b ≥ 0 (non-negative least squares: if the
    free fit makes one negative, that one is 0 and the other is fitted alone). Needs runs of at
    least two different input:output ratios."""
    if len(runs) < 2:
        raise ValueError("need at least two benchmark runs to fit input and output token costs")
    sii = sum(i * i for _, i, _ in runs)
    soo = sum(o * o for _, _, o in runs)
    sio = sum(i * o for _, i, o in runs)
    sdi = sum(d * i for d, i, _ in runs)
    sdo = sum(d * o for d, _, o in runs)
    det = sii * soo - sio * sio
    if det <= 1e-9 * sii * soo:
        raise ValueError("benchmark runs share one input:output ratio: cannot separate the two costs")
    a = (sdi * soo - sdo * sio) / det
    b = (sdo * sii - sdi * sio) / det
    if a >= 0 and b >= 0:
        return TokenSeconds(a, b)
    if a < 0 and sdo > 0:
        return TokenSeconds(0.0, sdo / soo, clamped="input")
    if b < 0 and sdi > 0:
        return TokenSeconds(sdi / sii, 0.0, clamped="output")
    raise ValueError("benchmark durations do not fit non-negative token costs")


def usd_per_million_at_mix(
    costs: TokenSeconds, input_fraction: float, usd_per_gpu_hour: float, gpus: int = 1
) -> float:
    """Saturated $/1M tokens of a mix: replica-seconds per token × GPUs × $/GPU-second × 1e6."""
    return costs.seconds_per_token(input_fraction) * gpus * usd_per_gpu_hour / 3600.0 * 1e6


def replicas_for(daily_tokens: float, capacity_tokens_per_s: float, peak_to_average: float = 2.0) -> int:
    """Replicas that carry the peak (average rate × `peak_to_average`) at full capacity; at least one."""
    if capacity_tokens_per_s <= 0 or peak_to_average < 1:
        raise ValueError("capacity must be positive and peak_to_average at least 1")
    return max(1, math.ceil(daily_tokens / 86_400.0 * peak_to_average / capacity_tokens_per_s))


def monthly_bill(
    daily_tokens: float,
    capacity_tokens_per_s: float,
    replica_monthly_usd: float,
    peak_to_average: float = 2.0,
) -> float:
    """A self-hosted deployment's month: replicas sized for the peak × what one replica costs."""
    return replicas_for(daily_tokens, capacity_tokens_per_s, peak_to_average) * replica_monthly_usd


def effective_usd_per_million(monthly_usd: float, daily_tokens: float, days: float = DAYS_PER_MONTH) -> float:
    """What a million tokens actually served costs: the monthly bill ÷ the monthly tokens."""
    if daily_tokens <= 0:
        return float("inf")
    return monthly_usd / (daily_tokens * days / 1e6)


def api_usd_per_million(input_usd_per_m: float, output_usd_per_m: float, input_fraction: float) -> float:
    """An API's list price for a mix: input and output prices weighted by the token shares."""
    if not 0.0 <= input_fraction <= 1.0:
        raise ValueError("input_fraction must be within [0, 1]")
    return input_fraction * input_usd_per_m + (1.0 - input_fraction) * output_usd_per_m


def break_even_daily_tokens(
    replica_monthly_usd: float,
    capacity_tokens_per_s: float,
    api_usd_per_m: float,
    peak_to_average: float = 2.0,
    days: float = DAYS_PER_MONTH,
) -> float | None:
    """The daily volume from which one self-hosted replica costs less than the API
    (replica month = volume × days × API price), or None when that volume is more than one replica
    carries at peak — then the API is cheaper per token at every volume."""
    if api_usd_per_m <= 0:
        return None
    volume = replica_monthly_usd * 1e6 / (days * api_usd_per_m)
    carried = capacity_tokens_per_s * 86_400.0 / peak_to_average
    return volume if volume <= carried else None
