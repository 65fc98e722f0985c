"""The audit trail: for every step, how many records came in, stayed, and left for which reason.

A `Funnel` is additive (shards merge by summing), ordered (steps in the order they ran), and
checked: `check()` raises unless `in = kept + Σ dropped` holds for every step and each step's
input is the previous step's output — so a record can never vanish without a reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class AuditError(AssertionError):
    """The counts do not add up: a record was lost or invented. Always a bug, never bad data."""


@dataclass
class StepCount:
    seen: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self, name: str) -> dict[str, Any]:
        return {
            "step": name,
            "in": self.seen,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
        }


@dataclass
class Funnel:
    steps: dict[str, StepCount] = field(default_factory=dict)

    def step(self, name: str) -> StepCount:
        return self.steps.setdefault(name, StepCount())

    def record(self, name: str, reason: str | None) -> None:
        s = self.step(name)
        s.seen += 1
        if reason is None:
            s.kept += 1
        else:
            s.dropped[reason] += 1

    def count(self, name: str, seen: int, dropped: Counter) -> None:
        """`seen` records through step `name`, `dropped` of them by reason (a whole step at once)."""
        s = self.step(name)
        s.seen += seen
        s.kept += seen - sum(dropped.values())
        s.dropped.update(dropped)

    def merge(self, other: Funnel) -> Funnel:
        for name, o in other.steps.items():
            s = self.step(name)
            s.seen += o.seen
            s.kept += o.kept
            s.dropped.update(o.dropped)
        return self

    def check(self) -> None:
        prev: tuple[str, int] | None = None
        for name, s in self.steps.items():
            if s.seen != s.kept + sum(s.dropped.values()):
                raise AuditError(f"{name}: in {s.seen} != kept {s.kept} + dropped {sum(s.dropped.values())}")
            if prev is not None and s.seen != prev[1]:
                raise AuditError(f"{name}: in {s.seen} != {prev[0]} kept {prev[1]}")
            prev = (name, s.kept)

    def to_list(self) -> list[dict[str, Any]]:
        """Steps in the order they ran (a list: JSON written with sorted keys keeps it)."""
        return [s.to_dict(name) for name, s in self.steps.items()]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> Funnel:
        return cls({d["step"]: StepCount(d["in"], d["kept"], Counter(d["dropped"])) for d in data})


def dropped_row(r: dict[str, Any], redact: bool) -> dict[str, Any]:
    """The audit copy of a dropped record; PII is redacted here too (the audit trail is read by
    people, so it must not be the one place raw card numbers survive)."""
    import json

    from verticalft.curation import pii

    text = r.get("text")
    if not isinstance(text, str):
        text = json.dumps(r.get("row"), default=str)
    return {
        "id": str(r.get("id")),
        "step": r["step"],
        "reason": r["reason"],
        "detail": r.get("detail"),
        "source": r.get("source"),
        "text": pii.redact(text).text if redact else text,
    }


def sample_dropped(dropped: list[dict[str, Any]], cap: int | None) -> list[dict[str, Any]]:
    """All dropped records, or the first `cap` (by id) per reason for huge inputs."""
    rows = sorted(dropped, key=lambda r: (r["step"], r["reason"], str(r["id"])))
    if cap is None:
        return rows
    seen: Counter = Counter()
    out = []
    for r in rows:
        seen[(r["step"], r["reason"])] += 1
        if seen[(r["step"], r["reason"])] <= cap:
            out.append(r)
    return out
