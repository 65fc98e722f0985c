"""Gopher quality rules (Rae et al. 2021), as datatrove's `GopherQualityFilter` applies them.

`gopher_quality(text, rules) -> None | reason`: None keeps the document, a reason string drops
it (the same reason names datatrove uses, so audit trails compare). Thresholds are datatrove's
defaults (`GopherRules()`); `FINANCE_RULES` is the domain preset: filings and statements are
dense with figures, tickers and bullet lists, which the web-text thresholds would throw away.

Words come from a regex close to NLTK's `word_tokenize` (punctuation split off as tokens), so no
tokenizer model has to be downloaded.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_WORD = re.compile(r"\w+(?:[-'.,]\w+)*|\.\.\.|[^\w\s]")
_PUNCT = set(string.punctuation)


@dataclass(frozen=True)
class GopherRules:
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8  # datatrove's name: *min* share of words with a letter
    min_stop_words: int | None = 2


# Statements and tables: short documents, many numeric tokens, bullet-style line items.
FINANCE_RULES = GopherRules(
    min_doc_words=20, max_non_alpha_words_ratio=0.5, max_bullet_lines_ratio=None, min_stop_words=1
)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def gopher_quality(text: str, rules: GopherRules = GopherRules()) -> str | None:
    """The first Gopher quality rule `text` breaks, or None when it passes them all."""
    ws = words(text)
    content = [w for w in ws if w not in _PUNCT]
    n = len(content)
    if rules.min_doc_words and n < rules.min_doc_words:
        return "gopher_short_doc"
    if rules.max_doc_words and n > rules.max_doc_words:
        return "gopher_long_doc"
    avg = sum(len(w) for w in content) / n if n else 0.0
    if rules.min_avg_word_length and avg < rules.min_avg_word_length:
        return "gopher_below_avg_threshold"
    if rules.max_avg_word_length and avg > rules.max_avg_word_length:
        return "gopher_above_avg_threshold"
    if rules.max_symbol_word_ratio and n:
        if text.count("#") / n > rules.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / n > rules.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
    lines = text.splitlines() or [""]
    if (
        rules.max_bullet_lines_ratio
        and sum(s.lstrip().startswith("•") for s in lines) / len(lines) > rules.max_bullet_lines_ratio
    ):
        return "gopher_too_many_bullets"
    if (
        rules.max_ellipsis_lines_ratio
        and sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines)
        > rules.max_ellipsis_lines_ratio
    ):
        return "gopher_too_many_end_ellipsis"
    if (
        rules.max_non_alpha_words_ratio
        and n
        and sum(any(c.isalpha() for c in w) for w in ws) / n < rules.max_non_alpha_words_ratio
    ):
        return "gopher_below_alpha_threshold"
    if rules.min_stop_words and sum(w in STOP_WORDS for w in ws) < rules.min_stop_words:
        return "gopher_enough_stop_words"
    return None
