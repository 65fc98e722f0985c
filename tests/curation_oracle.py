"""The test oracle for the global curation steps: exact dedup, MinHash near-dedup and
decontamination over a list of documents held in memory — the shortest statement of what the
steps mean.

The stage runs only the sharded version (`verticalft.curation.sharded_steps`, tasks over shard
files under either executor). This one stays here, in tests/, because it is written from the
single-node definitions (`dedup.exact_duplicates`, `near_dedup.near_duplicates`,
`EvalIndex.match`) and shares none of the sharded code (signature files, bucket ranges, ref
arithmetic, pair chunks): tests/test_sharded_steps.py holds the sharded steps to its answers,
document by document. It lived in `curation/global_steps.py` as the local executor's path until
both executors ran the sharded steps (it held the corpus in one process: 6.7 GB at 1M documents).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from verticalft.curation import near_dedup
from verticalft.curation.audit import Funnel
from verticalft.curation.dedup import exact_duplicates
from verticalft.curation.shards import eval_index
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
