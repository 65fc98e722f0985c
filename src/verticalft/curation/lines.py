"""C4 line rules (Raffel et al. 2020) as datatrove's `C4QualityFilter` applies them, plus a
boilerplate-line list, with a `structured` preset (tables, bullet lists, numbered clauses).

`c4_lines(text, rules) -> LineResult`: the text with bad lines removed, or a document-level drop
reason (`lorem_ipsum`, `curly_bracket`, `too_few_sentences`). Line drops are counted per reason
for the audit trail. The web defaults keep only lines ending in terminal punctuation; ledgers,
tables and bullet lists in filings do not, so `STRUCTURED_LINE_RULES` turns that off and relies on
the boilerplate patterns instead.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# Navigation bars, share widgets, subscription and copyright footers.
BOILERPLATE = re.compile(
    r"(?i)all rights reserved|click here|subscribe to our|share this (page|article)|"
    r"^\s*(home|menu)\s*\||\|\s*(sitemap|contact|careers|accessibility)\b|do not sell my"
)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


@dataclass(frozen=True)
class LineRules:
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    filter_boilerplate: bool = False  # not a C4 rule; on in the domain preset


STRUCTURED_LINE_RULES = LineRules(
    filter_no_terminal_punct=False, min_num_sentences=1, min_words_per_line=2, filter_boilerplate=True
)


@dataclass
class LineResult:
    text: str | None  # None: drop the document
    reason: str | None = None
    dropped_lines: Counter = field(default_factory=Counter)


def c4_lines(text: str, rules: LineRules = LineRules()) -> LineResult:
    kept: list[str] = []
    dropped: Counter = Counter()
    sentences = 0
    for raw in text.splitlines():
        line = raw.strip()
        words = line.split()
        if rules.max_word_length > 0 and any(len(w) > rules.max_word_length for w in words):
            dropped["too_long_word"] += 1
            continue
        line = CITATION.sub("", line)
        if rules.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
            dropped["no_terminal_punc"] += 1
            continue
        if len(words) < rules.min_words_per_line:
            dropped["too_few_words"] += 1
            continue
        low = line.lower()
        if rules.filter_lorem_ipsum and "lorem ipsum" in low:
            return LineResult(None, "lorem_ipsum", dropped)
        if rules.filter_javascript and "javascript" in low:
            dropped["javascript"] += 1
            continue
        if rules.filter_curly_bracket and "{" in line:
            return LineResult(None, "curly_bracket", dropped)
        if rules.filter_policy and any(p in low for p in POLICY_SUBSTRINGS):
            dropped["policy"] += 1
            continue
        if rules.filter_boilerplate and BOILERPLATE.search(line):
            dropped["boilerplate"] += 1
            continue
        sentences += max(1, len(_SENTENCE_END.findall(line)))
        kept.append(line)
    if sentences < rules.min_num_sentences:
        return LineResult(None, "too_few_sentences", dropped)
    return LineResult("\n".join(kept).strip(), None, dropped)
