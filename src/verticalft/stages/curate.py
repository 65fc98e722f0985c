"""curate: raw sources → curated corpus (sharded Parquet) + SFT/preference sets, every drop audited.

Flow:
1. stream every corpus source into input shards of `shard_size` rows (`shards/input-*.parquet`,
   one shard in memory at a time); a malformed row goes to `quarantine.jsonl` with its file and
   line, the run goes on (`curation.sources`, `curation.shards.cut_shards`);
2. run the per-document chain on each shard in the executor (local process pool or Ray); the
   worker writes the shard's kept rows and a small JSON marker (written last, keyed by the shard's
   content hash), so a killed run redoes only the shards it had not finished; the driver folds the
   shards' summaries as they arrive (`curation.shards`);
3. across shards: exact dedup, MinHash near-dedup, then decontamination against the eval set
   (n-grams common in the training data do not count, see decontam.py), as tasks over the shard
   files in the same executor, so no process holds the corpus (`curation.sharded_steps.corpus_steps`);
4. write `corpus/part-*.parquet` (sorted by id: identical bytes whatever the executor),
   `dropped/*.parquet` (every dropped record with its step and reason, or the first
   `max_dropped_per_reason` of each), then the SFT and preference sets through the field-aware
   rules (`curation.record_sets`: all sources of a set curated together, written a folder per
   source, `<set>/<i>/`, weighted when training reads them), and the report.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from verticalft.curation import executors, pii
from verticalft.curation.audit import dropped_row, sample_dropped
from verticalft.curation.noise_check import check_planted_noise, noise_labels
from verticalft.curation.record_sets import curate_records
from verticalft.curation.semantic import inline_seeds
from verticalft.curation.sharded_steps import CuratedCorpus, corpus_steps
from verticalft.curation.shards import (
    InputShard,
    ShardSummaries,
    cut_shards,
    read_parquet,
    run_shards,
    write_parts,
)
from verticalft.curation.sources import Quarantined, eval_prompts
from verticalft.recipe import CurateStage, Data
from verticalft.rundir import write_jsonl
from verticalft.stages.base import StageContext, StageResult

SETS = (("sft", ("messages",)), ("preferences", ("prompt", "chosen", "rejected")))


def run(ctx: StageContext) -> StageResult:
    recipe, out = ctx.recipe, ctx.dir
    cfg: CurateStage = inline_seeds(ctx.stage_section(CurateStage))
    # Only the keys the recipe set: rule blocks overlay their preset with exactly those (a
    # default-filled dump would read as "every threshold set"). Where the work runs is no part of
    # what a shard produces, so switching executors reuses finished shards.
    cfg_json = cfg.model_dump_json(exclude_unset=True, exclude={"executor", "num_workers"})
    eval_items = eval_prompts(recipe.data.eval)
    eval_json = json.dumps(eval_items)

    shards, quarantined, read = cut_shards(
        recipe.data.corpus, cfg.shard_size, cfg_json, eval_json, out / "shards"
    )
    merged, corpus = _corpus(
        shards, cfg, cfg_json=cfg_json, eval_json=eval_json, eval_items=eval_items, out=out
    )
    dropped = merged.dropped
    noise = _noise_check(recipe.data.corpus, cfg, out / "corpus", dropped)
    sets, emptied = _record_sets(
        recipe.data,
        cfg,
        eval_items=eval_items,
        freq=merged.freq,
        quarantined=quarantined,
        dropped=dropped,
        out=out,
    )
    quarantined = _write_audit(cfg, quarantined=quarantined, dropped=dropped, flagged=corpus.flagged, out=out)
    metrics = _metrics(
        cfg, read=read, shards=shards, merged=merged, corpus=corpus, sets=sets, quarantined=quarantined
    )
    if noise:
        metrics["planted_noise"] = noise
    from verticalft.curation.curation_report import write_report

    report = write_report(out, recipe.name, metrics)
    outputs = {"corpus": str(out / "corpus"), "report": str(report), "dropped": str(out / "dropped")}
    outputs |= {name: str(out / name) for name in sets}
    summary = (
        f"{read} docs → {corpus.n_kept} kept, {metrics['dropped']} dropped, {len(quarantined)} quarantined"
        + "".join(f"; {n} {s['in']} → {s['kept']}" for n, s in sets.items())
    )
    if emptied:  # the report and quarantine.jsonl are written: the user can read why
        raise ValueError(" | ".join(emptied) + f" (every row: {out / 'quarantine.jsonl'}, {report})")
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)


def _corpus(
    shards: list[InputShard],
    cfg: CurateStage,
    *,
    cfg_json: str,
    eval_json: str,
    eval_items: list[list[str]],
    out: Path,
) -> tuple[ShardSummaries, CuratedCorpus]:
    """Steps 2 and 3 in one executor session: the per-document chain on every input shard (their
    summaries folded as they arrive), then the global steps over the shard files; every corpus
    drop ends in the summaries' `dropped`, and the funnel is checked."""
    merged = ShardSummaries(cfg.max_dropped_per_reason)
    with executors.session(cfg.executor, cfg.num_workers):
        run_shards(
            shards,
            cfg_json=cfg_json,
            eval_json=eval_json,
            folder=out / "shards",
            executor=cfg.executor,
            workers=cfg.num_workers,
            summaries=merged,
        )
        corpus = corpus_steps(
            cfg,
            shards=out / "shards",
            kept=merged.kept,
            eval_items=eval_items,
            freq=merged.freq,
            funnel=merged.funnel,
            out=out,
        )
    merged.dropped += corpus.dropped
    merged.funnel.check()
    return merged, corpus


