"""Gopher repetition rules (Rae et al. 2021, table A1), as datatrove's `GopherRepetitionFilter` applies them.

`gopher_repetition(text, rules) -> None | reason`: None keeps the document, a reason string drops it,
with datatrove's reason names (`dup_para_frac`, `dup_para_char_frac`, `dup_line_frac`,
`dup_line_char_frac`, `top_{n}_gram`, `duplicated_{n}_n_grams`, `empty`). Every count is datatrove's:
paragraphs split on blank lines of the stripped text, lines on runs of newlines of the raw text,
character fractions over the whole text, n-grams over `english_words.tokens` (the same words datatrove's
English tokenizer yields), top n-grams joined with spaces and counted as `Counter.most_common`
does (ties go to the first seen), duplicated n-grams joined without a separator and counted
greedily, skipping n words after each repeat. Rules are checked in datatrove's order and the
first one broken is returned.

Speed, with the same answers: duplicate counts come from set sizes, n-grams are built in C (each
n from the previous one), top n-grams come from one `Counter`, and the greedy walk is skipped when
even every repeated occurrence could not reach the threshold, and otherwise visits only the
positions whose n-gram occurred before.

`STRUCTURED_RULES` relaxes the n-gram rules only. Domain documents built on forms repeat their stems
("Categorise this bank transaction:", "What was net revenue, in $ millions?", "compared with the
three months ended ..."): the web thresholds drop 163 of the 930 clean finance sample documents
(17.5%) and 95 of 930 in real estate, nearly all by `duplicated_5_n_grams` and `top_4_gram`. With
the top n-gram limits x1.75 and the duplicated n-gram limits x2.5 that falls to 8 and 6 (x1.5/x2
still lost 21 finance worksheets, over the 2% budget), while pages made of repeated lines,
paragraphs, a stuffed keyword or a pasted-twice body still go. Line and paragraph rules stay at
the web values: tables do not trip them in the layout this project's filings come in (one
`| label | 2024 | 2023 |` row per line, see data_pipelines/finance/edgar.py), because rows differ
in their figures; a document of identical lines is junk in any domain. tests/test_repetition.py
holds the preset to both.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress
from operator import add, itemgetter, ne

from verticalft.curation.english_words import tokens

_PARAGRAPH = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


@dataclass(frozen=True)
class RepetitionRules:
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )


STRUCTURED_RULES = RepetitionRules(
    top_n_grams=((2, 0.35), (3, 0.315), (4, 0.28)),
    dup_n_grams=((5, 0.375), (6, 0.35), (7, 0.325), (8, 0.3), (9, 0.275), (10, 0.25)),
)


def gopher_repetition(text: str, rules: RepetitionRules = RepetitionRules()) -> str | None:
    """The first Gopher repetition rule `text` breaks, or None when it passes them all."""
    if not text:
        return "empty"
    n_chars = len(text)
    for parts, frac, char_frac, name in (
        (_PARAGRAPH.split(text.strip()), rules.dup_para_frac, rules.dup_para_char_frac, "dup_para"),
        (_LINES.split(text), rules.dup_line_frac, rules.dup_line_char_frac, "dup_line"),
    ):
        distinct = set(parts)
        n_dup = len(parts) - len(distinct)
        if frac and n_dup / len(parts) > frac:
            return f"{name}_frac"
        if char_frac and n_dup and (sum(map(len, parts)) - sum(map(len, distinct))) / n_chars > char_frac:
            return f"{name}_char_frac"
    ws = tokens(text)
    for (n, frac), grams in zip(
        rules.top_n_grams, _ngrams(ws, [n for n, _ in rules.top_n_grams], " "), strict=True
    ):
        if grams:
            gram, count = max(Counter(grams).items(), key=itemgetter(1))  # = most_common(1)[0]
            if len(gram) * count / n_chars > frac:
                return f"top_{n}_gram"
    for (n, frac), grams in zip(
        rules.dup_n_grams, _ngrams(ws, [n for n, _ in rules.dup_n_grams], ""), strict=True
    ):
        if _duplicated_chars(grams, n, n_chars, frac) / n_chars > frac:
            return f"duplicated_{n}_n_grams"
    return None


def _ngrams(ws: tuple[str, ...], ns: list[int], sep: str) -> Iterator[list[str]]:
    """The n-grams of `ws` joined by `sep` for each n in turn, each built on the previous when n grows."""
    grams: list[str] = []
    size = 0
    for n in ns:
        if size and n > size:
            for k in range(size + 1, n + 1):
                tail = ws[k - 1 :]
                grams = (
                    list(map(sep.join, zip(grams, tail, strict=False)))
                    if sep
                    else list(map(add, grams, tail))
                )
        else:
            grams = list(map(sep.join, zip(*(ws[i:] for i in range(n)), strict=False)))
        size = n
        yield grams


def _duplicated_chars(grams: list[str], n: int, n_chars: int, frac: float) -> int:
    """datatrove's `find_all_duplicate`: characters of the n-grams a greedy walk finds already seen
    (a repeat skips its n words, and skipped positions are never "seen"). 0 when even every repeated
    occurrence together could not exceed `frac`.

    The walk visits only the positions whose n-gram occurred before (`repeats`): at any other
    position the walk just records the n-gram, so it is enough to know whether that first
    occurrence was visited, i.e. not inside the n-word skip after a repeat (`hits`)."""
    m = len(grams)
    distinct = set(grams)
    if len(distinct) == m or (sum(map(len, grams)) - sum(map(len, distinct))) / n_chars <= frac:
        return 0
    first = dict(zip(reversed(grams), range(m - 1, -1, -1), strict=True))  # n-gram -> its first position
    repeats = compress(range(m), map(ne, map(first.__getitem__, grams), range(m)))
    hits: list[int] = []  # positions counted as repeats; each skips the next n - 1 positions
    visited_repeat: set[str] = set()  # n-grams seen at a visited repeat position that was not a hit
    repeated = pos = 0
    for i in repeats:
        if i < pos:
            continue
        g = grams[i]
        f = first[g]
        k = bisect_left(hits, f) - 1
        if g in visited_repeat or k < 0 or f >= hits[k] + n:
            repeated += len(g)
            hits.append(i)
            pos = i + n
        else:
            visited_repeat.add(g)
            pos = i + 1
    return repeated
