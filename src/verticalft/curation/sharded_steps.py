"""The global curation steps — exact dedup, MinHash near dedup, decontamination — as map steps over
the filtered shard files, so that no process holds the corpus (the executor=ray path; the local
path runs the same steps in memory, `global_steps`, and the tests hold the two to the same answers).

The layout is datatrove's MinHash pipeline on this project's executors (`map_shards`: process pool
or Ray), with files on disk between the steps:

1. **signatures**, one task per shard: each kept document's content hash (`dedup.text_hash`) and
   MinHash band keys (`near_dedup.signature_matrix`; a document's sketch depends on its text alone),
   written to `signatures/shard-KKKKK-<key>.npz`, every array bucketed by its first byte;
2. **exact dedup**, one task per bucket range: the hashes of that range from every shard, grouped;
   in each group the smallest id stays (as `dedup.exact_duplicates`);
3. **near dedup**: one task per band × bucket range turns equal band keys into candidate pairs
   (`pairs/…npy`, minus the exact duplicates); the driver keeps only the pair graph; tasks over
   chunks of pairs check each pair's exact Jaccard (`verify`) reading just the two shards' texts;
   the driver joins verified pairs by union-find and the smallest id of a cluster stays
   (as `near_dedup.near_duplicates`: connected components of verified candidate pairs);
4. **decontamination and apply**, one task per shard: the eval set's n-gram index (small, sent to
   every task) is matched against the shard's survivors, drops are applied, and the survivors are
   written sorted by id to `survivors/shard-KKKKK.parquet`.

A document is addressed by a *ref*, shard number << 32 | row in the shard's kept file. Every file
is written atomically under a name keyed by what it was computed from, so a killed run reuses each
finished one. Memory: a task holds one shard, one bucket range of one band (about
`RANGE_DOCS` keys) or one chunk of pairs; the driver holds the pair graph and the drop lists.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.curation import near_dedup
from verticalft.curation.audit import Funnel, sample_dropped
from verticalft.curation.decontam import EvalIndex
from verticalft.curation.dedup import text_hash
from verticalft.curation.executors import map_shards
from verticalft.curation.shards import MERGE_ROW_GROUP, eval_index, read_parquet, write_parquet
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


def _components(edges: list[tuple[str, str]]) -> dict[str, str]:
    """Union-find over id pairs: every member of a cluster except its smallest id → that id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent if find(x) != x}


