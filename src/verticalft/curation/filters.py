"""The document filters a recipe can list under `stages.curate.filters`, in one registry.

Each filter is a `Filter`: its name (the recipe key), its recipe block (a strict pydantic model;
for rule-dataclass filters generated from the dataclass, with presets) and `make`, which turns a
block into a step `record -> Outcome` (keep, maybe with rewritten text, or drop with a reason).
The recipe schema (`recipe.FilterStep`), the presets and the chain (`chain.build_chain`) all
derive from `FILTERS`. Adding a filter: a module with its rule, and one `register(...)` below.

Presets: `web` (the published rules: Gopher, C4, FineWeb) and `structured` (figure-heavy text
with tables, bullet lists and numbered clauses: filings, statements, listings, leases);
`finance`, the first vertical to use it, is an alias.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, create_model, model_validator

from verticalft.curation import fineweb, langid, lines, provenance, quality, relevance, repetition, semantic
from verticalft.schema import Strict


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
        return [outcome(r, reason) for r, reason in zip(records, reasons, strict=True)]


def outcome(record: dict[str, Any], reason: str | None) -> Outcome:
    return Outcome(None if reason else record["text"], reason)


def text_rule(fn: Callable[[str], str | None]) -> Step:
    """A step from a function of the text that returns a drop reason or None."""

    def step(record: dict[str, Any]) -> Outcome:
        return outcome(record, fn(record["text"]))

    return step


def with_rules(fn: Callable[[str, Any], str | None], rules: Any) -> Callable[[str], str | None]:
    """`fn(text, rules)` as a function of the text, its rules built once per step."""
    return lambda text: fn(text, rules)


@dataclass(frozen=True)
class Filter:
    name: str
    config: type[BaseModel]  # the recipe block
    make: Callable[[Any], Step]  # block → step
    presets: dict[str, Any] | None = None  # preset name → rules dataclass (rule-based filters)


FILTERS: dict[str, Filter] = {}
PRESET_ALIASES = {"finance": "structured"}


def register(f: Filter) -> Filter:
    FILTERS[f.name] = f
    return f


def rules_for(name: str, block: Any) -> Any:
    """The preset's rule dataclass with the keys the recipe set laid over it."""
    overrides = {k: getattr(block, k) for k in block.model_fields_set if k != "preset"}
    presets = FILTERS[name].presets or {}
    return dataclasses.replace(presets[PRESET_ALIASES.get(block.preset, block.preset)], **overrides)


def rules_model(name: str, rules_cls: type, presets: dict[str, Any]) -> type[BaseModel]:
    """A strict recipe block for a rule dataclass: `preset` plus any of its thresholds.

    Generated from the dataclass so the curation module stays the one place a threshold is
    defined; only the keys a recipe sets override the preset (an explicit null turns a rule off).
    """
    names = (*presets, *PRESET_ALIASES)
    hints = typing.get_type_hints(rules_cls)
    fields: dict[str, Any] = {"preset": (Literal[names], names[0])}  # type: ignore[valid-type]  # names known at run time
    for f in dataclasses.fields(rules_cls):
        fields[f.name] = (hints[f.name] | None, None)
    return create_model(name, __base__=Strict, **fields)


def rule_filter(name: str, model_name: str, rules_cls: type, presets: dict[str, Any], fn: Callable) -> Filter:
    """A filter whose rule is `fn(text, rules)` with a rules dataclass and presets."""
    return Filter(
        name,
        rules_model(model_name, rules_cls, presets),
        lambda block: text_rule(with_rules(fn, rules_for(name, block))),
        presets,
    )


# --------------------------------------------------------------------------- the filters
class LicenseFilter(Strict):
    allow: list[str] = Field(default_factory=list)  # accepted on top of the redistributable list


def _license(cfg: LicenseFilter) -> Step:
    allowed = provenance.REDISTRIBUTABLE | {a.lower() for a in cfg.allow}
    return lambda r: outcome(r, provenance.license_reason(r.get("license"), allowed))


class RecencyFilter(Strict):
    not_before: datetime.date


class LengthFilter(Strict):
    min_words: int = Field(default=20, ge=0)
    max_words: int | None = Field(default=100_000, ge=1)


def _length_reason(text: str, min_words: int, max_words: int | None) -> str | None:
    n = len(text.split())
    if n < min_words:
        return "too_few_words"
    return "too_many_words" if max_words and n > max_words else None


