"""Near-duplicate detection: MinHash LSH over word 5-grams on `rensa` (Rust), deterministic.

Why this shape:
- Shingles are word n-grams of the normalised text (`dedup.lowercase_words`), so case, punctuation and
  spacing edits do not hide a copy. `shingles` gives them as strings (to read, to explain a drop);
  `near_duplicates` works on 64-bit hashes of the same n-grams, built a block of texts at a time
  with numpy and no Python object per word (`_block_shingle_hashes`), because per-n-gram Python
  strings cost more than everything else together (on the benchmark, 8x our whole run). The
  Jaccard of two hash sets equals that of the string sets unless two n-grams collide in 64 bits.
- Bands and rows come from the recipe's Jaccard threshold by the same rule as datasketch's
  `MinHashLSH` (minimise the weighted false-positive + false-negative areas of the S-curve), limited
  to divisors of `num_perm` because rensa's index needs equal bands. With `verify` a false positive
  costs one exact Jaccard while a false negative is a copy left in the training data, so the
  false-positive weight drops to `VERIFY_FP_WEIGHT` (threshold 0.8, 128 permutations: 16 bands of
  8 rows, 95% recall at Jaccard 0.8, instead of 8 of 16 rows, 20%).
- LSH only proposes candidates. With `verify` each candidate pair's *true* Jaccard of the shingle
  sets is checked against the threshold, so precision does not depend on sketch noise.
- Clusters are the connected components of the (verified) candidate pairs; in each one the smallest
  id stays and every other member is dropped with the id it duplicates. Input order never matters,
  and a document's sketch depends on its text alone (stable hashes, fixed seed), not on the corpus.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass

from verticalft.curation.dedup import Duplicate, lowercase_words
from verticalft.curation.union_find import UnionFind

VERIFY_FP_WEIGHT = 0.1  # false-positive weight of the band choice when candidates are verified


@dataclass(frozen=True)
class NearDedupConfig:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 42
    verify: bool = True


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text; a text shorter than n words is one shingle."""
    ws = lowercase_words(text).split()
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


def jaccard(a: Set, b: Set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets), without building the union."""
    if not a and not b:
        return 1.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


# ---------------------------------------------------------------- hashed shingles, whole corpus
# ASCII text: `lowercase_words` is lower-casing plus "every non-word character is a separator", which one
# bytes.translate does at C speed (NFKC leaves ASCII alone). Other text goes through `lowercase_words`.
_ASCII_WORDS = bytes(
    c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 or c == 95 else 32 for c in range(128)
) + bytes(range(128, 256))
_NON_WORD: dict[str, bool] = {}  # non-ASCII character → is it a separator (cache)
_MIX = 0xBF58476D1CE4E5B9  # splitmix64's first multiplier
_BLOCK_CHARS = 1 << 19  # characters hashed and sketched per block (about 300 documents)
_LONG_WORD = 64  # bytes; longer words are hashed with blake2b, not 8 bytes per numpy round
_K_CHUNK, _K_GRAM, _K_SHORT = (
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x27D4EB2F165667C5,
)


def _fold(x):
    """Multiply + xor-shift on a uint64 array, in place: cheap non-linear scrambling of hash keys.

    rensa re-hashes every token per permutation, so this only has to keep distinct keys distinct
    and break the linearity of the n-gram polynomial; sketches of folded and of fully mixed
    (splitmix64) keys estimated Jaccard equally well on the benchmark corpus.
    """
    import numpy as np

    x *= np.uint64(_MIX)
    x ^= x >> np.uint64(29)
    return x


def _normalised_bytes(text: str) -> bytes:
    """`lowercase_words(text).encode()` up to runs of spaces, which only separate words anyway.

    `lowercase_words` runs two Unicode regexes; here ASCII text is one bytes.translate, and other text is
    NFKC + lower (as `lowercase_words`) with each distinct non-word character replaced by a space, then
    the same translate for the ASCII ones.
    """
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS)
    s = unicodedata.normalize("NFKC", text).lower()
    for c in set(s):
        if c > "\x7f":
            sep = _NON_WORD.get(c)
            if sep is None:  # `re`'s \w: str.isalnum() or "_"; everything else separates words
                sep = _NON_WORD[c] = not (c.isalnum() or c == "_")
            if sep:
                s = s.replace(c, " ")
    return s.encode().translate(_ASCII_WORDS)


def _blocks(texts: Sequence[str], block_chars: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of consecutive texts of about `block_chars` characters (at least one text).

    Hashing and sketching a block at a time keeps numpy's temporaries in cache and in memory the
    allocator already holds: half the time of one pass over a whole corpus of 20,000 documents.
    """
    lo = 0
    while lo < len(texts):
        hi, size = lo, 0
        while hi < len(texts) and (hi == lo or size < block_chars):
            size += len(texts[hi])
            hi += 1
        yield lo, hi
        lo = hi


