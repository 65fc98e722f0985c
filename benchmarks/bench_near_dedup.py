"""Our near-dedup (rensa MinHash LSH) vs datasketch on one planted corpus, same shingles and settings.

    .venv/bin/python benchmarks/bench_near_dedup.py [--docs 20000] [--rounds 3]

The corpus is built deterministically (seeded) from the committed sample texts: sentences of
data_pipelines/{finance,real_estate}/sample/corpus.jsonl and general/sample/replay.jsonl are
recombined into distinct base documents (every digit re-drawn, so templated sentences stop being
copies of each other). Then 5% of the documents are planted near-duplicates (a few % of a base's
words substituted, inserted or deleted; true Jaccard of the word 5-gram sets ≥ 0.8) and 2% are
decoys (heavier edits, Jaccard 0.6-0.8), which must stay apart. Ids are shuffled, so a copy may
sort before its original. An exact all-pairs join (prefix filtering, no sketches) checks that the
planted pairs are the whole truth at Jaccard ≥ 0.8.

Runs are timed end to end from raw text (shingling included), single process, one core,
interleaved for `--rounds` rounds, medians of wall and CPU time reported:
- ours: `near_duplicates` with threshold 0.8, num_perm 128, 5-grams, verify on and off;
- datasketch: `shingles()` of every text, `MinHash(num_perm=128)` + `update_batch` on the encoded
  shingles (`MinHash.generator`, which reuses the permutations), `MinHashLSH(threshold=0.8,
  num_perm=128)` filled in an insertion session and queried for every document, then the same
  cluster rule as ours (union-find over candidate pairs, smallest id kept), no verification;
- the Python shingling alone, to show how much of datasketch's time it is.
Quality is scored against the planted clusters (a true cluster = a base document and its copies):
a drop is correct when the dropped document is in a planted cluster and the id it is dropped for
is in the same cluster; recall = correct drops / (cluster size - 1 summed), precision = correct
drops / all drops; merged decoys and recall by Jaccard band are reported too.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # rensa's Rust thread pool: one core, as datasketch

from verticalft.curation.dedup import Duplicate  # noqa: E402
from verticalft.curation.near_dedup import (  # noqa: E402
    VERIFY_FP_WEIGHT,
    NearDedupConfig,
    jaccard,
    near_duplicates,
    optimal_bands,
    shingles,
)

THRESHOLD, NUM_PERM, NGRAM, SEED = 0.8, 128, 5, 20261123
SOURCES = [
    "data_pipelines/finance/sample/corpus.jsonl",
    "data_pipelines/real_estate/sample/corpus.jsonl",
    "data_pipelines/general/sample/replay.jsonl",
]
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")
_DIGIT = re.compile(r"\d")


# ---------------------------------------------------------------- corpus
def sentence_pool() -> list[str]:
    """Distinct sentences/lines of the committed sample texts, the raw material of every document."""
    seen: dict[str, None] = {}
    for rel in SOURCES:
        for line in (ROOT / rel).read_text().splitlines():
            for s in _SENTENCE_END.split(json.loads(line)["text"]):
                if len(s.split()) >= 3:
                    seen.setdefault(s.strip(), None)
    return list(seen)


def _redraw_digits(s: str, rng: random.Random) -> str:
    return _DIGIT.sub(lambda _: str(rng.randrange(10)), s)


def base_document(pool: Sequence[str], rng: random.Random) -> str:
    """One document of 60-450 words: random sentences, digits re-drawn, joined as prose or lines."""
    target = int(rng.triangular(60, 450, 200))
    out, words = [], 0
    while words < target:
        s = _redraw_digits(rng.choice(pool), rng)
        out.append(s)
        words += len(s.split())
    return (" " if rng.random() < 0.7 else "\n").join(out)


def edited_copy(
    text: str, vocab: Sequence[str], rng: random.Random, rate: float, lo: float, hi: float
) -> tuple[str, float, int]:
    """A copy with about `rate` of its words substituted, inserted or deleted, whose true 5-gram
    Jaccard to `text` is in [lo, hi): the edit rate shrinks or grows until it lands there."""
    base = shingles(text, NGRAM)
    while True:
        words = text.split()
        edits = max(1, round(rate * len(words)))
        for _ in range(edits):
            i = rng.randrange(len(words))
            op = rng.random()
            if op < 0.5:
                words[i] = rng.choice(vocab)
            elif op < 0.75:
                words.insert(i, rng.choice(vocab))
            elif len(words) > NGRAM + 1:
                del words[i]
        copy = " ".join(words)
        j = jaccard(base, shingles(copy, NGRAM))
        if lo <= j < hi:
            return copy, j, edits
        rate *= 0.7 if j < lo else 1.3


def build_corpus(n_docs: int, seed: int = SEED) -> tuple[list[tuple[str, str]], dict]:
    """(id, text) records and the planted truth.

    5% of the documents are near-duplicate copies (Jaccard 0.8-1 to their base, a few % of words
    edited) and 2% are decoys: heavier edits (Jaccard 0.6-0.8) of other bases, which must stay, so
    that precision is tested where a sketch can err and not only on unrelated documents.
    """
    rng = random.Random(seed)
    pool = sentence_pool()
    vocab = sorted({w for s in pool for w in s.split() if w.isalpha()})
    n_copies, n_decoys = n_docs // 20, n_docs // 50
    n_base = n_docs - n_copies - n_decoys
    texts = [base_document(pool, rng) for _ in range(n_base)]
    sources, jaccards, edits = [], [], []
    for _ in range(n_copies):
        src = rng.randrange(n_base)  # with replacement: a few bases get two or more copies
        copy, j, m = edited_copy(texts[src], vocab, rng, rng.uniform(0.004, 0.03), THRESHOLD, 1.0)
        texts.append(copy)
        sources.append(src)
        jaccards.append(j)
        edits.append(m)
    unused = sorted(set(range(n_base)) - set(sources))
    decoy_sources = rng.sample(unused, n_decoys)  # bases without copies: decoys stay singletons
    decoy_jaccards = []
    for src in decoy_sources:
        decoy, j, _ = edited_copy(texts[src], vocab, rng, rng.uniform(0.02, 0.06), 0.6, THRESHOLD)
        texts.append(decoy)
        decoy_jaccards.append(j)
    order = list(range(n_docs))
    rng.shuffle(order)  # position in `texts` → rank of its id: copies may sort before their base
    ids = [f"doc-{order[i]:06d}" for i in range(n_docs)]
    clusters: dict[int, list[str]] = {}
    for k, src in enumerate(sources):
        clusters.setdefault(src, [ids[src]]).append(ids[n_base + k])
    first_decoy = n_base + n_copies
    truth = {
        "clusters": sorted(sorted(c) for c in clusters.values()),
        "copy_jaccard": {ids[n_base + k]: jaccards[k] for k in range(n_copies)},
        "copy_source": {ids[n_base + k]: ids[sources[k]] for k in range(n_copies)},
        "copy_edits": edits,
        "decoy_jaccard": {ids[first_decoy + k]: decoy_jaccards[k] for k in range(n_decoys)},
        "decoy_source": {ids[first_decoy + k]: ids[decoy_sources[k]] for k in range(n_decoys)},
        "pool_sentences": len(pool),
    }
    records = sorted(zip(ids, texts, strict=True))
    return records, truth


def exact_pairs(texts: Sequence[str], threshold: float = THRESHOLD) -> list[tuple[int, int, float]]:
    """Every pair of texts with 5-gram Jaccard ≥ threshold, exactly: an all-pairs prefix-filter join.

    Sets are the `shingles` strings (hashed with Python's in-process `hash`; a 64-bit collision would
    only merge two n-grams). Tokens are ordered rarest first; two sets with Jaccard ≥ t share a token
    among the first |A| - ceil(t|A|) + 1 of each, so only those are indexed, then every candidate pair
    is checked exactly. No sketch is involved, so this is the ground truth the planted pairs must match.
    """
    sets = [frozenset(map(hash, shingles(t, NGRAM))) for t in texts]
    freq: dict[int, int] = {}
    for s in sets:
        for x in s:
            freq[x] = freq.get(x, 0) + 1
    postings: dict[int, list[int]] = {}
    candidates: set[tuple[int, int]] = set()
    for i, s in enumerate(sets):
        prefix = sorted(s, key=lambda x: (freq[x], x))[: len(s) - math.ceil(threshold * len(s)) + 1]
        for x in prefix:
            seen = postings.setdefault(x, [])
            candidates.update((j, i) for j in seen)
            seen.append(i)
    out = []
    for i, j in sorted(candidates):
        sim = jaccard(sets[i], sets[j])
        if sim >= threshold:
            out.append((i, j, sim))
    return out


# ---------------------------------------------------------------- the two implementations
def clusters_to_drops(n: int, pairs: Callable[[], object], ids: Sequence[str]) -> list[Duplicate]:
    """Connected components of the candidate pairs, smallest position (= smallest id) kept: our rule."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [Duplicate(ids[i], ids[find(i)]) for i in range(n) if find(i) != i]