class LanguageFilter(Strict):
    languages: list[str] = Field(default_factory=lambda: ["en"])
    # drop a document when the model is at least this sure it is in another language
    min_score: float = Field(default=0.65, ge=0.0, le=1.0)


class RelevanceFilter(Strict):
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)  # regular expressions
    min_hits_per_1k_words: float = Field(default=2.0, ge=0.0)


def _seed_file(path: str) -> str:
    if not path.endswith((".txt", ".jsonl")):
        raise ValueError("a seed file is .txt (one document) or .jsonl (`text` on every line)")
    return path


class SemanticRelevanceFilter(Strict):
    """Embedding similarity to a handful of seed documents (curation/semantic.py); optional:
    needs `pip install 'verticalft[embed]'`. Seed paths are read by the worker that runs a shard,
    relative to its working directory (on a multi-node Ray cluster: absolute paths every node has,
    or `seed_texts`)."""

    seeds: list[Annotated[str, AfterValidator(_seed_file)]] = Field(default_factory=list)
    seed_texts: list[str] = Field(default_factory=list)  # seed documents written inline
    min_similarity: float = Field(default=0.3, ge=-1.0, le=1.0)  # best cosine to a seed
    max_chars: int = Field(default=2000, ge=1)  # only the start of a document is embedded

    @model_validator(mode="after")
    def _has_seeds(self) -> SemanticRelevanceFilter:
        if not self.seeds and not self.seed_texts:
            raise ValueError("give seed documents: `seeds` (files) or `seed_texts`")
        return self


def _c4_lines(block: Any) -> Step:
    rules = rules_for("c4_lines", block)

    def c4(record: dict[str, Any]) -> Outcome:
        res = lines.c4_lines(record["text"], rules)
        return Outcome(res.text, res.reason, Counter({f"lines_{k}": v for k, v in res.dropped_lines.items()}))

    return c4


def _c4_presets() -> dict[str, Any]:
    return {"web": lines.LineRules(), "structured": lines.STRUCTURED_LINE_RULES}


# In the order a recipe usually lists them; the licence step always runs first (chain.build_chain).
register(Filter("license", LicenseFilter, _license))
register(
    Filter(
        "recency",
        RecencyFilter,
        lambda cfg: lambda r: outcome(r, provenance.recency_reason(r.get("date"), cfg.not_before)),
    )
)
register(
    Filter(
        "length",
        LengthFilter,
        lambda cfg: text_rule(lambda t: _length_reason(t, cfg.min_words, cfg.max_words)),
    )
)
register(
    Filter(
        "language",
        LanguageFilter,
        lambda cfg: text_rule(
            with_rules(langid.language_reason, langid.LanguageRules(tuple(cfg.languages), cfg.min_score))
        ),
    )
)
register(
    Filter("c4_lines", rules_model("C4LinesFilter", lines.LineRules, _c4_presets()), _c4_lines, _c4_presets())
)
register(
    rule_filter(
        "gopher_quality",
        "GopherQualityFilter",
        quality.GopherRules,
        {"web": quality.GopherRules(), "structured": quality.STRUCTURED_RULES},
        quality.gopher_quality,
    )
)
register(
    rule_filter(
        "gopher_repetition",
        "GopherRepetitionFilter",
        repetition.RepetitionRules,
        {"web": repetition.RepetitionRules(), "structured": repetition.STRUCTURED_RULES},
        repetition.gopher_repetition,
    )
)
register(
    rule_filter(
        "fineweb_quality",
        "FineWebQualityFilter",
        fineweb.FineWebRules,
        {"web": fineweb.FineWebRules(), "structured": fineweb.STRUCTURED_RULES},
        fineweb.fineweb_quality,
    )
)
register(
    Filter(
        "relevance",
        RelevanceFilter,
        lambda cfg: text_rule(
            with_rules(
                relevance.relevance_reason,
                relevance.RelevanceRules(tuple(cfg.keywords), tuple(cfg.patterns), cfg.min_hits_per_1k_words),
            )
        ),
    )
)
register(
    Filter(
        "semantic_relevance",
        SemanticRelevanceFilter,
        lambda cfg: BatchStep(
            semantic.SemanticRelevance(
                semantic.SemanticRules(
                    tuple(cfg.seeds), tuple(cfg.seed_texts), cfg.min_similarity, cfg.max_chars
                )
            ).semantic_reasons
        ),
    )
)
