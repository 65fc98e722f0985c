"""The cross-shard half of curation: exact dedup, MinHash near-dedup and decontamination against
the eval set, each step audited in the funnel and every drop kept with its reason.

Two implementations with the same answers (tests/test_sharded_steps.py): `global_steps` holds every
kept document in this process (executor=local, small corpora); `sharded_steps` runs the steps as
tasks over the shard files (executor=ray), so no process holds the corpus. `corpus_steps` picks one
and writes the corpus parts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.curation import near_dedup
from verticalft.curation.audit import Funnel
from verticalft.curation.dedup import exact_duplicates
from verticalft.curation.sharded_steps import ShardFile, sharded_global_steps
from verticalft.curation.shards import eval_index, kept_path, load_kept, merge_parts, write_parts
from verticalft.recipe import CurateStage


def global_steps(
    cfg: CurateStage,
    kept: list[dict[str, Any]],
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(kept, dropped, flagged contamination, eval items no n-gram can match) after the steps."""
    dropped: list[dict[str, Any]] = []

    def remove(step: str, reason: str, drops: dict[str, str]) -> None:
        nonlocal kept
        survivors = []
        for r in kept:
            if r["id"] in drops:
                dropped.append({**r, "step": step, "reason": reason, "detail": drops[r["id"]]})
                funnel.record(step, reason)
            else:
                survivors.append(r)
                funnel.record(step, None)
        funnel.step(step)
        kept = survivors

    if cfg.dedup.exact:
        pairs = [(r["id"], r["text"]) for r in kept]
        remove("exact_dedup", "exact_duplicate", {d.id: d.kept for d in exact_duplicates(pairs)})
    if cfg.dedup.near is not None:
        n = cfg.dedup.near
        conf = near_dedup.NearDedupConfig(n.threshold, n.num_perm, n.ngram, verify=n.verify)
        pairs = [(r["id"], r["text"]) for r in kept]
        remove(
            "near_dedup", "near_duplicate", {d.id: d.kept for d in near_dedup.near_duplicates(pairs, conf)}
        )
    flagged: list[dict[str, Any]] = []
    index = eval_index(cfg, eval_items)
    unmatchable: list[str] = []
    if index is not None and cfg.decontaminate.corpus != "off":
        index = index.without_common(freq, cfg.decontaminate.max_train_docs)
        unmatchable = index.unmatchable
        hits = {}
        for r in kept:
            m = index.match(r["text"])
            if m is not None:
                hits[r["id"]] = f"{m.eval_id} (overlap {m.overlap:.2f})"
                flagged.append({"id": r["id"], "eval_id": m.eval_id, "overlap": m.overlap, "ngram": m.ngram})
        remove("decontaminate", "contains_eval_item", hits if cfg.decontaminate.corpus == "drop" else {})
    return kept, dropped, flagged, unmatchable


@dataclass
class CuratedCorpus:
    parts: list[str]  # corpus/part-*.parquet names, rows sorted by id
    n_kept: int
    dropped: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    unmatchable: list[str]


def corpus_steps(
    cfg: CurateStage,
    shards: Path,
    kept: dict[int, tuple[str, int]],
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
    out: Path,
) -> CuratedCorpus:
    """The global steps over the filtered shards (`kept`: shard number → its key and kept rows),
    the corpus written to `out/corpus` in parts of `shard_size` rows sorted by id — same bytes
    either way."""
    if cfg.executor == "local":
        rows = [r for k in sorted(kept) for r in load_kept(shards, k, kept[k][1])]
        rows, dropped, flagged, unmatchable = global_steps(cfg, rows, eval_items, freq, funnel)
        rows.sort(key=lambda r: r["id"])
        parts = write_parts(rows, out / "corpus", cfg.shard_size)
        return CuratedCorpus(parts, len(rows), dropped, flagged, unmatchable)
    files = [ShardFile(k, str(kept_path(shards, k)), key, n) for k, (key, n) in sorted(kept.items())]
    res = sharded_global_steps(
        cfg, files, eval_items, freq, funnel, out / "global", cfg.executor, cfg.num_workers
    )
    parts = merge_parts(res.survivors, out / "corpus", cfg.shard_size)
    return CuratedCorpus(parts, res.n_kept, res.dropped, res.flagged, res.unmatchable)
