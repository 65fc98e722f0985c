"""English words as datatrove splits them: a port of spaCy's rule-based `English` tokenizer.

Why a port: the Gopher, FineWeb and repetition filters reuse datatrove's thresholds, which only mean
what they meant there if "a word" does too, and datatrove splits English with spaCy (whitespace, then
prefix/suffix/infix rules and the English exceptions such as "don't" -> "do" "n't", "Inc." kept whole,
"$5" -> "$" "5"). These are those rules, not spaCy: no model, no dependency, and each distinct
whitespace-separated chunk is split once and cached, which is what makes it fast. It matches spaCy on
English text; scripts without case (CJK, Arabic, ...) are only approximated.
`benchmarks/bench_filters.py` measures the agreement.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from itertools import chain
from typing import NamedTuple


def words(text: str) -> list[str]:
    """`text` split into tokens the way datatrove's `split_into_words(text, "en")` splits it."""
    return list(tokens(text))


@lru_cache(maxsize=4)  # the filters of one chain tokenize the same text: do it once (datatrove does too)
def tokens(text: str) -> tuple[str, ...]:
    """`words(text)` as a tuple, shared by the filters (do not rely on a new object per call)."""
    chunks = text.split()
    parts = list(map(_CHUNKS.get, chunks))
    if None in parts:
        if len(_CHUNKS) > _CHUNK_CACHE_SIZE:
            _CHUNKS.clear()
        for i, p in enumerate(parts):
            if p is None:
                parts[i] = _CHUNKS[chunks[i]] = _split_chunk(chunks[i])
    return tuple(chain.from_iterable(p for p in parts if p is not None))  # every one is, by now


_CHUNKS: dict[str, tuple[str, ...]] = {}
_CHUNK_CACHE_SIZE = 200_000


def _char_classes() -> dict[str, str]:
    """Regex character class bodies by Unicode category, over the BMP and the emoji planes."""
    runs: dict[str, list[list[int]]] = {}
    for i in chain(range(0xA0, 0x10000), range(0x1F000, 0x1FB00)):
        cat = runs.setdefault(unicodedata.category(chr(i)), [])
        if cat and cat[-1][1] == i - 1:
            cat[-1][1] = i
        else:
            cat.append([i, i])
    return {
        k: "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in v)
        for k, v in runs.items()
    }


_ASCII_DIGIT = re.compile("[0-9]")
_ONE_CHAR_SUFFIXES = frozenset(
    ",:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧—–"
)
_BEFORE_DOT = frozenset("0123456789abcdefghijklmnopqrstuvwxyz%-+,:;!?()[]{}<>_#*&|'\"`")
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")  # "1,234.5": no URL, and no infix rule splits it
_PUNCT = r"…,:;!?¿؟¡()\[\]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
_CURRENCY = r"\$|£|€|¥|฿|US\$|C\$|A\$|₽|﷼|₴|[₠-₿]"
_UNITS = (
    "km|km²|km³|m|m²|m³|dm|dm²|dm³|cm|cm²|cm³|mm|mm²|mm³|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|m/s|km/h|"
    "kmh|mph|hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%|км|км²|км³|м|м²|м³|дм|дм²|дм³|см|см²|см³|мм|"
    "мм²|мм³|нм|кг|г|мг|м/с|км/ч|кПа|Па|мбар|Кб|КБ|кб|Мб|МБ|мб|Гб|ГБ|гб|Тб|ТБ|тб"
)


class _AffixRules(NamedTuple):
    prefix: re.Pattern[str]
    suffix: re.Pattern[str]
    infix: re.Pattern[str]
    infix_chars: re.Pattern[str]  # the characters an infix match can start with: no match without one
    url: re.Pattern[str]


