"""The per-document part of curation: the recipe's filter list turned into one function chain.

Every step is `record -> Outcome`: keep (possibly with rewritten text: C4 line removal, PII
redaction) or drop with a reason. `run_chain` applies the steps in recipe order and stops at
the first drop, counting each step in the `Funnel`. It runs each step over all the records
still in the chain before the next step, so a `BatchStep` (the embedding filter) gets them in one
call; kept and dropped come out in input order, exactly as if each record had gone through alone.
Everything here is pure and picklable by config (workers rebuild the chain from the recipe's
`curate` section), so the local process pool and Ray run exactly the same code.

The licence step always runs first — a recipe cannot forget it; it may only widen the allow-list.
PII redaction runs last, on what survived, and never drops.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from verticalft.curation import (
    fineweb,
    langid,
    lines,
    pii,
    provenance,
    quality,
    relevance,
    repetition,
    semantic,
)
from verticalft.curation.audit import Funnel
from verticalft.recipe import CurateStage, FilterStep, LicenseFilter

# `web`: the published rules (Gopher, C4, FineWeb); `structured`: figure-heavy text with tables,
# bullet lists and numbered clauses (filings, statements, listings, leases). `finance`, its first
# user's name, still works.
PRESETS: dict[str, dict[str, Any]] = {
    "gopher_quality": {"web": quality.GopherRules(), "structured": quality.STRUCTURED_RULES},
    "gopher_repetition": {"web": repetition.RepetitionRules(), "structured": repetition.STRUCTURED_RULES},
    "fineweb_quality": {"web": fineweb.FineWebRules(), "structured": fineweb.STRUCTURED_RULES},
    "c4_lines": {"web": lines.LineRules(), "structured": lines.STRUCTURED_LINE_RULES},
}
PRESET_ALIASES = {"finance": "structured"}


@dataclass
class Outcome:
    text: str | None  # None: dropped
    reason: str | None = None
    counts: Counter = field(default_factory=Counter)  # per-step detail: lines removed, PII found


Step = Callable[[dict[str, Any]], Outcome]


@dataclass
class BatchStep:
    """A text rule that is much cheaper on many documents at once (a model's forward pass):
    `run_chain` hands it every record still in the chain; called on one record it is a `Step`."""

    reasons: Callable[[list[str]], list[str | None]]

    def __call__(self, record: dict[str, Any]) -> Outcome:
        return self.batch([record])[0]

    def batch(self, records: list[dict[str, Any]]) -> list[Outcome]:
        reasons = self.reasons([r["text"] for r in records])
        return [_outcome(r, reason) for r, reason in zip(records, reasons, strict=True)]


def rules_for(name: str, block: Any) -> Any:
    """The preset's rule dataclass with the keys the recipe set laid over it."""
    overrides = {k: getattr(block, k) for k in block.model_fields_set if k != "preset"}
    return dataclasses.replace(PRESETS[name][PRESET_ALIASES.get(block.preset, block.preset)], **overrides)


def _text_rule(fn: Callable[[str], str | None]) -> Step:
    def step(record: dict[str, Any]) -> Outcome:
        reason = fn(record["text"])
        return Outcome(None if reason else record["text"], reason)

    return step


def make_step(spec: FilterStep) -> Step:
    name, cfg = spec.name, spec.config
    if name == "license":
        allowed = provenance.REDISTRIBUTABLE | {a.lower() for a in cfg.allow}
        return lambda r: _outcome(r, provenance.license_reason(r.get("license"), allowed))
    if name == "recency":
        return lambda r: _outcome(r, provenance.recency_reason(r.get("date"), cfg.not_before))
    if name == "length":
        return _text_rule(lambda t: _length_reason(t, cfg.min_words, cfg.max_words))
    if name == "language":
        rules = langid.LanguageRules(tuple(cfg.languages), cfg.min_score)
        return _text_rule(lambda t: langid.language_reason(t, rules))
    if name == "relevance":
        rules = relevance.RelevanceRules(tuple(cfg.keywords), tuple(cfg.patterns), cfg.min_hits_per_1k_words)
        return _text_rule(lambda t: relevance.relevance_reason(t, rules))
    if name == "semantic_relevance":
        sem = semantic.SemanticRules(
            tuple(cfg.seeds), tuple(cfg.seed_texts), cfg.min_similarity, cfg.max_chars
        )
        return BatchStep(semantic.SemanticRelevance(sem).semantic_reasons)
    if name == "c4_lines":
        line_rules = rules_for(name, cfg)

        def c4(record: dict[str, Any]) -> Outcome:
            res = lines.c4_lines(record["text"], line_rules)
            return Outcome(
                res.text, res.reason, Counter({f"lines_{k}": v for k, v in res.dropped_lines.items()})
            )

        return c4
    fn = {
        "gopher_quality": quality.gopher_quality,
        "gopher_repetition": repetition.gopher_repetition,
        "fineweb_quality": fineweb.fineweb_quality,
    }[name]
    rules = rules_for(name, cfg)
    return _text_rule(lambda t: fn(t, rules))


def _outcome(record: dict[str, Any], reason: str | None) -> Outcome:
    return Outcome(None if reason else record["text"], reason)


def _length_reason(text: str, min_words: int, max_words: int | None) -> str | None:
    n = len(text.split())
    if n < min_words:
        return "too_few_words"
    return "too_many_words" if max_words and n > max_words else None


def _redact_step(record: dict[str, Any]) -> Outcome:
    red = pii.redact(record["text"])
    return Outcome(red.text, None, Counter({f"pii_{k}": v for k, v in red.counts.items()}))


def build_chain(cfg: CurateStage) -> list[tuple[str, Step]]:
    """(step name, function) in the order they run."""
    specs = list(cfg.filters)
    if not any(s.name == "license" for s in specs):
        specs.insert(0, FilterStep(license=LicenseFilter()))
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