def run_datasketch(records: Sequence[tuple[str, str]]) -> list[Duplicate]:
    """datasketch the way its docs show it: MinHash + update_batch on encoded shingles, MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    ordered = sorted(records)
    ids = [rid for rid, _ in ordered]
    # `MinHash.generator` = MinHash(num_perm=128) once, then copy + update_batch per document: the
    # documented way to skip re-drawing the permutations for every document (the fair baseline).
    sketches = list(
        MinHash.generator(([s.encode() for s in shingles(t, NGRAM)] for _, t in ordered), num_perm=NUM_PERM)
    )
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sketches):
            session.insert(i, m)

    def pairs():
        for i, m in enumerate(sketches):
            for j in lsh.query(m):
                if j > i:
                    yield i, j

    return clusters_to_drops(len(ordered), pairs, ids)


def run_ours(records: Sequence[tuple[str, str]], verify: bool) -> list[Duplicate]:
    return near_duplicates(records, NearDedupConfig(THRESHOLD, NUM_PERM, NGRAM, verify=verify))


def python_shingling(records: Sequence[tuple[str, str]]) -> list[Duplicate]:
    """Only the datasketch run's first step (`shingles` + encode), which ours replaces with numpy."""
    for _, t in records:
        [s.encode() for s in shingles(t, NGRAM)]
    return []