@lru_cache(maxsize=1)  # built on first use: ~50 ms of Unicode tables and regex compilation
def _affix_rules() -> _AffixRules:
    """spaCy's English prefix, suffix and infix rules (spacy/lang/punctuation.py) and URL match.

    Its character classes come from Unicode categories: icons are the "So" symbols, letters of
    scripts without case count as both lower and upper case (as in spacy/lang/char_classes.py)."""
    cat = _char_classes()
    icons = cat["So"]
    alpha = rf"[^\W\d_{cat['No']}{cat['Nl']}{cat['Lm']}]"  # `\w` less digits, "_", "½", "²", "ª", ...
    lower = "a-z" + cat["Ll"] + cat["Lo"]
    upper = "A-Z" + cat["Lu"] + cat["Lo"]
    return _AffixRules(
        prefix=re.compile(
            rf"§|%|=|—|–|\+(?![0-9])|[{_PUNCT}]|\.\.+|[{_QUOTES}]|US\$|C\$|A\$|{_CURRENCY}|[{icons}]"
        ),
        # re.search of `(alternatives)$` finds the leftmost = longest suffix, as spaCy's `a$|b$|...`.
        suffix=re.compile(
            rf"(?:……|[{_PUNCT}]|\.\.+|[{_QUOTES}]|[{icons}]|'s|'S|’s|’S|—|–|(?<=[0-9])\+|(?<=°[FfCcKk])\.|"
            rf"(?<=[0-9])(?:{_CURRENCY})|(?<=[0-9])(?:{_UNITS})|"
            rf"(?<=[0-9{lower}%²\-+{_PUNCT}|(?:){_QUOTES}])\.|(?<=[{upper}][{upper}])\.)$"
        ),
        infix=re.compile(
            rf"\.\.+|…|[{icons}]|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[{lower}{_QUOTES}])\.(?=[{upper}{_QUOTES}])|"
            rf"(?<={alpha}),(?={alpha})|(?<={alpha}|[0-9])(?:-|–|—|--|---|——|~)(?={alpha})|"
            rf"(?<={alpha}|[0-9])[:<>=/](?={alpha})"
        ),
        infix_chars=re.compile(rf"[.…+\-*^,–—~:<>=/{icons}]"),
        # spaCy's URL_MATCH without its IP-address branch (an IP address is one token anyway).
        url=re.compile(
            r"^(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
            r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
            rf"[{lower}]{{2,63}}(?::\d{{2,5}})?(?:[/?#]\S*)?$"
        ),
    )


def _split_chunk(chunk: str) -> tuple[str, ...]:
    if (chunk.isalpha() or chunk.isdecimal()) and chunk not in _SPECIALS:
        return (chunk,)  # no affix or infix rule applies to letters alone or digits alone
    toks = _split_affixes(chunk, _SPECIALS)
    return _merge_specials(toks) if len(toks) > 1 else toks


