"""Our document filters vs datatrove's on one corpus: speed and whether they drop the same documents.

    .venv/bin/python benchmarks/bench_filters.py [--docs 20000] [--rounds 3]

The chain on both sides is Gopher quality -> Gopher repetition -> FineWeb quality with the web
defaults, stopping at the first rule a document breaks (its reason is the chain's answer):
- ours: `quality.gopher_quality`, `repetition.gopher_repetition`, `fineweb.fineweb_quality` on the
  text (default `GopherRules`, `RepetitionRules`, `FineWebRules`);
- datatrove 0.10.1: `GopherQualityFilter().filter(doc)`, `GopherRepetitionFilter().filter(doc)`,
  `FineWebQualityFilter().filter(doc)` called directly on prebuilt `Document`s, in process, no
  pipeline executor. Its English word tokenizer is spaCy's (`spacy.blank("en")`), which needs
  `spacy` installed next to datatrove; it is loaded by an untimed warm-up call.

The corpus is built deterministically (seeded). About 80% is ordinary domain text made from the
committed samples (data_pipelines/{finance,real_estate}/sample/corpus.jsonl and
general/sample/replay.jsonl, every digit re-drawn): their documents as they are, prose recombined
from their sentences (one paragraph, several paragraphs, or a sentence per line), and filing
excerpts shaped like `data_pipelines/finance/edgar.py` output (MD&A prose around a `| a | b |`
table). The other 20% are synthetic web pages built to trip each rule: repeated lines and
paragraphs, keyword stuffing, boilerplate-recycled paragraphs, navigation menus, bullet and dash
lists, hashtag and ellipsis spam, unpunctuated lines, number dumps, stop-word-free lists, long
tokens, very short and (twice) over-long documents.

Each round times the chains over every document, single process, interleaved (datatrove, ours,
ours with the chunk cache emptied before every document, then again); medians are reported. Our
caches (per chunk in the tokenizer, per text for the three filters) are emptied at the start of
each of our rounds, so every round starts cold; the per-document variant is the floor for a corpus
whose vocabulary never repeats. The word tokenizer alone is timed once afterwards (spaCy through
datatrove's `split_into_words`, ours through `english_words.words`). Agreement is per document: keep/drop,
and same first reason. Writes benchmarks/results/filters.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from verticalft.curation import english_words, fineweb, quality, repetition  # noqa: E402

SEED = 20261123
SOURCES = [
    "data_pipelines/finance/sample/corpus.jsonl",
    "data_pipelines/real_estate/sample/corpus.jsonl",
    "data_pipelines/general/sample/replay.jsonl",
]
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")
_DIGIT = re.compile(r"\d")
WEB_WORDS = [
    "best", "cheap", "online", "deals", "free", "shipping", "buy", "now", "click", "here", "top", "rated",
    "review", "hot", "new", "sale", "discount", "offer", "limited", "time", "only", "great", "price", "home",
    "garden", "kitchen", "travel", "hotel", "flight", "car", "loan", "insurance", "credit", "card", "casino",
    "bonus", "win", "prize", "download", "app", "video", "music", "photo", "news", "sports", "weather",
]  # fmt: skip


# ---------------------------------------------------------------- corpus
def load_samples() -> tuple[list[str], list[str]]:
    """(documents, distinct sentences and lines) of the committed sample texts."""
    docs, seen = [], {}
    for rel in SOURCES:
        for line in (ROOT / rel).read_text().splitlines():
            text = json.loads(line)["text"]
            docs.append(text)
            for s in _SENTENCE_END.split(text):
                if len(s.split()) >= 3:
                    seen.setdefault(s.strip(), None)
    return docs, list(seen)


def _redraw(s: str, rng: random.Random) -> str:
    return _DIGIT.sub(lambda _: str(rng.randrange(10)), s)


ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER = re.compile(r"\$?\d[\d,]*(?:\.\d+)?")


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + (f" {ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{ONES[n // 100]} hundred" + (f" {number_words(n % 100)}" if n % 100 else "")
    return f"{number_words(n // 1000)} thousand" + (f" {number_words(n % 1000)}" if n % 1000 else "")


def _spell_numbers(s: str, rng: random.Random) -> str:
    """Most figures written out ("$457.0" -> "four hundred fifty seven dollars"): prose, not a table."""

    def spell(m: re.Match) -> str:
        if rng.random() < 0.15:
            return m.group()
        words = number_words(int(float(m.group().lstrip("$").replace(",", ""))) % 1_000_000)
        return words + " dollars" if m.group().startswith("$") else words

    return _NUMBER.sub(spell, s)


def _sentences(pool: Sequence[str], rng: random.Random, words: int, spell: bool = False) -> list[str]:
    out, n = [], 0
    while n < words:
        s = _redraw(rng.choice(pool), rng)
        s = _spell_numbers(s, rng) if spell else s
        out.append(s)
        n += len(s.split())
    return out


def prose(pool: Sequence[str], rng: random.Random) -> str:
    """Recombined sample sentences, figures mostly spelled out: one paragraph, paragraphs, or lines."""
    sents = _sentences(pool, rng, int(rng.triangular(30, 700, 180)), spell=True)
    shape = rng.random()
    if shape < 0.5:
        return " ".join(sents)
    if shape < 0.8:
        paras, i = [], 0
        while i < len(sents):
            k = rng.randint(2, 6)
            paras.append(" ".join(sents[i : i + k]))
            i += k
        return "\n\n".join(paras)
    return "\n".join(sents)


def filing(pool: Sequence[str], rng: random.Random) -> str:
    """An MD&A-like excerpt: heading, prose, a `| label | 2024 | 2023 |` table, more prose."""
    rows = [
        "Net revenue", "Cost of revenue", "Gross profit", "Research and development",
        "Selling, general and administrative", "Operating income", "Interest expense", "Net income",
        "Diluted earnings per share", "Total assets", "Total liabilities", "Cash and cash equivalents",
    ]  # fmt: skip
    year = rng.randint(2015, 2025)
    table = [
        "| Consolidated Results of Operations (in millions) |  |  | ",
        f"|  | {year} | {year - 1} | ",
    ] + [
        f"| {label} | ${rng.uniform(10, 5000):,.1f} | ${rng.uniform(10, 5000):,.1f} | "
        for label in rng.sample(rows, rng.randint(4, len(rows)))
    ]
    head = rng.choice(["Results of Operations", "Liquidity and Capital Resources", "Overview"])
    before = " ".join(_sentences(pool, rng, rng.randint(40, 200)))
    after = " ".join(_sentences(pool, rng, rng.randint(20, 150)))
    return "\n".join([head, before, "The table below summarizes our results.", *table, after])


TEN_LETTER = [
    "statements", "investment", "operations", "additional", "restricted", "management", "securities",
    "facilities", "employment", "commercial", "properties", "collateral", "settlement", "guarantees",
]  # fmt: skip
SHORT_SENTENCES = (
    "The bank held its rate.", "Our team grew in May.", "Rent rose with demand.", "The firm paid a fee.",
    "Sales fell to a low.", "The fund kept its cash.", "Costs rose and fell.", "We have a new site.",
    "The loan was paid off.", "Its stock fell again.", "They sold the old mill.", "The deal was signed.",
)  # fmt: skip


def web_junk(kind: str, pool: Sequence[str], rng: random.Random) -> str:
    """A synthetic web page meant to break one rule (which one fires first is up to the chain)."""
    w = rng.choice
    s = lambda k: " ".join(_sentences(pool, rng, k, spell=True))  # noqa: E731
    if kind == "repeated_lines":
        line = s(8)
        return "\n".join([s(rng.randint(20, 60)), *[line] * rng.randint(3, 12), s(20)])
    if kind == "repeated_paragraphs":
        para = s(rng.randint(30, 80))
        return "\n\n".join([s(40), para, s(30), para, para])
    if kind == "repeated_long_paragraph":  # few repeats, many characters
        para = s(rng.randint(90, 150))
        return "\n\n".join([s(20), para, s(20), s(20), para])
    if kind == "repeated_long_line":
        line = s(rng.randint(50, 80))
        return "\n".join([s(40), line, s(40), line, s(30)])
    if kind == "keyword_stuffing":
        phrase = " ".join(rng.sample(WEB_WORDS, rng.randint(2, 4)))
        filler = [f"the {phrase} and the {w(WEB_WORDS)} of {phrase} with {w(WEB_WORDS)}" for _ in range(15)]
        return ". ".join(filler) + "."
    if kind in ("phrase_stuffing_3", "phrase_stuffing_4"):  # one 3- or 4-word phrase, ~20% of the text
        phrase = " ".join(rng.sample(TEN_LETTER, int(kind[-1])))
        words = s(rng.randint(150, 300)).split()
        target = rng.uniform(0.19, 0.24)
        k = round(target * len(" ".join(words)) / (len(phrase) - target * (len(phrase) + 1)))
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), phrase)
        return " ".join(words)
    if kind == "recycled_boilerplate":  # long shared n-grams, not whole repeated lines
        chunk = s(rng.randint(12, 30))
        return " ".join(f"{s(rng.randint(3, 12))} {chunk}" for _ in range(rng.randint(3, 6)))
    if kind == "recycled_sentence":  # one passage of 16-30 words twice, 10-14% of the text
        span_len = rng.choice([16, 18, 20, 27, 30])
        words = s(round(span_len / rng.uniform(0.10, 0.14))).split()
        start = rng.randrange(len(words) - span_len)
        pos = rng.randrange(start + span_len, len(words) + 1)
        return " ".join(words[:pos] + words[start : start + span_len] + words[pos:])
    if kind == "menu":
        items = rng.sample(WEB_WORDS, 12)
        return "\n".join([*(i.title() for i in items), s(60), *(i.title() for i in items[:6])])
    if kind == "bullets":
        mark = w(["•", "-", "- ", "• "])
        return "\n".join(f"{mark}{s(rng.randint(4, 14))}" for _ in range(rng.randint(8, 25)))
    if kind == "hashtags":
        return (
            s(60) + " " + " ".join(f"#{w(WEB_WORDS)}{rng.randint(1, 99)}" for _ in range(rng.randint(8, 30)))
        )
    if kind == "end_ellipsis":
        return "\n".join(f"{s(rng.randint(6, 20))[:-1]}..." for _ in range(rng.randint(6, 15)))
    if kind == "inline_ellipsis":
        words = s(rng.randint(60, 150)).split()
        return " ".join(x + ("..." if rng.random() < 0.2 else "") for x in words)
    if kind == "no_punctuation":
        return "\n".join(
            " ".join(rng.sample(WEB_WORDS, 6)) + " the " + " ".join(rng.sample(WEB_WORDS, 5)) + " of"
            for _ in range(rng.randint(8, 20))
        )
    if kind == "number_dump":
        return "the of " + " ".join(f"{rng.uniform(0, 1e5):,.2f}" for _ in range(rng.randint(60, 300)))
    if kind == "no_stop_words":
        return ". ".join(" ".join(rng.sample(WEB_WORDS, 8)) for _ in range(12)) + "."
    if kind == "long_tokens":
        urls = [f"https://example.com/{w(WEB_WORDS)}/{rng.getrandbits(64):x}" for _ in range(60)]
        return "See the list of links and the pages with more: " + " ".join(urls)
    if kind == "short_words":
        return " ".join(
            w(["a", "I", "to", "of", "be", "the", "and", "an", "it", "so", "on", "is"]) for _ in range(80)
        )
    if kind == "short_lines":  # short sentences, one a line
        return "\n".join(rng.sample(SHORT_SENTENCES, rng.randint(10, len(SHORT_SENTENCES))))
    if kind == "one_dup_line":  # one repeated line in otherwise fine prose: FineWeb's char_dup_ratio
        line = s(12)
        return "\n".join([s(80), line, s(80), line, s(60)])
    if kind == "list_lines":  # three ten-letter words a line, few full stops: FineWeb's list_ratio
        n = rng.randint(25, 60)
        lines = [" ".join(rng.sample(TEN_LETTER, 3)) + ("." if i % 7 == 0 else "") for i in range(n)]
        return "\n".join([*dict.fromkeys(lines), "and the"])
    if kind == "very_short":
        return s(rng.randint(2, 12))
    if kind == "whitespace":
        return w(["", " ", "\n\n", "\t \n"])
    raise ValueError(kind)


JUNK_KINDS = [
    "repeated_lines", "repeated_paragraphs", "repeated_long_paragraph", "repeated_long_line",
    "keyword_stuffing", "phrase_stuffing_3", "phrase_stuffing_4", "recycled_boilerplate", "recycled_sentence",
    "menu", "bullets", "hashtags", "end_ellipsis", "inline_ellipsis", "no_punctuation", "number_dump",
    "no_stop_words", "long_tokens", "short_words", "short_lines", "one_dup_line", "list_lines", "very_short",
    "whitespace",
]  # fmt: skip


def build_corpus(n_docs: int, seed: int = SEED) -> tuple[list[str], list[str]]:
    """`n_docs` texts (shuffled) and the kind of each."""
    rng = random.Random(seed)
    samples, pool = load_samples()
    pool = [p for p in pool if p.endswith((".", "?", "!"))]  # sentences, not ledger lines
    docs: list[tuple[str, str]] = []
    n_junk = n_docs // 5
    for i in range(n_junk):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        docs.append((f"web:{kind}", web_junk(kind, pool, rng)))
    while len(docs) < n_docs - 2:
        r = rng.random()
        if r < 0.2:
            docs.append(("sample", _redraw(rng.choice(samples), rng)))
        elif r < 0.87:
            docs.append(("prose", prose(pool, rng)))
        else:
            docs.append(("filing", filing(pool, rng)))
    for _ in range(2):  # over max_doc_words (100,000 words)
        docs.append(("web:over_long", " ".join(_sentences(pool, rng, 101_000))))
    rng.shuffle(docs)
    return [t for _, t in docs], [k for k, _ in docs]


# ---------------------------------------------------------------- the two chains
def our_chain() -> Callable[[str], str | None]:
    rules = (
        (quality.gopher_quality, quality.GopherRules()),
        (repetition.gopher_repetition, repetition.RepetitionRules()),
        (fineweb.fineweb_quality, fineweb.FineWebRules()),
    )

    def run(text: str) -> str | None:
        for fn, r in rules:
            reason = fn(text, r)
            if reason:
                return reason
        return None

    return run


def datatrove_chain() -> Callable[[object], str | None]:
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

    filters = (GopherQualityFilter(), GopherRepetitionFilter(), FineWebQualityFilter())

    def run(doc: object) -> str | None:
        for f in filters:
            res = f.filter(doc)
            if res is not True:
                return res[1] if isinstance(res, tuple) else "dropped"
        return None

    return run


def reset_our_caches() -> None:
    english_words._CHUNKS.clear()
    english_words.tokens.cache_clear()


def timed(fn: Callable[[], list]) -> tuple[float, float, list]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default="benchmarks/results/filters.json")
    a = parser.parse_args()

    from datatrove.data import Document
    from datatrove.utils.text import split_into_words

    t0 = time.perf_counter()
    texts, kinds = build_corpus(a.docs, a.seed)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    words = sorted(len(t.split()) for t in texts)
    chunks = Counter(c for t in texts for c in t.split())
    print(f"corpus: {len(texts)} docs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    ours, theirs = our_chain(), datatrove_chain()
    theirs(Document(text="Warm up the spaCy tokenizer, once. " * 20, id="w"))  # loads spacy.blank("en")
    ours("Warm up our rule tables, once. " * 20)
    runs: dict[str, Callable[[], list]] = {
        "datatrove": lambda: [theirs(d) for d in docs],
        "ours": lambda: (reset_our_caches(), [ours(t) for t in texts])[1],
        # Worst case for our tokenizer: its chunk cache emptied before every document, so nothing
        # learnt on one document helps the next (as if every document were in new vocabulary).
        "ours_cache_per_doc": lambda: [(english_words._CHUNKS.clear(), ours(t))[1] for t in texts],
    }
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list] = {}
    for r in range(a.rounds):
        for name, fn in runs.items():
            wall, cpu, out = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
            assert out == outputs.get(name, out) == outputs.get("ours", out), f"{name} changed"
            outputs[name] = out
            print(f"round {r}: {name} {wall:.1f}s ({len(texts) / wall:,.0f} docs/s)", file=sys.stderr)

    # Where the time goes: the word tokenizer alone (datatrove's split_into_words = spaCy; ours cold).
    reset_our_caches()
    tok_wall = {}
    t = time.perf_counter()
    spacy_tokens = [split_into_words(x) for x in texts]
    tok_wall["datatrove"] = time.perf_counter() - t
    t = time.perf_counter()
    our_tokens = [english_words.words(x) for x in texts]
    tok_wall["ours"] = time.perf_counter() - t
    token_agreement = sum(x == y for x, y in zip(spacy_tokens, our_tokens, strict=True)) / len(texts)

    theirs_out, ours_out = outputs["datatrove"], outputs["ours"]
    n = len(texts)
    same_keep = sum((x is None) == (y is None) for x, y in zip(theirs_out, ours_out, strict=True))
    same_reason = sum(x == y for x, y in zip(theirs_out, ours_out, strict=True))
    disagreements = Counter((str(x), str(y)) for x, y in zip(theirs_out, ours_out, strict=True) if x != y)
    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "versions": {"datatrove": _version("datatrove"), "spacy": _version("spacy")},
        "rounds": a.rounds,
        "corpus": {
            "docs": n,
            "seed": a.seed,
            "kinds": dict(sorted(Counter(kinds).items())),
            "words_per_doc_p5_p50_p95_max": [words[n * q // 100] for q in (5, 50, 95)] + [words[-1]],
            "total_words": sum(words),
            "distinct_whitespace_chunks": len(chunks),
        },
        "wall_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpus.items()},
        "docs_per_s_median": {k: round(n / v, 1) for k, v in med.items()},
        "speed_ratio_over_datatrove": {
            k: round(med["datatrove"] / v, 2) for k, v in med.items() if k != "datatrove"
        },
        "tokenizer_only_wall_s": {k: round(v, 3) for k, v in tok_wall.items()},
        "tokenizer_identical_docs": round(token_agreement, 5),
        "agreement": {
            "keep_drop": round(same_keep / n, 5),
            "same_reason": round(same_reason / n, 5),
            "kept": {"datatrove": theirs_out.count(None), "ours": ours_out.count(None)},
            "disagreements_datatrove_vs_ours": [[x, y, c] for (x, y), c in disagreements.most_common()],
        },
        "reasons": {
            "datatrove": dict(Counter(map(str, theirs_out)).most_common()),
            "ours": dict(Counter(map(str, ours_out)).most_common()),
        },
        "datatrove_reasons_by_kind": {
            k: dict(Counter(str(x) for x, kk in zip(theirs_out, kinds, strict=True) if kk == k).most_common())
            for k in sorted(set(kinds))
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), file=sys.stderr)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
