import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sample_helpers import DOMAINS, rows

from verticalft.curation.dedup import Duplicate, lowercase_words
from verticalft.curation.near_dedup import (
    VERIFY_FP_WEIGHT,
    NearDedupConfig,
    _normalised_bytes,
    _shingle_hashes,
    jaccard,
    near_duplicates,
    optimal_bands,
    shingles,
)

VOCAB = sorted({"".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=7)) for i in range(4000)})


def prose(seed: int, words: int = 300) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=words)


def substitute(words: list[str], positions: list[int], seed: int) -> list[str]:
    out, rng = list(words), random.Random(seed)
    for p in positions:
        out[p] = rng.choice(VOCAB)
    return out


def text(words: list[str]) -> str:
    return " ".join(words)


# ---------------------------------------------------------------- band choice
# datasketch 2.0.0's MinHashLSH._optimal_param(t, n, 0.5, 0.5), computed once; in each of these it
# picks b·r = num_perm, so ours (restricted to divisors) must agree.
DATASKETCH_DIVISOR_CHOICES = {
    (0.3, 256): (64, 4),
    (0.5, 32): (8, 4),
    (0.6, 256): (32, 8),
    (0.7, 64): (8, 8),
    (0.85, 128): (8, 16),
    (0.95, 64): (2, 32),
}


@pytest.mark.parametrize(("threshold", "num_perm"), list(DATASKETCH_DIVISOR_CHOICES))
def test_optimal_bands_agrees_with_datasketch_when_its_choice_divides_num_perm(threshold, num_perm):
    assert optimal_bands(threshold, num_perm) == DATASKETCH_DIVISOR_CHOICES[threshold, num_perm]


def test_optimal_bands_default_setting_is_the_best_divisor_pair():
    # datasketch picks (9, 13) for 0.8/128, which rensa cannot index (13·9 ≠ 128): ours is (8, 16),
    # and with verification (false positives cost one Jaccard) the recall-leaning (16, 8).
    assert optimal_bands(0.8, 128) == (8, 16)
    assert optimal_bands(0.8, 128, VERIFY_FP_WEIGHT) == (16, 8)
    for t in (0.2, 0.5, 0.8, 0.95):
        for n in (16, 64, 128, 250):
            b, r = optimal_bands(t, n)
            assert b * r == n


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_invalid_threshold_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        optimal_bands(threshold, 128)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates([("a", "x"), ("b", "y")], NearDedupConfig(threshold=threshold))


# ---------------------------------------------------------------- behaviour
# Without verification the bands are datasketch's (8 of 16 rows), which catch a pair at Jaccard 0.9
# only 4 times in 5; that run gets a lighter edit (1 word: Jaccard ≈ 0.97, caught 99.9% of the time).
@pytest.mark.parametrize(("verify", "edits"), [(True, [40, 140, 250]), (False, [140])])
def test_edited_copy_is_found_and_the_smaller_id_kept_in_any_order(verify, edits):
    original = prose(1)
    copy = substitute(original, edits, seed=2)  # a few of 300 words changed
    assert 0.85 < jaccard(shingles(text(original)), shingles(text(copy))) < 1.0
    others = [(f"other-{i:02d}", text(prose(100 + i))) for i in range(30)]
    for orig_id, copy_id in (("doc-a", "doc-b"), ("doc-b", "doc-a")):
        recs = [(orig_id, text(original)), (copy_id, text(copy)), *others]
        expected = [Duplicate("doc-b", "doc-a")]
        for seed in range(5):
            random.Random(seed).shuffle(recs)
            assert near_duplicates(recs, NearDedupConfig(verify=verify)) == expected


@pytest.mark.parametrize("verify", [True, False])
def test_unrelated_documents_are_not_flagged(verify):
    recs = [(f"d{i:03d}", text(prose(i, words=random.Random(i).randrange(20, 400)))) for i in range(200)]
    assert near_duplicates(recs, NearDedupConfig(verify=verify)) == []


def test_formatting_only_copies_and_short_texts_are_duplicates():
    recs = [
        ("a", "Net revenue rose."),
        ("b", "NET   revenue, rose"),
        ("c", "Net revenue fell."),
        ("d", ""),
        ("e", "  ...  "),
    ]
    assert near_duplicates(recs) == [Duplicate("b", "a"), Duplicate("e", "d")]
    assert near_duplicates([]) == [] and near_duplicates([("a", "x")]) == []