def _split_affixes(s: str, specials: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """spaCy's `Tokenizer._split_affixes` + `_attach_tokens` for one whitespace-free chunk."""
    if s in specials:
        return specials[s]
    rules = _affix_rules()
    prefixes: list[str] = []
    suffixes: list[str] = []
    last = 0
    while s and len(s) != last and s not in specials:
        last = len(s)
        m = None if s[0].isalnum() and not s.startswith(("US$", "C$", "A$")) else rules.prefix.match(s)
        pre = m.end() if m else 0
        if pre and s[pre:] in specials:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        suf = _suffix_len(s[pre:], rules)
        if suf and s[:-suf] in specials:
            suffixes.append(s[-suf:])
            s = s[:-suf]
            break
        if pre:
            prefixes.append(s[:pre])
        if suf:
            suffixes.append(s[-suf:])
        s = s[pre : len(s) - suf]
    out = prefixes
    if s in specials:
        out.extend(specials[s])
    elif s.isalnum() or _PLAIN_NUMBER.fullmatch(s) or ("." in s and rules.url.match(s)):
        out.append(s)  # a URL needs a ".", an infix a character that `infix_chars` matches
    elif s and not rules.infix_chars.search(s):
        out.append(s)
    elif s:
        start = 0
        for a, b in _infixes(s, rules):
            if a == 0:
                continue
            if a != start:
                out.append(s[start:a])
            out.append(s[a:b])
            start = b
        if s[start:]:
            out.append(s[start:])
    out.extend(reversed(suffixes))
    return tuple(out)


def _suffix_len(s: str, rules: _AffixRules) -> int:
    """Length of the suffix spaCy splits off `s` (0: none). The common endings are decided here, the
    rest by the suffix regex, whose leftmost match is the longest suffix."""
    if not s:
        return 0
    end = s[-1]
    if end in _ONE_CHAR_SUFFIXES:  # punctuation and quotes: no longer suffix ends in one of them
        return 1
    if end == "." and len(s) > 2 and s[-3:-1].isascii() and s[-2] != ".":
        before, before2 = s[-2], s[-3]  # "." splits after a digit, lower case or punctuation, or "AB"
        return int(before in _BEFORE_DOT or (before.isupper() and before2.isupper()))
    # No suffix ends in a decimal digit, and one ending in an ASCII letter is "'s" or a unit after a
    # digit ("5km").
    if end.isdecimal() or (
        end.isascii() and end.isalpha() and s[-2:-1] not in "'’" and not _ASCII_DIGIT.search(s)
    ):
        return 0
    m = rules.suffix.search(s)
    return len(s) - m.start() if m else 0


def _infixes(s: str, rules: _AffixRules) -> Iterator[tuple[int, int]]:
    """The spans `rules.infix.finditer(s)` yields, trying the full pattern only where it can start."""
    pos = 0
    while c := rules.infix_chars.search(s, pos):
        m = rules.infix.match(s, c.start())
        if m:
            yield m.span()
        pos = m.end() if m else c.start() + 1


def _merge_specials(toks: tuple[str, ...]) -> tuple[str, ...]:
    """spaCy's second pass (`_apply_special_cases`): an exception that affix splitting cut into
    pieces inside a chunk is put back, e.g. "8)" in "(page 8)" or "):" in "(in millions):"."""
    patterns = _special_patterns()
    spans = [
        (len(p), -i, i + len(p))
        for i, t in enumerate(toks)
        for p in patterns.get(t, ())
        if toks[i : i + len(p)] == p
    ]
    if not spans:
        return toks
    seen: set[int] = set()
    keep = []
    for _, neg_start, end in sorted(spans, reverse=True):  # longest first, then leftmost
        if -neg_start not in seen and end - 1 not in seen:
            keep.append((-neg_start, end))
        seen.update(range(-neg_start, end))
    out: list[str] = []
    pos = 0
    for start, end in sorted(keep):
        out += toks[pos:start]
        out += _SPECIALS["".join(toks[start:end])]
        pos = end
    return (*out, *toks[pos:])


@lru_cache(maxsize=1)
def _special_patterns() -> dict[str, list[tuple[str, ...]]]:
    """Exceptions that affix rules would split, as their affix-split tokens, by first token."""
    patterns: dict[str, list[tuple[str, ...]]] = {}
    rules = _affix_rules()
    for key in _SPECIALS:
        if rules.prefix.match(key) or rules.suffix.search(key) or rules.infix.search(key):
            toks = _split_affixes(key, {})
            patterns.setdefault(toks[0], []).append(toks)
    return patterns


# spaCy's English tokenizer exceptions (spacy/lang/en/tokenizer_exceptions.py) as data, by kind;
# `_english_exceptions` expands them the way spaCy's file does (lower and title case, ’ for ').
# Contractions: each stem (lower and title case) with each ending; "|" splits an ending's tokens.
_CONTRACTIONS = (
    ("i", "'m m 'm|a m|a"),
    ("i you he she it we they", "'ll ll 'll|'ve ll|ve 'd d 'd|'ve d|ve"),
    ("i you we they", "'ve ve"),
    ("you we they", "'re re"),
    ("he she it", "'s s"),
    ("who what when where why how there that this", "'s s"),
    ("who what when where why how there that this these those", "'ll ll 'll|'ve ll|ve"),
    ("who what when where why how there that this these those", "'d d 'd|'ve d|ve"),
    ("who what when where why how there these those", "'re re 've ve"),
    ("ca could do does did had may might must need ought sha should wo would", "n't nt"),
    ("ca could do does did had may might must need ought sha should wo would", "n't|'ve nt|ve"),
    ("could might must should would", "'ve ve"),
    ("ai are is was were have has dare", "n't nt"),
)
# Irregular forms: orth → its tokens ("|" between them), each case spelled out as spaCy does.
_IRREGULAR = (
    "y'all=y'|all yall=y|all how'd'y=how|'d|'y How'd'y=How|'d|'y not've=not|'ve notve=not|ve "
    "Not've=Not|'ve Notve=Not|ve cannot=can|not Cannot=Can|not gonna=gon|na Gonna=Gon|na gotta=got|ta "
    "Gotta=Got|ta let's=let|'s Let's=Let|'s c'mon=c'm|on C'mon=C'm|on °C.=°|C|. °F.=°|F|. °K.=°|K|. "
    "°c.=°|c|. °f.=°|f|. °k.=°|k|."
)
# Dropped-g forms, kept whole with and without the apostrophe (lower and title case).
_DROPPED_G = ("doin", "goin", "nothin", "nuthin", "ol", "somethin", "lovin", "havin")
# Tokens kept whole: abbreviations, other spellings, symbols, emoticons (and "a." … "z.").
_WHOLE = (
    "em 'em ll 'll nuff 'nuff 'S 's ‘S ‘s and/or w/o 're 'd 'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz "
    "'bout ma'am Ma'am o'clock O'clock Mt. Ak. Ala. Apr. Ariz. Ark. Aug. Calif. Colo. Conn. Dec. Del. "
    "Feb. Fla. Ga. Ia. Id. Ill. Ind. Jan. Jul. Jun. Kan. Kans. Ky. La. Mar. Mass. Mich. Minn. Miss. "
    "N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. S.C. Sep. Sept. Tenn. Va. "
    "Wash. Wis. a.m. Adm. Bros. co. Co. Corp. D.C. Dr. e.g. E.g. E.G. Gen. Gov. i.e. I.e. I.E. Inc. "
    "Jr. Ltd. Md. Messrs. Mo. Mont. Mr. Mrs. Ms. p.m. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. "
    "' '' C++ ä. ö. ü. \\\") \\t \\n <space> — "
    # emoticons
    ":) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) 8-) (-8 ;) ;-) (; "
    "(-; :( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P "
    ":-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* :-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D "
    "xD XD xDD XDD 8D 8-D ^_^ ^__^ ^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O "
    "0_o o_0 0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.) (>_<) (*_*) (¬_¬) "
    "ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>"
)
# Words, not contractions: "ill" is not "i'll", "well" not "we'll" (lower and title case).
_NOT_CONTRACTIONS = ("ill", "its", "hell", "shell", "shed", "were", "well", "whore")


def _english_exceptions() -> dict[str, tuple[str, ...]]:
    """spaCy's English tokenizer exceptions, orth → tokens, in spaCy's order.

    Built from the tables above rather than written out: the ~1,000 entries are a few rules over a
    few word lists, and the rules are what a reader checks against spaCy's file."""
    exc = {**_contractions(), **_clock_times(), **_irregular(), **_dropped_g(), **_whole()}
    for stem in _NOT_CONTRACTIONS:
        exc.pop(stem, None)
        exc.pop(stem.title(), None)
    # Every exception written with ' also exists with ’ (spaCy's `expand_exc`).
    curly = {k.replace("'", "’"): tuple(p.replace("'", "’") for p in v) for k, v in exc.items() if "'" in k}
    return {**exc, **curly}


def _contractions() -> dict[str, tuple[str, ...]]:
    """ "don't" → "do" "n't", "Shouldn't've" → "Should" "n't" "'ve", …: every `_CONTRACTIONS` stem
    in lower and title case with each of its endings."""
    exc: dict[str, tuple[str, ...]] = {}
    for stems, endings in _CONTRACTIONS:
        for stem in stems.split():
            for orth in (stem, stem.title()):
                for ending in endings.split():
                    parts = (orth, *ending.split("|"))
                    exc["".join(parts)] = parts
    return exc


def _clock_times() -> dict[str, tuple[str, ...]]:
    """ "3pm" → "3" "pm", "11a.m." → "11" "a.m." for the hours 1 to 12."""
    return {f"{h}{period}": (str(h), period) for h in range(1, 13) for period in ("a.m.", "am", "p.m.", "pm")}


def _irregular() -> dict[str, tuple[str, ...]]:
    """ "gonna" → "gon" "na", "°C." → "°" "C" "." and the other `_IRREGULAR` forms."""
    pairs = (entry.split("=") for entry in _IRREGULAR.split())
    return {orth: tuple(parts.split("|")) for orth, parts in pairs}


def _dropped_g() -> dict[str, tuple[str, ...]]:
    """ "doin" and "doin'" kept whole, in lower and title case."""
    return {o: (o,) for stem in _DROPPED_G for orth in (stem, stem.title()) for o in (orth, orth + "'")}


def _whole() -> dict[str, tuple[str, ...]]:
    """`_WHOLE` and the single letters with a dot ("a." … "z."), each one token."""
    return {orth: (orth,) for orth in _WHOLE.split() + [f"{c}." for c in "abcdefghijklmnopqrstuvwxyz"]}


_SPECIALS = _english_exceptions()
