"""Document provenance rules: licence and recency.

The playbook's rule is "only redistributable data": a licence passes when it is on the recipe's
allow-list (SPDX-style ids, case-insensitive). Recency drops documents dated before a cut-off;
a missing or unparsable date is kept and counted, never silently guessed.
"""

from __future__ import annotations

import datetime as dt

REDISTRIBUTABLE = frozenset(
    {
        "cc0-1.0",
        "cc-by-4.0",
        "cc-by-sa-4.0",
        "odc-by",
        "odc-by-1.0",
        "pddl",
        "mit",
        "apache-2.0",
        "public-domain",
        "us-government-works",
        "mixed-redistributable",
    }
)


def license_reason(license: str | None, allowed: frozenset[str] | set[str] = REDISTRIBUTABLE) -> str | None:
    """None when the licence may be redistributed, else the drop reason."""
    if not license:
        return "license_missing"
    return (
        None if license.strip().lower() in {a.lower() for a in allowed} else f"license_not_allowed:{license}"
    )


def parse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def recency_reason(date: str | None, not_before: dt.date) -> str | None:
    """None when the document is recent enough (or undated), else `stale_date`."""
    parsed = parse_date(date)
    return "stale_date" if parsed is not None and parsed < not_before else None
