"""Formatting shared by the report and its plots: numbers and dollars readable at any scale, and
the manifest lookups both need (a stage's metrics, whether serving was measured on CPU)."""

from __future__ import annotations

import math
from typing import Any


def score(m: dict[str, Any] | None) -> str:
    return f"{m['score']:.3f}" if isinstance(m, dict) and isinstance(m.get("score"), int | float) else "–"


def is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, fmt: str = "{:,.4g}") -> str:
    return fmt.format(x) if is_num(x) else "–"


def usd(x: Any) -> str:
    """Dollars readable at any scale: $1,350 / $72.00 / $0.006761 (4 significant digits below $1)."""
    if not is_num(x):
        return "–"
    sign, x = ("-" if x < 0 else ""), abs(x)
    if x >= 1000:
        return f"{sign}${x:,.0f}"
    if x >= 1 or x == 0:
        return f"{sign}${x:,.2f}"
    digits = max(2, 3 - math.floor(math.log10(x)))  # 4 significant digits, never 1e-05 notation
    return f"{sign}${f'{x:.{digits}f}'.rstrip('0').ljust(4, '0')}"


def metrics_of(stages: dict[str, Any], name: str) -> dict[str, Any]:
    """A stage's metrics from the manifest's `stages` ({} when the stage did not run)."""
    return (stages.get(name) or {}).get("metrics") or {}


def cpu_run(stages: dict[str, Any]) -> bool:
    """Serving was measured on CPU: every $ and latency figure must say so."""
    return (metrics_of(stages, "cost").get("assumptions") or {}).get("serve_gpu") == "cpu"
