"""The global curation steps — exact dedup, MinHash near dedup, decontamination — as map steps over
the filtered shard files, so that no process holds the corpus. Every executor runs this one
algorithm (`map_shards`: the local process pool or Ray); the in-memory version of the same steps
lives on only as the tests' oracle (tests/curation_oracle.py), which they hold this to, drop for drop.

The layout is datatrove's MinHash pipeline on this project's executors, with files on disk between
the steps:

1. **signatures**, one task per shard: each kept document's content hash (`dedup.text_hash`) and
   MinHash band keys (`near_dedup.signature_matrix`; a document's sketch depends on its text alone),
   written to `signatures/shard-KKKKK-<key>.npz`, every array bucketed by its first byte;
2. **exact dedup**, one task per bucket range: the hashes of that range from every shard, grouped;
   in each group the smallest id stays (as `dedup.exact_duplicates`);
3. **near dedup**: one task per band × bucket range turns equal band keys into candidate pairs
   (`pairs/…npy`, minus the exact duplicates); the driver keeps only the pair graph; tasks over
   chunks of pairs check each pair's exact Jaccard (`verify`) reading just the two shards' texts;
   the driver joins verified pairs (`union_find`) and the smallest id of a cluster stays
   (as `near_dedup.near_duplicates`: connected components of verified candidate pairs);
4. **decontamination and apply**, one task per shard: the eval set's n-gram index (small, sent to
   every task) is matched against the shard's survivors, drops are applied, and the survivors are
   written sorted by id to `survivors/shard-KKKKK.parquet`.

A document is addressed by a *ref*, shard number << 32 | row in the shard's kept file. Every file
is written atomically under a name keyed by what it was computed from, so a killed run reuses each
finished one. Memory: a task holds one shard, one bucket range of one band (about
`RANGE_DOCS` keys) or one chunk of pairs; the driver holds the pair graph and the drop lists.
`corpus_steps`, the stage's entry, then merges the survivors into the corpus parts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.curation import near_dedup
from verticalft.curation.audit import Funnel, sample_dropped
from verticalft.curation.decontam import EvalIndex
from verticalft.curation.dedup import text_hash
from verticalft.curation.executors import map_shards
from verticalft.curation.shards import (
    MERGE_ROW_GROUP,
    eval_index,
    kept_path,
    merge_parts,
    read_parquet,
    write_parquet,
)
from verticalft.curation.union_find import components
from verticalft.recipe import CurateStage

RANGE_DOCS = 200_000  # documents per bucket range of a dedup task (keeps each task's memory flat)
# Candidate pairs per verification task: it holds the shingle sets of up to twice as many documents,
# ~13.5 KB each (Python ints in a frozenset); 50,000 pairs took a Ray worker to 965 MB at 1M documents.
VERIFY_PAIRS = 2_000
BUCKETS = 256  # arrays in a signature file are grouped by their first byte


@dataclass(frozen=True)
class ShardFile:
    """One filtered shard: its number, its kept documents' Parquet file and the key of its content."""

    k: int
    path: str
    key: str
    n_kept: int


@dataclass
class ShardedResult:
    survivors: list[str]  # per shard, sorted by id; the corpus is their merge
    n_kept: int
    dropped: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    unmatchable: list[str]


