"""Domain relevance: does a document talk about the recipe's domain at all?

Keyword and regex lists per recipe (case-insensitive, whole words): a document is relevant when
it has at least `min_hits` matches per 1,000 words (at least one match in any case). A density
rather than a count, so a long off-topic page that mentions "rent" once does not pass and a short
on-topic note does. The optional embedding score against seed documents is `semantic.py`
(`semantic_relevance` in the recipe); keywords are the default because they are auditable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class RelevanceRules:
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    min_hits_per_1k_words: float = 2.0

    @cached_property
    def regex(self) -> re.Pattern[str] | None:
        parts = [rf"\b{re.escape(k)}\b" for k in self.keywords] + [f"(?:{p})" for p in self.patterns]
        return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def relevance_hits(text: str, rules: RelevanceRules) -> int:
    return len(rules.regex.findall(text)) if rules.regex is not None else 0


def relevance_reason(text: str, rules: RelevanceRules) -> str | None:
    """None when the document is on-topic (or no keywords are configured), else `off_topic`."""
    if rules.regex is None:
        return None
    hits = relevance_hits(text, rules)
    words = max(len(text.split()), 1)
    return None if hits >= 1 and hits * 1000 / words >= rules.min_hits_per_1k_words else "off_topic"