def test_a_chain_clusters_to_its_smallest_id():
    a = prose(7)
    b = substitute(a, [30, 90, 150, 210], seed=8)
    c = substitute(b, [60, 120, 180, 270], seed=9)
    sa, sb, sc = (shingles(text(x)) for x in (a, b, c))
    assert (
        jaccard(sa, sb) >= 0.8 and jaccard(sb, sc) >= 0.8 and jaccard(sa, sc) < 0.8
    )  # a chain, not a clique
    recs = [("C", text(c)), ("A", text(a)), ("B", text(b))]
    assert near_duplicates(recs) == [Duplicate("B", "A"), Duplicate("C", "A")]


def test_verification_removes_candidates_below_the_threshold():
    # At threshold 0.5 both modes use 32 bands of 4 rows, which propose a pair at Jaccard ≈ 0.45 about
    # three times in four: without verification those pairs are dropped, with it none is, while
    # pairs above the threshold still are.
    config = {v: NearDedupConfig(threshold=0.5, verify=v) for v in (False, True)}
    assert optimal_bands(0.5, 128) == optimal_bands(0.5, 128, VERIFY_FP_WEIGHT) == (32, 4)
    below, above = [], []
    for k in range(20):
        base = prose(1000 + k, words=200)
        far = substitute(base, list(range(3, 200, 13)), seed=k)  # every 13th word: Jaccard ≈ 0.44
        near = substitute(base, list(range(3, 200, 30)), seed=k)  # every 30th: ≈ 0.7
        below.append([(f"{k:02d}a", text(base)), (f"{k:02d}b", text(far))])
        above.append([(f"{k:02d}a", text(base)), (f"{k:02d}b", text(near))])
    for pair in below:
        assert 0.4 < jaccard(*(shingles(t) for _, t in pair)) < 0.5
    for pair in above:
        assert 0.6 < jaccard(*(shingles(t) for _, t in pair)) < 0.8
    proposed = [pair for pair in below if near_duplicates(pair, config[False])]
    assert len(proposed) >= 8
    assert all(near_duplicates(pair, config[True]) == [] for pair in below)
    assert all(near_duplicates(pair, config[True]) == [Duplicate(pair[1][0], pair[0][0])] for pair in above)


def test_result_is_the_same_in_a_fresh_process_whatever_the_hash_seed():
    # Shingle hashes must not depend on Python's per-process str hash (PYTHONHASHSEED).
    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from sample_helpers import rows\n"
        "from verticalft.curation.near_dedup import near_duplicates, NearDedupConfig\n"
        "recs = [(r['id'], r['text']) for r in rows('finance', 'corpus.jsonl')]\n"
        "for v in (True, False):\n"
        "    print(sorted((d.id, d.kept) for d in near_duplicates(recs, NearDedupConfig(verify=v))))\n"
    )
    root = Path(__file__).resolve().parents[1]
    outs = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    recs = [(r["id"], r["text"]) for r in rows("finance", "corpus.jsonl")]
    here = "".join(
        f"{sorted((d.id, d.kept) for d in near_duplicates(recs, NearDedupConfig(verify=v)))}\n"
        for v in (True, False)
    )
    assert outs == {here}


# ---------------------------------------------------------------- the fast path is the slow path
TRICKY = [
    "",
    "one",
    "exactly five words in here",
    "A, B! c d e f",
    "x" * 30 + " yy " + "z" * 17 + " " + "w" * 8 + " " + "v" * 9,
    "see https://example.com/" + "a1b2c3d4" * 12 + " and " + "q" * 64 + " " + "q" * 65 + " " + "q" * 300,
    "Ünïcödé naïve café ﬁnancial ½ x² ΣΑΣ İstanbul straße e\u0301 a\u00a0b\u2003c\u2028d",
    "ctrl\x00chars\x1cand\x1fseparators\x7fand_underscores__here",
    "".join(chr(c) for c in range(128)) * 2,
    "Rent: $2,450/month — HOA $280/month… “quoted” ‘text’ – en dash",
]


def test_normalised_bytes_split_like_lowercase_words():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + list("éßİ\u00a0\u2003\u0301ﬁ½²—…“”ΣΑ中文٣")
    texts = TRICKY + ["".join(rng.choices(alphabet, k=rng.randrange(0, 60))) for _ in range(2000)]
    for t in texts:
        assert _normalised_bytes(t).split() == lowercase_words(t).encode().split(), repr(t)


