"""Formatting shared by the report and its plots: numbers and dollars readable at any scale."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from verticalft.metrics import Score


def score(m: Score | None) -> str:
    """A domain eval score as the report shows it ("–": not scored)."""
    return f"{m.score:.3f}" if m is not None and is_num(m.score) else "–"


def is_num(x: Any) -> TypeGuard[float]:
    """A finite number (not a bool): a figure that can be formatted and compared."""
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