def _record_sets(
    data: Data,
    cfg: CurateStage,
    *,
    eval_items: list[list[str]],
    freq: Counter[str],
    quarantined: list[Quarantined],
    dropped: list[dict[str, Any]],
    out: Path,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The SFT and preference sets through the field-aware rules: each set's summary by name, and
    why each set that kept no row is empty. Their quarantined and dropped rows are appended to
    `quarantined` and `dropped` (the stage's audit lists)."""
    sets: dict[str, dict[str, Any]] = {}
    emptied: list[str] = []
    for name, required in SETS:
        sources = getattr(data, name)
        if sources:
            sets[name] = curate_records(
                name=name,
                sources=sources,
                required=required,
                cfg=cfg,
                eval_items=eval_items,
                corpus_freq=freq,
                out=out,
            )
            if not sets[name]["kept"]:
                paths = ", ".join(s.path for s in sources)
                emptied.append(_emptied(name, paths, sets[name]["quarantined"], sets[name]["dropped_rows"]))
            quarantined += sets[name].pop("quarantined")
            dropped += sets[name].pop("dropped_rows")
    return sets, emptied


def _write_audit(
    cfg: CurateStage,
    *,
    quarantined: list[Quarantined],
    dropped: list[dict[str, Any]],
    flagged: list[dict[str, Any]],
    out: Path,
) -> list[Quarantined]:
    """`dropped/*.parquet` (every drop, or the first `max_dropped_per_reason` of each reason),
    `quarantine.jsonl` and `flagged.jsonl`; returns the quarantined rows as written (PII redacted
    when `cfg.pii`), which the metrics sample."""
    write_parts(
        [dropped_row(r, cfg.pii) for r in sample_dropped(dropped, cfg.max_dropped_per_reason)],
        out / "dropped",
        max(cfg.shard_size, 1),
    )
    if cfg.pii:
        quarantined = [dataclasses.replace(q, raw=pii.redact(q.raw).text) for q in quarantined]
    # sorted keys: the local and Ray runs write the same bytes; ASCII: raw rows may hold surrogates
    write_jsonl(
        out / "quarantine.jsonl", [q.__dict__ for q in quarantined], sort_keys=True, ensure_ascii=True
    )
    write_jsonl(out / "flagged.jsonl", flagged, sort_keys=True, ensure_ascii=True)
    return quarantined


def _metrics(
    cfg: CurateStage,
    *,
    read: int,
    shards: list[InputShard],
    merged: ShardSummaries,
    corpus: CuratedCorpus,
    sets: dict[str, dict[str, Any]],
    quarantined: list[Quarantined],
) -> dict[str, Any]:
    """The stage's manifest metrics: counts, the funnel, per-filter details, the record sets."""
    funnel = merged.funnel
    return {
        "read": read,
        "quarantined": len(quarantined),
        "kept": corpus.n_kept,
        "dropped": sum(sum(s.dropped.values()) for s in funnel.steps.values()),
        "shards": len(shards),
        "shards_resumed": merged.resumed,
        "executor": cfg.executor,
        "funnel": funnel.to_list(),
        "details": dict(sorted(merged.details.items())),
        "flagged_contamination": len(corpus.flagged),
        "eval_items_unmatchable": len(corpus.unmatchable),
        "corpus_parts": corpus.parts,
        "records": sets,
        "quarantine": [q.__dict__ for q in quarantined[:50]],
    }


def _emptied(name: str, path: str, quarantined: list[Any], dropped: list[dict[str, Any]]) -> str:
    """A set that kept no row: the stage training on it would die later, so curate stops here,
    naming the commonest reasons its rows were quarantined or dropped (a wrong format shows up as
    one quarantine reason for every row)."""
    from collections import Counter

    reasons = Counter(q.error.split(";")[0].strip() for q in quarantined)
    reasons.update(f"dropped: {d['reason']}" for d in dropped)
    top = "; ".join(f"{n} × {why}" for why, n in reasons.most_common(3)) or "the file holds no rows"
    return f"data.{name} ({path}) kept 0 rows: {top}"


def _noise_check(
    sources: list[Any], cfg: Any, corpus: Path, dropped: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """How much planted noise was caught, when the sources ship labels (the samples do); it reads
    the whole corpus back, and needs every drop (so not with a capped audit sample)."""
    labels = noise_labels(sources)
    if not labels or cfg.max_dropped_per_reason is not None:
        return None
    kept = {r["id"]: r["text"] for part in sorted(corpus.glob("part-*.parquet")) for r in read_parquet(part)}
    return check_planted_noise(labels, kept, {str(r["id"]): dropped_row(r, cfg.pii) for r in dropped})
