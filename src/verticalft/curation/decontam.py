"""Decontamination: a training record that contains an eval item is dropped or flagged, and the eval
item it matched is named.

Matching is on word n-grams (13 by default, as in GPT-3 and the Llama papers). Domain tasks are
templated ("… what was operating income, in $ millions?", a standard lease clause), so a single
shared 13-gram is usually the template, not the item. An eval item therefore counts as contained
in a training text when at least `min_overlap` of *its* n-grams occur there (0.5 by default, the
overlap-ratio rule of open-instruct's decontamination); `min_overlap=0` gives the strict
any-shared-n-gram rule. Items shorter than n words are matched as one whole n-gram.

Templated domains need one more rule: an n-gram that occurs in many training documents is the
domain's standard wording (a lease-clause template, a filing heading), not a leaked test item.
`without_common(doc_freq, max_docs)` removes such n-grams from the index (the doc frequencies
come from a counting pass over the training data, `doc_frequency`), so an item is matched on
its own distinctive n-grams; an item made only of standard wording cannot be matched at all and
is reported as such (`unmatchable`).

The eval side is indexed once (`EvalIndex`); each training text is then one pass of dict lookups,
so the check is pure and cheap enough to run inside every worker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from verticalft.curation.dedup import lowercase_words


def ngrams(text: str, n: int) -> set[str]:
    ws = lowercase_words(text).split()
    if len(ws) < n:
        return {" ".join(ws)} if ws else set()
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


@dataclass(frozen=True)
class Contamination:
    eval_id: str
    overlap: float  # share of the eval item's n-grams found in the training text
    ngram: str  # one shared n-gram, for the audit trail


@dataclass(frozen=True)
class EvalIndex:
    n: int
    min_overlap: float
    grams: dict[str, tuple[str, ...]]  # n-gram → ids of the eval items that contain it
    sizes: dict[str, int]  # eval id → its number of distinct n-grams

    @classmethod
    def build(cls, items: Iterable[tuple[str, str]], n: int = 13, min_overlap: float = 0.5) -> EvalIndex:
        grams: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for item_id, text in items:
            own = ngrams(text, n)
            sizes[item_id] = len(own)
            for g in own:
                grams.setdefault(g, []).append(item_id)
        return cls(n, min_overlap, {g: tuple(ids) for g, ids in grams.items()}, sizes)

    def match(self, text: str) -> Contamination | None:
        """The eval item `text` contains best (highest overlap, then smallest id), or None."""
        hits: Counter[str] = Counter()
        example: dict[str, str] = {}
        for g in ngrams(text, self.n):
            for item_id in self.grams.get(g, ()):
                hits[item_id] += 1
                # The alphabetically first shared n-gram: a set's order changes from process to
                # process (string hashing is salted), the audit trail must not.
                if g < example.get(item_id, "\U0010ffff"):
                    example[item_id] = g
        best: Contamination | None = None
        for item_id, count in sorted(hits.items()):
            overlap = count / self.sizes[item_id]
            if overlap >= self.min_overlap and overlap > 0 and (best is None or overlap > best.overlap):
                best = Contamination(item_id, overlap, example[item_id])
        return best

    def doc_frequency(self, texts: Iterable[str]) -> Counter[str]:
        """In how many of `texts` each indexed n-gram occurs (counted once per text)."""
        freq: Counter[str] = Counter()
        for text in texts:
            freq.update(g for g in ngrams(text, self.n) if g in self.grams)
        return freq

    def without_common(self, doc_freq: Counter[str], max_docs: int | None) -> EvalIndex:
        """The index minus n-grams found in more than `max_docs` training documents."""
        if max_docs is None:
            return self
        grams = {g: ids for g, ids in self.grams.items() if doc_freq.get(g, 0) <= max_docs}
        sizes = dict.fromkeys(self.sizes, 0)
        for ids in grams.values():
            for item_id in ids:
                sizes[item_id] += 1
        return EvalIndex(self.n, self.min_overlap, grams, sizes)

    @property
    def unmatchable(self) -> list[str]:
        """Eval items with no distinctive n-gram left (entirely standard wording)."""
        return sorted(i for i, size in self.sizes.items() if size == 0)