# ---------------------------------------------------------------- scoring
def score(drops: Sequence[Duplicate], truth: dict, texts: dict[str, str]) -> dict:
    """Recall/precision against the planted clusters, per-copy recall by Jaccard band, wrong drops."""
    cluster_of = {i: c for c, members in enumerate(truth["clusters"]) for i in members}
    dropped = {d.id: d.kept for d in drops}
    correct = sum(1 for i, k in dropped.items() if i in cluster_of and cluster_of.get(k) == cluster_of[i])
    expected = sum(len(c) - 1 for c in truth["clusters"])
    root = {i: dropped.get(i, i) for i in texts}
    bands = [(0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0)]
    by_band = {}
    for lo, hi in bands:
        copies = [c for c, j in truth["copy_jaccard"].items() if lo <= j < hi]
        joined = sum(root[c] == root[truth["copy_source"][c]] for c in copies)
        by_band[f"{lo:.2f}-{hi:.2f}"] = {"copies": len(copies), "joined_to_source": joined}
    wrong = [
        (i, k) for i, k in dropped.items() if not (i in cluster_of and cluster_of.get(k) == cluster_of[i])
    ]
    wrong_j = [jaccard(shingles(texts[i], NGRAM), shingles(texts[k], NGRAM)) for i, k in wrong]
    decoy_pairs = truth["decoy_source"].items()
    return {
        "drops": len(dropped),
        "decoys_merged_with_their_base": sum(root[d] == root[src] for d, src in decoy_pairs),
        "correct_drops": correct,
        "expected_drops": expected,
        "recall": round(correct / expected, 4) if expected else 1.0,
        "precision": round(correct / len(dropped), 4) if dropped else 1.0,
        "pair_recall_by_jaccard": by_band,
        "wrong_drops": len(wrong),
        "wrong_drops_true_jaccard_ge_threshold": sum(j >= THRESHOLD for j in wrong_j),
        "wrong_drops_max_true_jaccard": round(max(wrong_j), 4) if wrong_j else None,
    }


