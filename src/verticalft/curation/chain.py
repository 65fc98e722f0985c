"""The per-document part of curation: the recipe's filter list turned into one function chain.

Every step is `record -> Outcome`: keep (possibly with rewritten text: C4 line removal, PII
redaction) or drop with a reason. `run_chain` applies the steps in recipe order and stops at
the first drop, counting each step in the `Funnel`. It runs each step over all the records
still in the chain before the next step, so a `BatchStep` (the embedding filter) gets them in one
call; kept and dropped come out in input order, exactly as if each record had gone through alone.
Everything here is pure and picklable by config (workers rebuild the chain from the recipe's
`curate` section), so the local process pool and Ray run exactly the same code.

The licence step always runs first — a recipe cannot forget it; it may only widen the allow-list.
PII redaction runs last, on what survived, and never drops. What each filter name builds, its
recipe block and presets live in one registry: `curation.filters`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from verticalft.curation import pii
from verticalft.curation.audit import Funnel
from verticalft.curation.filters import FILTERS, BatchStep, Outcome, Step
from verticalft.recipe import CurateStage, FilterStep


def make_step(spec: FilterStep) -> Step:
    """The step of one recipe filter (`curation.filters` registers what each name builds)."""
    return FILTERS[spec.name].make(spec.config)


def _redact_step(record: dict[str, Any]) -> Outcome:
    red = pii.redact(record["text"])
    return Outcome(red.text, None, Counter({f"pii_{k}": v for k, v in red.counts.items()}))


def build_chain(cfg: CurateStage) -> list[tuple[str, Step]]:
    """(step name, function) in the order they run."""
    specs = list(cfg.filters)
    if not any(s.name == "license" for s in specs):
        specs.insert(0, FilterStep.model_validate({"license": {}}))
    chain = [(s.name, make_step(s)) for s in specs]
    if cfg.pii:
        chain.append(("pii", _redact_step))
    return chain


@dataclass
class ChainResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # the record + `step`, `reason`
    funnel: Funnel = field(default_factory=Funnel)
    details: Counter = field(default_factory=Counter)  # lines removed per rule, PII per kind


def run_chain(records: list[dict[str, Any]], chain: list[tuple[str, Step]]) -> ChainResult:
    out = ChainResult()
    for name, _ in chain:
        out.funnel.step(name)
    alive = list(enumerate(records))  # (position in `records`, the record as rewritten so far)
    dropped: list[tuple[int, dict[str, Any]]] = []
    for name, step in chain:
        batch = [r for _, r in alive]
        outcomes = step.batch(batch) if isinstance(step, BatchStep) else [step(r) for r in batch]
        survivors = []
        for (i, current), res in zip(alive, outcomes, strict=True):
            out.details.update(res.counts)
            out.funnel.record(name, res.reason)
            if res.text is None:
                dropped.append((i, {**current, "step": name, "reason": res.reason}))
            else:
                survivors.append(
                    (i, current if res.text == current["text"] else {**current, "text": res.text})
                )
        alive = survivors
    out.kept = [r for _, r in alive]
    out.dropped = [r for _, r in sorted(dropped, key=lambda d: d[0])]
    return out