# ----------------------------------------------------------------------------------- tasks
def _bucketed(first_byte, arrays: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`arrays` reordered by `first_byte` (stable) plus `<prefix>off`, the 257 bucket offsets."""
    import numpy as np

    order = np.argsort(first_byte, kind="stable")
    off = np.zeros(BUCKETS + 1, dtype=np.int64)
    np.cumsum(np.bincount(first_byte, minlength=BUCKETS), out=off[1:])
    return {f"{prefix}{name}": a[order] for name, a in arrays.items()} | {f"{prefix}off": off}


def write_signatures(kept_path: str, k: int, out_path: str, exact: bool, near_json: str | None) -> str:
    """Step 1 for one shard: content hashes and band keys of its kept documents, to `out_path`."""
    import numpy as np

    rows = read_parquet(Path(kept_path))
    refs = (np.uint64(k) << np.uint64(32)) + np.arange(len(rows), dtype=np.uint64)
    arrays: dict[str, Any] = {}
    if exact:
        digests = np.frombuffer(b"".join(bytes.fromhex(text_hash(r["text"])) for r in rows), np.uint8)
        digests = digests.reshape(len(rows), 16)
        ids = np.array([r["id"] for r in rows], dtype=str)
        arrays |= _bucketed(digests[:, 0], {"hash": digests, "ref": refs, "id": ids}, "exact_")
    if near_json is not None:
        config = near_dedup.NearDedupConfig(**json.loads(near_json))
        bands, rows_per_band = near_dedup.band_shape(config)
        sigs = near_dedup.signature_matrix([r["text"] for r in rows], config)
        for b in range(bands):
            keys = np.ascontiguousarray(sigs[:, b * rows_per_band : (b + 1) * rows_per_band])
            first = (keys[:, 0] & 0xFF).astype(np.int64)
            arrays |= _bucketed(first, {"key": keys, "ref": refs}, f"band{b}_")
    _save_npz(out_path, arrays)
    return out_path


def _save_npz(path: str, arrays: dict[str, Any]) -> None:
    """Arrays to `path` (.npz, or .npy for a single `array`), atomically: a killed task leaves no
    half file for a rerun to trust."""
    import numpy as np

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
    if target.suffix == ".npy":
        np.save(tmp, arrays["array"])
    else:
        np.savez(tmp, **arrays)
    tmp.replace(target)


def _load_range(paths: Sequence[str], prefix: str, names: Sequence[str], lo: int, hi: int) -> list[Any]:
    """The arrays `prefix+name` of buckets [lo, hi) from every signature file, concatenated."""
    import numpy as np

    parts: dict[str, list[Any]] = {n: [] for n in names}
    for path in paths:
        with np.load(path) as z:
            off = z[f"{prefix}off"]
            a, b = int(off[lo]), int(off[hi])
            for n in names:
                parts[n].append(z[f"{prefix}{n}"][a:b])
    return [np.concatenate(parts[n]) for n in names]


def exact_range(paths: Sequence[str], lo: int, hi: int) -> list[tuple[int, str, str]]:
    """Step 2 for hash buckets [lo, hi): (ref, id, kept id) of every exact duplicate."""
    hashes, refs, ids = _load_range(paths, "exact_", ("hash", "ref", "id"), lo, hi)
    out = []
    for group in near_dedup.equal_row_groups(hashes):
        keep = min(str(ids[i]) for i in group)
        out += [(int(refs[i]), str(ids[i]), keep) for i in group if str(ids[i]) != keep]
    return out


def band_pairs(paths: Sequence[str], band: int, lo: int, hi: int, excluded, out_path: str) -> str:
    """Step 3a for one band's buckets [lo, hi): ref pairs (smaller first) with equal band keys,
    leaving out the `excluded` refs (exact duplicates, sorted); saved to `out_path`."""
    import numpy as np

    keys, refs = _load_range(paths, f"band{band}_", ("key", "ref"), lo, hi)
    keep = ~np.isin(refs, excluded)
    keys, refs = keys[keep], refs[keep]
    pairs = np.sort(refs[near_dedup.equal_row_pairs(keys)], axis=1).astype(np.uint64)
    _save_npz(out_path, {"array": pairs.reshape(-1, 2)})
    return out_path


def verify_pairs(
    kept_paths: dict[int, str], pairs, ngram: int, threshold: float, verify: bool
) -> list[tuple[int, str, int, str]]:
    """Step 3b for a chunk of candidate pairs: (ref, id, ref, id) of those whose exact Jaccard of
    shingle sets reaches `threshold` (all of them without `verify`)."""
    import numpy as np
    import pyarrow.parquet as pq

    needed: dict[int, set[int]] = {}
    for ref in np.unique(pairs).tolist():
        needed.setdefault(ref >> 32, set()).add(ref & 0xFFFFFFFF)
    ids: dict[int, str] = {}
    sets: dict[int, frozenset[int]] = {}
    for k, rows in sorted(needed.items()):
        chosen = sorted(rows)  # only these rows become Python objects, not the whole shard
        table = pq.read_table(kept_paths[k], columns=["id", "text"]).take(chosen)
        texts = table["text"].to_pylist()
        shingled = near_dedup.shingle_hash_sets(texts, ngram) if verify else [frozenset()] * len(chosen)
        for i, rid, s in zip(chosen, table["id"].to_pylist(), shingled, strict=True):
            ids[(k << 32) | i] = rid
            sets[(k << 32) | i] = s
    out = []
    for a, b in pairs.tolist():
        if not verify or near_dedup.jaccard(sets[a], sets[b]) >= threshold:
            out.append((a, ids[a], b, ids[b]))
    return out


def finish_shard(
    kept_path: str,
    drops: dict[str, tuple[str, str, str]],
    index: EvalIndex | None,
    mode: str,
    out_path: str,
    cap: int | None = None,
) -> dict[str, Any]:
    """Step 4 for one shard: drop the dedup drops, match the rest against the eval index, write the
    survivors sorted by id; returns the dropped rows (the first `cap` per reason, when set) and the
    contamination found."""
    dropped, flagged, survivors = [], [], []
    for r in read_parquet(Path(kept_path)):
        if r["id"] in drops:
            step, reason, detail = drops[r["id"]]
            dropped.append({**r, "step": step, "reason": reason, "detail": detail})
            continue
        m = index.match(r["text"]) if index is not None else None
        if m is not None:
            flagged.append({"id": r["id"], "eval_id": m.eval_id, "overlap": m.overlap, "ngram": m.ngram})
            if mode == "drop":
                detail = f"{m.eval_id} (overlap {m.overlap:.2f})"
                dropped.append(
                    {**r, "step": "decontaminate", "reason": "contains_eval_item", "detail": detail}
                )
                continue
        survivors.append(r)
    survivors.sort(key=lambda r: r["id"])
    write_parquet(survivors, Path(out_path), MERGE_ROW_GROUP)
    if cap is not None:
        dropped = sample_dropped(dropped, cap)
    return {"dropped": dropped, "flagged": flagged, "n_kept": len(survivors)}


# ----------------------------------------------------------------------------------- driver
def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bucket_ranges(n_docs: int) -> list[tuple[int, int]]:
    """Bucket ranges [lo, hi) of about RANGE_DOCS documents each (buckets are near-uniform)."""
    if n_docs == 0:
        return []
    count = min(BUCKETS, math.ceil(n_docs / RANGE_DOCS))
    cuts = [round(i * BUCKETS / count) for i in range(count + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def candidate_pairs(paths: Sequence[Path]):
    """The distinct ref pairs of the band files `paths`, ordered by the shards they touch, so a
    chunk of consecutive pairs — one verification task — reads few shard files."""
    import numpy as np

    pairs = np.unique(np.concatenate([np.zeros((0, 2), np.uint64)] + [np.load(p) for p in paths]), axis=0)
    return pairs[np.lexsort((pairs[:, 1] >> np.uint64(32), pairs[:, 0] >> np.uint64(32)))]


@dataclass(frozen=True)
class _Tasks:
    """One step's tasks on the recipe's executor (`map_shards`), with a progress bar."""

    executor: str
    workers: int | None

    def each(
        self, desc: str, fn: Callable[..., Any], jobs: list[tuple[Any, ...]]
    ) -> Iterator[tuple[int, Any]]:
        """(job index, result) as tasks finish."""
        from tqdm.auto import tqdm

        with tqdm(total=len(jobs), desc=f"curate {desc} ({self.executor})", unit="task") as bar:
            for j, res in map_shards(fn, jobs, self.executor, self.workers):
                yield j, res
                bar.update()

    def run(self, desc: str, fn: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
        """Every task's result, in job order."""
        out: list[Any] = [None] * len(jobs)
        for j, res in self.each(desc, fn, jobs):
            out[j] = res
        return out


Drops = dict[int, tuple[str, str, str, str]]  # ref → (id, step, reason, detail)


def _reasons(reason: str, n: int) -> Counter:
    return Counter({reason: n} if n else {})


def sharded_global_steps(
    cfg: CurateStage,
    shards: list[ShardFile],
    *,
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
    folder: Path,
    executor: str,
    workers: int | None,
) -> ShardedResult:
    """The global steps over `shards`, recorded in `funnel`; work files and survivors under `folder`."""
    tasks = _Tasks(executor, workers)
    for sub in ("signatures", "pairs", "survivors"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shards = [s for s in shards if s.n_kept]
    total = sum(s.n_kept for s in shards)
    near = cfg.dedup.near
    near_cfg = (
        near_dedup.NearDedupConfig(near.threshold, near.num_perm, near.ngram, verify=near.verify)
        if near
        else None
    )
    sig_paths = _signatures(tasks, shards, cfg.dedup.exact, near_cfg, folder / "signatures")
    ranges = bucket_ranges(total)
    drops: Drops = {}
    if cfg.dedup.exact:
        drops |= _exact_drops(tasks, sig_paths, ranges)
        funnel.count("exact_dedup", total, _reasons("exact_duplicate", len(drops)))
    if near_cfg is not None:
        near_drops = _near_drops(
            tasks, near_cfg, shards, sig_paths=sig_paths, ranges=ranges, exact=drops, folder=folder / "pairs"
        )
        funnel.count("near_dedup", total - len(drops), _reasons("near_duplicate", len(near_drops)))
        drops |= near_drops
    index, unmatchable = _decontamination_index(cfg, eval_items, freq)
    res = _finish(tasks, cfg, shards, drops, index, folder / "survivors")
    res.unmatchable = unmatchable
    if index is not None:
        hits = len(res.flagged) if cfg.decontaminate.corpus == "drop" else 0
        funnel.count("decontaminate", total - len(drops), _reasons("contains_eval_item", hits))
    return res


def _signatures(
    tasks: _Tasks,
    shards: list[ShardFile],
    exact: bool,
    near_cfg: near_dedup.NearDedupConfig | None,
    folder: Path,
) -> list[str]:
    """Step 1: every shard's signature file (named by the shard's content and the settings, so a
    rerun reuses the ones it has)."""
    near_json = json.dumps(near_cfg.__dict__) if near_cfg else None
    paths, jobs = [], []
    for s in shards:
        path = folder / f"shard-{s.k:05d}-{_key(s.key, exact, near_json)}.npz"
        paths.append(str(path))
        if not path.is_file():
            jobs.append((s.path, s.k, str(path), exact, near_json))
    tasks.run("signatures", write_signatures, jobs)
    return paths


def _exact_drops(tasks: _Tasks, sig_paths: list[str], ranges: list[tuple[int, int]]) -> Drops:
    """Step 2: the exact duplicates, each naming the id that stays."""
    drops: Drops = {}
    for found in tasks.run("exact dedup", exact_range, [(sig_paths, lo, hi) for lo, hi in ranges]):
        drops |= {ref: (rid, "exact_dedup", "exact_duplicate", keep) for ref, rid, keep in found}
    return drops


def _near_drops(
    tasks: _Tasks,
    near_cfg: near_dedup.NearDedupConfig,
    shards: list[ShardFile],
    *,
    sig_paths: list[str],
    ranges: list[tuple[int, int]],
    exact: Drops,
    folder: Path,
) -> Drops:
    """Step 3: candidate pairs per band and bucket range (the `exact` drops left out), verified in
    chunks, joined into clusters; every member but a cluster's smallest id is dropped."""
    import numpy as np

    excluded = np.array(sorted(exact), dtype=np.uint64)
    bands, _ = near_dedup.band_shape(near_cfg)
    step_key = _key(sig_paths, hashlib.sha256(excluded.tobytes()).hexdigest())
    pair_paths, bucket_jobs = [], []
    for b in range(bands):
        for lo, hi in ranges:
            path = folder / f"band{b:03d}-{lo:03d}-{hi:03d}-{step_key}.npy"
            pair_paths.append(path)
            if not path.is_file():
                bucket_jobs.append((sig_paths, b, lo, hi, excluded, str(path)))
    tasks.run("near-dedup buckets", band_pairs, bucket_jobs)
    pairs = candidate_pairs(pair_paths)
    kept_paths = {s.k: s.path for s in shards}
    verify_jobs = [
        (kept_paths, pairs[i : i + VERIFY_PAIRS], near_cfg.ngram, near_cfg.threshold, near_cfg.verify)
        for i in range(0, len(pairs), VERIFY_PAIRS)
    ]
    verified = [p for chunk in tasks.run("near-dedup verify", verify_pairs, verify_jobs) for p in chunk]
    refs = {rid: ref for a, ida, b, idb in verified for ref, rid in ((a, ida), (b, idb))}
    clusters = components((ida, idb) for _, ida, _, idb in verified)
    return {refs[rid]: (rid, "near_dedup", "near_duplicate", keep) for rid, keep in clusters.items()}


def _decontamination_index(
    cfg: CurateStage, eval_items: list[list[str]], freq: Counter
) -> tuple[EvalIndex | None, list[str]]:
    """The eval index step 4 matches against (None: no eval set, or decontamination off), without
    the n-grams common in the training data, and the eval items left with nothing to match."""
    index = eval_index(cfg, eval_items)
    if index is None or cfg.decontaminate.corpus == "off":
        return None, []
    index = index.without_common(freq, cfg.decontaminate.max_train_docs)
    return index, index.unmatchable


def _finish(
    tasks: _Tasks,
    cfg: CurateStage,
    shards: list[ShardFile],
    drops: Drops,
    index: EvalIndex | None,
    folder: Path,
) -> ShardedResult:
    """Step 4: per shard, the drops applied, decontamination, the survivors written."""
    by_shard: dict[int, dict[str, tuple[str, str, str]]] = {s.k: {} for s in shards}
    for ref, (rid, step, reason, detail) in drops.items():
        by_shard[ref >> 32][rid] = (step, reason, detail)
    survivors = [str(folder / f"shard-{s.k:05d}.parquet") for s in shards]
    cap, mode = cfg.max_dropped_per_reason, cfg.decontaminate.corpus
    jobs = [(s.path, by_shard[s.k], index, mode, out, cap) for s, out in zip(shards, survivors, strict=True)]
    # Folded as shards finish: with a cap the driver keeps only the audit sample so far (the first
    # `cap` by id per reason, whatever the arrival order), never every shard's dropped rows.
    flagged_by: dict[int, list[dict[str, Any]]] = {}
    dropped_by: dict[int, list[dict[str, Any]]] = {}
    sample: list[dict[str, Any]] = []
    n_kept = 0
    for j, res in tasks.each("decontaminate", finish_shard, jobs):
        flagged_by[j] = res["flagged"]
        n_kept += res["n_kept"]
        if cap is None:
            dropped_by[j] = res["dropped"]
        else:
            sample = sample_dropped(sample + res["dropped"], cap)
    dropped = sample if cap is not None else [row for j in sorted(dropped_by) for row in dropped_by[j]]
    flagged = [f for j in sorted(flagged_by) for f in flagged_by[j]]
    return ShardedResult(survivors, n_kept, dropped, flagged, [])


# ----------------------------------------------------------------------------------- the stage's entry
@dataclass
class CuratedCorpus:
    parts: list[str]  # corpus/part-*.parquet names, rows sorted by id
    n_kept: int
    dropped: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    unmatchable: list[str]


def corpus_steps(
    cfg: CurateStage,
    *,
    shards: Path,
    kept: dict[int, tuple[str, int]],
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
    out: Path,
) -> CuratedCorpus:
    """The global steps over the filtered shards (`kept`: shard number → its key and kept rows) on
    the recipe's executor, work files under `out/global`, the corpus merged into `out/corpus` in
    parts of `shard_size` rows sorted by id."""
    files = [ShardFile(k, str(kept_path(shards, k)), key, n) for k, (key, n) in sorted(kept.items())]
    res = sharded_global_steps(
        cfg,
        files,
        eval_items=eval_items,
        freq=freq,
        funnel=funnel,
        folder=out / "global",
        executor=cfg.executor,
        workers=cfg.num_workers,
    )
    parts = merge_parts(res.survivors, out / "corpus", cfg.shard_size)
    return CuratedCorpus(parts, res.n_kept, res.dropped, res.flagged, res.unmatchable)