def timed(fn: Callable[[], list[Duplicate]]) -> tuple[float, float, list[Duplicate]]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/near_dedup.json"))
    a = parser.parse_args()

    t0 = time.perf_counter()
    records, truth = build_corpus(a.docs, a.seed)
    texts = dict(records)
    words = sorted(len(t.split()) for t in texts.values())
    cj = sorted(truth["copy_jaccard"].values())
    print(f"corpus: {len(records)} docs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    t0 = time.perf_counter()
    ids = [rid for rid, _ in records]
    exact = exact_pairs([t for _, t in records])
    cluster_of = {i: c for c, members in enumerate(truth["clusters"]) for i in members}
    planted_pairs = {
        (ids[i], ids[j]) for i, j, _ in exact if cluster_of.get(ids[i], -1) == cluster_of.get(ids[j], -2)
    }
    unplanted = [(ids[i], ids[j], round(s, 4)) for i, j, s in exact if (ids[i], ids[j]) not in planted_pairs]
    copy_pairs = {tuple(sorted((c, s))) for c, s in truth["copy_source"].items()}
    print(f"exact join: {len(exact)} pairs ≥ {THRESHOLD} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    runs: dict[str, Callable[[], list[Duplicate]]] = {
        "datasketch": lambda: run_datasketch(records),
        "ours_verify": lambda: run_ours(records, True),
        "ours_no_verify": lambda: run_ours(records, False),
        "python_shingling_only": lambda: python_shingling(records),
    }
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, list[Duplicate]] = {}
    for r in range(a.rounds):
        for name, fn in runs.items():
            wall, cpu, out = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
            if name in outputs:
                assert out == outputs[name], f"{name} changed between rounds"
            outputs[name] = out
            print(f"round {r}: {name} {wall:.2f}s ({len(records) / wall:,.0f} docs/s)", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in walls.items()}
    from datasketch import MinHashLSH

    ds_lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    timed_runs = ("datasketch", "ours_verify", "ours_no_verify")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.python_implementation()} "
        f"{platform.python_version()}, RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}",
        "versions": {m: importlib.metadata.version(m) for m in ("rensa", "datasketch", "numpy")},
        "settings": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "seed": a.seed},
        "rounds": a.rounds,
        "corpus": {
            "docs": len(records),
            "planted_copies": len(truth["copy_jaccard"]),
            "planted_clusters": len(truth["clusters"]),
            "largest_cluster": max(len(c) for c in truth["clusters"]),
            "words_per_doc_p5_p50_p95": [words[len(words) * q // 100] for q in (5, 50, 95)],
            "non_ascii_docs": sum(not t.isascii() for t in texts.values()),
            "sentence_pool": truth["pool_sentences"],
            "copy_jaccard_min_p25_p50_p75_max": [
                round(cj[int((len(cj) - 1) * q)], 4) for q in (0, 0.25, 0.5, 0.75, 1)
            ],
            "decoys": len(truth["decoy_jaccard"]),
            "decoy_jaccard_min_p50_max": [
                round(x, 4)
                for x in (
                    min(truth["decoy_jaccard"].values()),
                    statistics.median(truth["decoy_jaccard"].values()),
                    max(truth["decoy_jaccard"].values()),
                )
            ],
            "copy_edits_min_median_max": [
                min(truth["copy_edits"]),
                int(statistics.median(truth["copy_edits"])),
                max(truth["copy_edits"]),
            ],
            "exact_pairs_ge_threshold": len(exact),
            "exact_pairs_planted_copy_to_source": len(planted_pairs & copy_pairs),
            "exact_pairs_within_planted_clusters": len(planted_pairs),
            "exact_pairs_outside_planted_clusters": unplanted[:20],
        },
        "bands_rows": {
            "datasketch": [ds_lsh.b, ds_lsh.r],
            "ours_verify": list(optimal_bands(THRESHOLD, NUM_PERM, VERIFY_FP_WEIGHT)),
            "ours_no_verify": list(optimal_bands(THRESHOLD, NUM_PERM)),
        },
        "wall_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpus.items()},
        "docs_per_s_median": {k: round(len(records) / v, 1) for k, v in med.items()},
        "speed_ratio_vs_datasketch": {k: round(med["datasketch"] / med[k], 2) for k in timed_runs[1:]},
        "cpu_time_ratio_vs_datasketch": {
            k: round(cpu_med["datasketch"] / cpu_med[k], 2) for k in timed_runs[1:]
        },
        "speed_ratio_vs_datasketch_minus_its_shingling": {
            k: round((med["datasketch"] - med["python_shingling_only"]) / med[k], 2) for k in timed_runs[1:]
        },
        "quality": {k: score(outputs[k], truth, texts) for k in timed_runs},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
