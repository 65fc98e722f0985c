"""Near-duplicate detection: MinHash LSH over word 5-grams on `rensa` (Rust), deterministic.

Why this shape:
- Shingles are word n-grams of the normalised text (`dedup.normalise`), so case, punctuation and
  spacing edits do not hide a copy.
- Bands and rows come from the recipe's Jaccard threshold by the same rule as datasketch's
  `MinHashLSH` (minimise the weighted false-positive + false-negative areas of the S-curve), limited
  to divisors of `num_perm` because rensa's index needs equal bands.
- LSH only proposes candidates. With `verify` each candidate pair's *true* Jaccard of the shingle
  sets is checked against the threshold, so precision does not depend on sketch noise.
- Clusters are the connected components of the verified pairs; in each one the smallest id stays
  and every other member is dropped with the id it duplicates. Input order never matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from verticalft.curation.dedup import Duplicate, normalise


@dataclass(frozen=True)
class NearDedupConfig:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 42
    verify: bool = True


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text; a text shorter than n words is one shingle."""
    ws = normalise(text).split()
    if len(ws) <= n:
        return {" ".join(ws)}
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def _integrate(f, a: float, b: float, steps: int = 200) -> float:
    h = (b - a) / steps
    return sum(f(a + (i + 0.5) * h) for i in range(steps)) * h


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising fp_weight·FP + (1-fp_weight)·FN, as datasketch does, bands | num_perm."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"near-dedup threshold must be in (0, 1), got {threshold}")
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        if num_perm % b:
            continue
        r = num_perm // b
        fp = _integrate(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)
        fn = _integrate(lambda s, b=b, r=r: (1 - s**r) ** b, threshold, 1.0)
        err = fp_weight * fp + (1 - fp_weight) * fn
        if err < best_err:
            best, best_err = (b, r), err
    return best


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(
    records: Sequence[tuple[str, str]], config: NearDedupConfig = NearDedupConfig()
) -> list[Duplicate]:
    """(id, text) pairs → the records to drop, each with the id that stays for its cluster."""
    import rensa

    ordered = sorted(records, key=lambda r: r[0])
    sets = [shingles(text, config.ngram) for _, text in ordered]
    bands, _ = optimal_bands(config.threshold, config.num_perm)
    hashes = rensa.RMinHash.from_token_sets([sorted(s) for s in sets], config.num_perm, config.seed)
    index = rensa.RMinHashLSH(config.threshold, config.num_perm, bands)
    index.insert_many(hashes)
    parent = list(range(len(ordered)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, candidates in enumerate(index.query_all(hashes)):
        for j in candidates:
            if j <= i:
                continue
            if config.verify and jaccard(sets[i], sets[j]) < config.threshold:
                continue
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)  # the root is always the smallest index = id
    return [Duplicate(ordered[i][0], ordered[find(i)][0]) for i in range(len(ordered)) if find(i) != i]