def _shingle_hashes(texts: Sequence[str], n: int, block_chars: int = _BLOCK_CHARS):
    """Every text's word n-grams as 64-bit hashes: (flat uint64 array, uint64 row offsets, len+1).

    What `near_duplicates` computes block by block, in one piece (the tests compare it with
    `shingles`)."""
    import numpy as np

    pieces, offsets, done = [np.zeros(0, dtype=np.uint64)], [np.zeros(1, dtype=np.uint64)], 0
    for lo, hi in _blocks(texts, block_chars):
        grams, first = _block_shingle_hashes(texts[lo:hi], n)
        pieces.append(grams)
        offsets.append(first[1:] + np.uint64(done))
        done += len(grams)
    return np.concatenate(pieces), np.concatenate(offsets)


def band_shape(config: NearDedupConfig) -> tuple[int, int]:
    """(bands, rows) of the LSH index for `config` (see the module docstring)."""
    return optimal_bands(config.threshold, config.num_perm, VERIFY_FP_WEIGHT if config.verify else 0.5)


def signature_matrix(texts: Sequence[str], config: NearDedupConfig):
    """The MinHash signatures of `texts`, an (n, num_perm) uint32 array, sketched a block at a time.

    A row depends on its text alone, so signatures computed shard by shard equal those of the whole
    corpus (what the sharded global steps rely on)."""
    import numpy as np
    import rensa

    out = np.zeros((len(texts), config.num_perm), dtype=np.uint32)
    for lo, hi in _blocks(texts, _BLOCK_CHARS):
        hashes, offsets = _block_shingle_hashes(texts[lo:hi], config.ngram)
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            hashes, offsets, config.num_perm, config.seed
        )
        out[lo:hi] = np.array(matrix.to_rows(), dtype=np.uint32).reshape(hi - lo, config.num_perm)
    return out


