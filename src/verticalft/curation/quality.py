"""Gopher quality rules (Rae et al. 2021), as datatrove's `GopherQualityFilter` applies them.

`gopher_quality(text, rules) -> None | reason`: None keeps the document, a reason string drops
it (the same reason names datatrove uses, so audit trails compare). Thresholds are datatrove's
defaults (`GopherRules()`); `STRUCTURED_RULES` is the domain preset: filings and statements are
dense with figures, tickers and bullet lists, which the web-text thresholds would throw away.

Every ratio is computed as datatrove computes it (hash and ellipsis counts and the alphabetic share
over *all* tokens, symbol-only tokens left out of the word count and mean length, *distinct* stop
words, "-" and "•" bullets), because the point of reusing Gopher's thresholds is that they mean what
they meant there. For the same reason the words are datatrove's English words (`english_words`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import compress
from operator import not_

from verticalft.curation.english_words import tokens

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# datatrove.utils.text's TERMINAL_PUNCTUATION (Unicode sentence terminators) and PUNCTUATION, copied.
TERMINAL_PUNCTUATION = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944"
    "\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c"
    "\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e"
    "\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86"
    "\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1"
    "\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238"
    "\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9"
    "\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2"
    "\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d"
    "\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42"
    "\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38"
    "\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
_CONTROL = "".join(map(chr, [*range(0, 9), 11, 12, *range(13, 32), *range(127, 160)]))
PUNCTUATION = (
    frozenset(
        "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + _CONTROL
    )
    | TERMINAL_PUNCTUATION
)
_PUNCT_CHARS = "".join(PUNCTUATION)  # for str.strip: a token that strips to "" is symbols only


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


# Statements and tables: short documents, many numeric tokens, bullet-style line items. Forms
# ("Categorise this bank transaction: … Category: fees") hold none of Gopher's eight stop words,
# so that rule is off (it dropped 7 clean finance worksheets at 1); junk still fails the others.
STRUCTURED_RULES = GopherRules(
    min_doc_words=20, max_non_alpha_words_ratio=0.5, max_bullet_lines_ratio=None, min_stop_words=None
)


def gopher_quality(text: str, rules: GopherRules = GopherRules()) -> str | None:
    """The first Gopher quality rule `text` breaks, or None when it passes them all."""
    ws = tokens(text)
    n_words = len(ws)
    # Words made of letters only are most tokens and never symbols: test the rest character-wise.
    is_alpha = list(map(str.isalpha, ws))
    others = list(compress(ws, map(not_, is_alpha)))
    symbols = [w for w in others if not w.strip(_PUNCT_CHARS)]  # datatrove drops these from counts
    n = n_words - len(symbols)
    if rules.min_doc_words and n < rules.min_doc_words:
        return "gopher_short_doc"
    if rules.max_doc_words and n > rules.max_doc_words:
        return "gopher_long_doc"
    if n:
        avg = (sum(map(len, ws)) - sum(map(len, symbols))) / n
        if rules.min_avg_word_length and avg < rules.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if rules.max_avg_word_length and avg > rules.max_avg_word_length:
            return "gopher_above_avg_threshold"
    if rules.max_symbol_word_ratio and n_words:
        if text.count("#") / n_words > rules.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / n_words > rules.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
    lines = text.splitlines() or [""]
    if rules.max_bullet_lines_ratio:
        bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines)
        if bullets / len(lines) > rules.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
    if rules.max_ellipsis_lines_ratio:
        ellipsis = sum(s.rstrip().endswith(("...", "…")) for s in lines)
        if ellipsis / len(lines) > rules.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
    if rules.max_non_alpha_words_ratio and n_words:
        with_letter = sum(is_alpha) + sum(1 for w in others if _has_letter(w))
        if with_letter / n_words < rules.max_non_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
    if rules.min_stop_words and len(STOP_WORDS.intersection(ws)) < rules.min_stop_words:
        return "gopher_enough_stop_words"
    return None


_LETTER = re.compile(r"[^\W\d_]")  # str.isalpha characters, and a few numeric ones ("½"): checked


def _has_letter(w: str) -> bool:
    return _LETTER.search(w) is not None and any(c.isalpha() for c in w)