@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_hashed_shingles_are_the_string_shingles(n):
    texts = TRICKY + [r["text"] for d in DOMAINS for r in rows(d, "corpus.jsonl")][:600]
    hashes, offsets = _shingle_hashes(texts, n)
    assert len(offsets) == len(texts) + 1 and offsets[-1] == len(hashes)
    hashed = [set(hashes[offsets[i] : offsets[i + 1]].tolist()) for i in range(len(texts))]
    strings = [shingles(t, n) - {""} for t in texts]  # an empty text: {""} as strings, no hash
    assert [len(s) for s in hashed] == [len(s) for s in strings]
    # two texts share a hash exactly when they share a shingle
    owners_h, owners_s = defaultdict(set), defaultdict(set)
    for i, (h, s) in enumerate(zip(hashed, strings, strict=True)):
        for x in h:
            owners_h[x].add(i)
        for x in s:
            owners_s[x].add(i)
    assert sorted(map(sorted, owners_h.values())) == sorted(map(sorted, owners_s.values()))


def test_hashing_in_blocks_changes_nothing():
    texts = TRICKY + [r["text"] for r in rows("finance", "corpus.jsonl")][:300]
    whole, whole_offsets = _shingle_hashes(texts, 5, block_chars=1 << 30)
    for block in (1, 100, 5000):
        hashes, offsets = _shingle_hashes(texts, 5, block_chars=block)
        assert (hashes == whole).all() and (offsets == whole_offsets).all()


# ---------------------------------------------------------------- committed sample data
def exact_components(recs: list[tuple[str, str]], threshold: float) -> dict[str, str]:
    """Brute-force truth: id → smallest id of its component in the graph of pairs with Jaccard ≥ t."""
    sets = {rid: shingles(t) for rid, t in recs}
    postings = defaultdict(list)
    for rid, s in sets.items():
        for g in s:
            postings[g].append(rid)
    shared = defaultdict(int)
    for ids in postings.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                shared[min(a, b), max(a, b)] += 1
    parent = {rid: rid for rid in sets}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for (a, b), c in shared.items():
        if c / (len(sets[a]) + len(sets[b]) - c) >= threshold:
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
    return {rid: find(rid) for rid in sets if find(rid) != rid}


@pytest.mark.parametrize("domain", DOMAINS)
def test_sample_corpus_drops_exactly_the_true_clusters(domain):
    corpus = rows(domain, "corpus.jsonl")
    recs = [(r["id"], r["text"]) for r in corpus]
    labels = rows(domain, "noise_labels.jsonl")
    kind = {r["id"]: r["kind"] for r in labels}
    dropped = {d.id: d.kept for d in near_duplicates(recs)}

    # With verification the output is exactly the components of the true ≥ 0.8 graph.
    assert dropped == exact_components(recs, 0.8)

    # Every planted near duplicate goes, for its source's cluster (the source, or an older copy).
    planted = {r["id"]: r["detail"] for r in labels if r["kind"] == "near_duplicate"}
    assert len(planted) == 30
    for dup, source in planted.items():
        assert dropped[dup] == dropped.get(source, source)
    # Planted exact duplicates are near duplicates too (the exact step usually takes them first).
    assert all(r["id"] in dropped for r in labels if r["kind"] == "exact_duplicate")

    # Clean documents that go are templated texts that really are ≥ 0.8 similar to an older one:
    # a few finance compliance bulletins differing only in their number and year; none in real estate.
    clean = {i: k for i, k in dropped.items() if i not in kind}
    texts = dict(recs)
    assert len(clean) <= {"finance": 3, "real_estate": 0}[domain]
    for i, k in clean.items():
        assert texts[i].startswith("Compliance bulletin") and texts[k].startswith("Compliance bulletin")
        assert jaccard(shingles(texts[i]), shingles(texts[k])) >= 0.8


@pytest.mark.parametrize("domain", DOMAINS)
def test_sample_corpus_without_verification_shows_what_verification_buys(domain):
    recs = [(r["id"], r["text"]) for r in rows(domain, "corpus.jsonl")]
    texts = dict(recs)
    dropped = {d.id: d.kept for d in near_duplicates(recs, NearDedupConfig(verify=False))}
    truth = exact_components(recs, 0.8)
    # Sketch false positives: a few templated pairs below the threshold merge (two finance texts at
    # Jaccard ≈ 0.65 with the default seed), never anything far from it …
    false = [(i, k) for i, k in dropped.items() if truth.get(i, i) != truth.get(k, k)]
    assert len(false) <= 3
    assert all(0.6 < jaccard(shingles(texts[i]), shingles(texts[k])) < 0.8 for i, k in false)
    # … and false negatives: 8 bands of 16 rows catch a planted copy (Jaccard 0.93–0.98 here) 90–99.9%
    # of the time (29.5 of 30 expected; the default seed happens to give 27 and 28).
    planted = {r["id"] for r in rows(domain, "noise_labels.jsonl") if r["kind"] == "near_duplicate"}
    assert len(planted & dropped.keys()) >= 26