def sharded_global_steps(
    cfg: CurateStage,
    shards: list[ShardFile],
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
    folder: Path,
    executor: str,
    workers: int | None,
) -> ShardedResult:
    """The global steps over `shards`, recorded in `funnel`; survivors written under `folder`."""
    import numpy as np
    from tqdm.auto import tqdm

    def each(desc: str, fn, jobs: list[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        with tqdm(total=len(jobs), desc=f"curate {desc} ({executor})", unit="task") as bar:
            for j, res in map_shards(fn, jobs, executor, workers):
                yield j, res
                bar.update()

    def run(desc: str, fn, jobs: list[tuple[Any, ...]]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        for j, res in each(desc, fn, jobs):
            out[j] = res
        return out

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
    near_json = json.dumps(near_cfg.__dict__) if near_cfg else None

    # 1. signatures
    sig_paths, jobs = [], []
    for s in shards:
        path = folder / "signatures" / f"shard-{s.k:05d}-{_key(s.key, cfg.dedup.exact, near_json)}.npz"
        sig_paths.append(str(path))
        if not path.is_file():
            jobs.append((s.path, s.k, str(path), cfg.dedup.exact, near_json))
    run("signatures", write_signatures, jobs)
    ranges = bucket_ranges(total)
    drops: dict[int, tuple[str, str, str, str]] = {}  # ref → (id, step, reason, detail)

    # 2. exact dedup
    if cfg.dedup.exact:
        for found in run("exact dedup", exact_range, [(sig_paths, lo, hi) for lo, hi in ranges]):
            drops |= {ref: (rid, "exact_dedup", "exact_duplicate", keep) for ref, rid, keep in found}
        funnel.count("exact_dedup", total, Counter({"exact_duplicate": len(drops)} if drops else {}))

    # 3. near dedup
    n_exact = len(drops)
    if near_cfg is not None:
        excluded = np.array(sorted(drops), dtype=np.uint64)
        bands, _ = near_dedup.band_shape(near_cfg)
        step_key = _key(sig_paths, hashlib.sha256(excluded.tobytes()).hexdigest())
        pair_paths, jobs = [], []
        for b in range(bands):
            for lo, hi in ranges:
                path = folder / "pairs" / f"band{b:03d}-{lo:03d}-{hi:03d}-{step_key}.npy"
                pair_paths.append(path)
                if not path.is_file():
                    jobs.append((sig_paths, b, lo, hi, excluded, str(path)))
        run("near-dedup buckets", band_pairs, jobs)
        pairs = candidate_pairs(pair_paths)
        kept_paths = {s.k: s.path for s in shards}
        jobs = [
            (kept_paths, pairs[i : i + VERIFY_PAIRS], near_cfg.ngram, near_cfg.threshold, near_cfg.verify)
            for i in range(0, len(pairs), VERIFY_PAIRS)
        ]
        verified = [p for chunk in run("near-dedup verify", verify_pairs, jobs) for p in chunk]
        refs = {rid: ref for a, ida, b, idb in verified for ref, rid in ((a, ida), (b, idb))}
        near_drops = _components([(ida, idb) for _, ida, _, idb in verified])
        drops |= {refs[rid]: (rid, "near_dedup", "near_duplicate", keep) for rid, keep in near_drops.items()}
        funnel.count(
            "near_dedup", total - n_exact, Counter({"near_duplicate": len(near_drops)} if near_drops else {})
        )

    # 4. decontamination, drops applied, survivors written
    index = eval_index(cfg, eval_items)
    unmatchable: list[str] = []
    mode = cfg.decontaminate.corpus
    if index is not None and mode != "off":
        index = index.without_common(freq, cfg.decontaminate.max_train_docs)
        unmatchable = index.unmatchable
    else:
        index = None
    by_shard: dict[int, dict[str, tuple[str, str, str]]] = {s.k: {} for s in shards}
    for ref, (rid, step, reason, detail) in drops.items():
        by_shard[ref >> 32][rid] = (step, reason, detail)
    survivors = [str(folder / "survivors" / f"shard-{s.k:05d}.parquet") for s in shards]
    cap = cfg.max_dropped_per_reason
    jobs = [(s.path, by_shard[s.k], index, mode, out, cap) for s, out in zip(shards, survivors, strict=True)]
    # Folded as shards finish: with a cap the driver keeps only the audit sample so far (the first
    # `cap` by id per reason, whatever the arrival order), never every shard's dropped rows.
    flagged_by: dict[int, list[dict[str, Any]]] = {}
    dropped_by: dict[int, list[dict[str, Any]]] = {}
    sample: list[dict[str, Any]] = []
    n_kept = 0
    for j, res in each("decontaminate", finish_shard, jobs):
        flagged_by[j] = res["flagged"]
        n_kept += res["n_kept"]
        if cap is None:
            dropped_by[j] = res["dropped"]
        else:
            sample = sample_dropped(sample + res["dropped"], cap)
    dropped = sample if cap is not None else [row for j in sorted(dropped_by) for row in dropped_by[j]]
    flagged = [f for j in sorted(flagged_by) for f in flagged_by[j]]
    if index is not None:
        hits = Counter({"contains_eval_item": len(flagged)} if mode == "drop" and flagged else {})
        funnel.count("decontaminate", total - len(drops), hits)
    return ShardedResult(survivors, n_kept, dropped, flagged, unmatchable)