def shingle_hash_sets(texts: Sequence[str], n: int) -> list[frozenset[int]]:
    """Each text's hashed word n-grams as a set: what `verify` compares by exact Jaccard."""
    hashes, offsets = _shingle_hashes(texts, n)
    flat, bounds = hashes.tolist(), offsets.tolist()
    return [frozenset(flat[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]


def _ranges(start, stop):
    """Indices of the concatenated ranges [start[k], stop[k]) (int64 arrays), in order."""
    import numpy as np

    size = stop - start
    before = np.cumsum(size) - size
    return np.repeat(start - before, size) + np.arange(int(size.sum()))


def _longest(starts, lengths):
    """(word number, start, end) of the words over `_LONG_WORD` bytes."""
    import numpy as np

    huge = np.flatnonzero(lengths > _LONG_WORD)
    return zip(huge.tolist(), starts[huge].tolist(), (starts[huge] + lengths[huge]).tolist(), strict=True)


def _block_shingle_hashes(texts: Sequence[str], n: int):
    """`_shingle_hashes` of one block of texts.

    One pass of numpy over the concatenated normalised bytes, no Python object per word or n-gram:
    words are found at space boundaries and hashed 8 bytes at a time; an n-gram is a polynomial of
    its words' hashes, folded. A text's slice may repeat a hash; as a set it is `shingles(text, n)`
    hashed: a text shorter than n words has one hash of all its words, never equal to an n-gram's,
    and an empty text has none (two empty sets still have Jaccard 1, as two {""} do).
    """
    import numpy as np

    joined, starts, lengths, first_word = _word_spans(texts)
    words = _word_hashes(joined, starts, lengths)
    return _ngram_hashes(words, first_word, n), first_word.astype(np.uint64)


def _word_spans(texts: Sequence[str]):
    """(joined, starts, lengths, first_word): the texts normalised and joined into one buffer,
    each preceded by a space and the whole followed by 15 more (so 8-byte reads never run off);
    the start and length of each word in it; and each text's first word number (len + 1 entries:
    text d's words are starts[first_word[d] : first_word[d + 1]])."""
    import numpy as np

    table = _ASCII_WORDS
    parts = [t.encode().translate(table) if t.isascii() else _normalised_bytes(t) for t in texts]
    sizes = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    doc_start = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=doc_start[1:])  # each part is preceded by one space in `joined`
    joined = b" ".join([b"", *parts, b" " * 15])
    buf = np.frombuffer(joined, dtype=np.uint8)
    in_word = buf != 32
    change = np.empty(len(buf) - 1, dtype=bool)
    np.not_equal(in_word[1:], in_word[:-1], out=change)
    edges = np.nonzero(change)[0] + 1  # alternately a word's start and its end
    starts = edges[0::2]
    lengths = edges[1::2] - starts
    return joined, starts, lengths, np.searchsorted(starts, doc_start)


def _word_hashes(joined: bytes, starts, lengths):
    """One 64-bit hash per word: the word's bytes 8 at a time (unaligned little-endian reads,
    masked to the word; a word has no zero byte, so up to 8 bytes the masked value is the word),
    longer words folding in one more chunk per round by multiply + xor-shift, and words over
    `_LONG_WORD` bytes (URLs, base64 blobs) one blake2b hash each."""
    import numpy as np

    at = np.ndarray(shape=(len(joined) - 7,), dtype="<u8", buffer=joined, strides=(1,))
    keep = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
    words = at[starts]
    words &= keep[np.minimum(lengths, 8)]
    words = _fold(words)
    k, longer = 1, np.flatnonzero((lengths > 8) & (lengths <= _LONG_WORD))
    while len(longer):  # words of 9-64 bytes (about one in six), one more chunk per round
        chunk = at[starts[longer] + 8 * k] & keep[np.minimum(lengths[longer] - 8 * k, 8)]
        words[longer] = _fold(words[longer] * np.uint64(_K_CHUNK) + chunk)
        k += 1
        longer = longer[lengths[longer] > 8 * k]
    for i, a, b in _longest(starts, lengths):
        words[i] = int.from_bytes(hashlib.blake2b(joined[a:b], digest_size=8).digest(), "little")
    return words


def _ngram_hashes(words, first_word, n: int):
    """One n-gram slot per word: the n-gram starting there (a polynomial of word hashes, folded).

    A text's last n-1 slots would straddle into the next text, so they repeat its first n-gram
    instead (a set ignores repeats); a text of 1..n-1 words fills its slots with one hash of all
    its words. Then each text's shingles are exactly its slice of words, nothing to compact."""
    import numpy as np

    total = len(words)
    grams = np.zeros(total, dtype=np.uint64)
    if total >= n:
        head = grams[: total - n + 1]
        head[:] = words[: total - n + 1]
        for j in range(1, n):
            head *= np.uint64(_K_GRAM)
            head += words[j : total - n + 1 + j]
        _fold(head)
    counts = np.diff(first_word)
    regular = np.flatnonzero(counts >= n)
    tails = first_word[regular + 1, None] - np.arange(1, n)
    grams[tails] = grams[first_word[regular], None]
    short = np.flatnonzero((counts > 0) & (counts < n))
    for lo, hi in zip(first_word[short].tolist(), first_word[short + 1].tolist(), strict=True):
        h = _K_SHORT + hi - lo
        for w in words[lo:hi].tolist():
            h = (h * _K_GRAM + w) & 0xFFFFFFFFFFFFFFFF
        grams[lo:hi] = _fold(np.array([h], dtype=np.uint64))
    return grams


def _sorted_runs(matrix):
    """(order, run): the rows sorted so that identical ones are adjacent (ascending within), and for
    each sorted position the label of its run of identical rows.

    Exact: rows are compared whole, as raw bytes (one argsort of a void view, far cheaper than a
    lexsort over every column), never through a hash of them.
    """
    import numpy as np

    rows = np.ascontiguousarray(matrix)
    order = np.argsort(rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel(), kind="stable")
    ordered = rows[order]
    run = np.zeros(len(order), dtype=np.int64)
    np.cumsum((ordered[1:] != ordered[:-1]).any(axis=1), out=run[1:])
    return order, run


def equal_row_groups(matrix) -> list[list[int]]:
    """Groups (ascending row numbers, two or more) of identical rows of a 2-D array."""
    import numpy as np

    if len(matrix) < 2:
        return []
    order, run = _sorted_runs(matrix)
    cuts = np.flatnonzero(np.diff(run)) + 1
    return [g.tolist() for g in np.split(order, cuts) if len(g) > 1]


def equal_row_pairs(matrix):
    """Row pairs (i, j), i < j, of a 2-D array whose rows are identical (an (k, 2) int array).

    Pairs come from shifting the sorted run labels by 1, 2, … so only a long run of equal rows
    costs more rounds (and its k·(k-1)/2 pairs).
    """
    import numpy as np

    if len(matrix) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    order, run = _sorted_runs(matrix)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for k in range(1, len(order)):
        at = np.flatnonzero(run[k:] == run[:-k])
        if not len(at):
            break
        found.append(np.stack((order[at], order[at + k]), axis=1))
    return np.sort(np.concatenate(found), axis=1)


def _band_pairs(signatures, members, bands: int, rows: int):
    """(i, j) pairs, i < j, of `members` whose signatures agree on all rows of at least one band."""
    import numpy as np

    found = [
        members[equal_row_pairs(signatures[members, band * rows : (band + 1) * rows])]
        for band in range(bands)
    ]
    return np.unique(np.concatenate(found), axis=0)


def near_duplicates(
    records: Sequence[tuple[str, str]], config: NearDedupConfig = NearDedupConfig()
) -> list[Duplicate]:
    """(id, text) pairs → the records to drop, each with the id that stays for its cluster.

    Steps: block by block, hash the texts' n-grams (numpy), sketch them in one rensa call and insert
    the sketches into rensa's LSH index; then let the index flag the rows that share a band with any
    other row (most rows do not), re-sketch only the flagged ones to read their signatures, and
    group equal bands among them to get the candidate pairs (verified, then clustered).

    The curate stage runs the same definition as tasks over shard files (`sharded_steps`, built on
    `signature_matrix`, `equal_row_pairs` and `jaccard`); this one-process version is the
    reference it is tested against (tests/curation_oracle.py) and what bench_near_dedup.py times.
    """
    bands, rows = band_shape(config)
    ordered = sorted(records, key=lambda r: r[0])
    if len(ordered) < 2:
        return []
    index, blocks = _sketch_into_index([text for _, text in ordered], config, bands)
    flagged, sub_hashes, sub_offsets = _flagged_rows(index, blocks)
    if not len(flagged):
        return []
    clusters = _clusters(sub_hashes, sub_offsets, config, bands, rows)
    ids = [ordered[d][0] for d in flagged.tolist()]
    return [Duplicate(ids[i], ids[root]) for i, root in clusters.components().items()]


def _sketch_into_index(texts: Sequence[str], config: NearDedupConfig, bands: int):
    """(index, blocks): every text's sketch inserted into rensa's LSH index, block by block, and
    each block's (first row, shingle hashes, offsets, sketches), kept to query the index once
    every row is in."""
    import rensa

    index = rensa.RMinHashLSH(config.threshold, config.num_perm, bands)
    blocks = []
    for lo, hi in _blocks(texts, _BLOCK_CHARS):
        hashes, offsets = _block_shingle_hashes(texts[lo:hi], config.ngram)
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            hashes, offsets, config.num_perm, config.seed
        )
        index.insert_matrix(matrix, lo)
        blocks.append((lo, hashes, offsets, matrix))
    return index, blocks


def _flagged_rows(index, blocks):
    """(flagged rows, their shingle hashes one after the other, their offsets): the rows that
    share a band with any other row (most rows do not), the only ones that can have a duplicate."""
    import numpy as np

    pieces, sizes, flagged_parts = [np.zeros(0, dtype=np.uint64)], [], [np.zeros(0, dtype=np.int64)]
    for lo, hashes, offsets, matrix in blocks:
        local = np.flatnonzero(np.array(index.query_duplicate_flags_matrix(matrix), dtype=bool))
        start, stop = offsets[local].astype(np.int64), offsets[local + 1].astype(np.int64)
        pieces.append(hashes[_ranges(start, stop)])
        sizes.append(stop - start)
        flagged_parts.append(local + lo)
    flagged = np.concatenate(flagged_parts)
    sub_offsets = np.zeros(len(flagged) + 1, dtype=np.uint64)
    np.cumsum(np.concatenate(sizes), out=sub_offsets[1:])
    return flagged, np.concatenate(pieces), sub_offsets


class _ShingleSets:
    """Row i's hashed shingle set, built on first use: most flagged rows never need theirs."""

    def __init__(self, hashes, offsets) -> None:
        self._hashes, self._bounds = hashes, offsets.tolist()
        self._flat: list[int] = []
        self._sets: dict[int, frozenset[int]] = {}

    def __call__(self, i: int) -> frozenset[int]:
        if not self._flat:
            self._flat.extend(self._hashes.tolist())
        if i not in self._sets:
            self._sets[i] = frozenset(self._flat[self._bounds[i] : self._bounds[i + 1]])
        return self._sets[i]


def _clusters(hashes, offsets, config: NearDedupConfig, bands: int, rows: int) -> UnionFind[int]:
    """Clusters of the flagged rows (positions, ascending, so the smallest position is the
    smallest id), from their re-sketched signatures: equal signatures first, then band pairs."""
    import numpy as np
    import rensa

    sketch = rensa.RMinHash.digest_matrix_from_flat_token_hashes
    signatures = np.array(sketch(hashes, offsets, config.num_perm, config.seed).to_rows(), np.uint32)
    clusters: UnionFind[int] = UnionFind(range(len(offsets) - 1))
    shingle_set = _ShingleSets(hashes, offsets)
    active = _join_equal_signatures(signatures, clusters, shingle_set, config.verify)
    for i, j in _band_pairs(signatures, np.flatnonzero(active), bands, rows).tolist():
        if clusters.find(i) == clusters.find(j):
            continue
        if not config.verify or jaccard(shingle_set(i), shingle_set(j)) >= config.threshold:
            clusters.union(i, j)
    return clusters


def _join_equal_signatures(signatures, clusters: UnionFind[int], shingle_set: _ShingleSets, verify: bool):
    """Join rows with one signature (almost always copies with one shingle set: with `verify`,
    the same set) and return which rows stay active: only the first of each shingle set enters the
    band pairing, so a thousand copies of a page cost a thousand set builds, not half a million
    candidate pairs."""
    import numpy as np

    active = np.ones(len(signatures), dtype=bool)
    for group in equal_row_groups(signatures):
        first_with: dict[object, int] = {}
        for j in group:
            keep = first_with.setdefault(shingle_set(j) if verify else None, j)
            if keep != j:
                clusters.union(keep, j)
                active[j] = False
    return active
