"""curate: raw sources → curated corpus (sharded Parquet) + SFT/preference sets, every drop audited.

Flow (DESIGN.md, "Heavy Curation"):
1. read every corpus source; a malformed row goes to `quarantine.jsonl` with its file and line,
   the run goes on;
2. cut the records into shards of `shard_size` and run the per-document chain on each shard in
   the executor (local process pool or Ray). A finished shard is written to `shards/` with a
   small JSON marker (written last, atomically, keyed by the shard's content hash), so a killed
   run redoes only the shards it had not finished;
3. across shards, in this process: exact dedup, MinHash near-dedup, then decontamination
   against the eval set (n-grams common in the training data do not count, see decontam.py);
4. write `corpus/part-*.parquet` (sorted by id: identical bytes whatever the executor),
   `dropped/*.parquet` (every dropped record with its step and reason), then the SFT and
   preference sets through the field-aware rules, and the report (markdown + funnel PNG).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from verticalft.curation import decontam, near_dedup, pii, records
from verticalft.curation.audit import Funnel
from verticalft.curation.chain import build_chain, run_chain
from verticalft.curation.dedup import exact_duplicates
from verticalft.curation.executors import map_shards
from verticalft.curation.sources import Quarantined, iter_records
from verticalft.recipe import CurateStage, Source
from verticalft.rundir import atomic_write_json
from verticalft.stages.base import StageContext, StageResult

CORPUS_COLUMNS = ["id", "text", "source", "date", "license"]
SHARD_FIELDS = ("dropped", "funnel", "details", "doc_freq")


# --------------------------------------------------------------------------- per-shard work (pure)
def curate_shard(rows: list[dict[str, Any]], cfg_json: str, eval_json: str) -> dict[str, Any]:
    """The per-document chain on one shard, plus the eval n-gram counts of what it kept.

    Top-level and config-in/data-out so a process pool or Ray can run it anywhere.
    """
    cfg = CurateStage.model_validate_json(cfg_json)
    res = run_chain(rows, build_chain(cfg))
    index = _eval_index(cfg, json.loads(eval_json))
    freq = index.doc_frequency(r["text"] for r in res.kept) if index else Counter()
    return {
        "kept": res.kept,
        "dropped": res.dropped,
        "funnel": res.funnel.to_list(),
        "details": dict(res.details),
        "doc_freq": dict(freq),
    }


def _eval_index(cfg: CurateStage, items: list[list[str]]) -> decontam.EvalIndex | None:
    if not items:
        return None
    d = cfg.decontaminate
    return decontam.EvalIndex.build([(i, t) for i, t in items], d.ngram, d.min_overlap)


# --------------------------------------------------------------------------- I/O helpers
def _corpus_row(r: dict[str, Any]) -> dict[str, Any]:
    """The fixed corpus columns; any other fields of the source row travel as JSON in `meta`."""
    extra = {k: v for k, v in r.items() if k not in CORPUS_COLUMNS}
    row = {k: (None if r.get(k) is None else str(r[k])) for k in CORPUS_COLUMNS}
    row["meta"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _write_shards(rows: list[dict[str, Any]], folder: Path, size: int) -> list[str]:
    """Rows (already in their final order) as `part-00000.parquet` … of `size` rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    names = []
    for k, start in enumerate(range(0, max(len(rows), 1), size)):
        path = folder / f"part-{k:05d}.parquet"
        _write_parquet(rows[start : start + size], path)
        names.append(path.name)
    return names


def _dropped_row(r: dict[str, Any], redact: bool) -> dict[str, Any]:
    """The audit copy of a dropped record; PII is redacted here too (the audit trail is read by
    people, so it must not be the one place raw card numbers survive)."""
    text = r.get("text") if isinstance(r.get("text"), str) else json.dumps(r.get("row"), default=str)
    return {
        "id": str(r.get("id")),
        "step": r["step"],
        "reason": r["reason"],
        "detail": r.get("detail"),
        "source": r.get("source"),
        "text": pii.redact(text).text if redact else text,
    }


def _sample_dropped(dropped: list[dict[str, Any]], cap: int | None) -> list[dict[str, Any]]:
    """All dropped records, or the first `cap` (by id) per reason for huge inputs."""
    rows = sorted(dropped, key=lambda r: (r["step"], r["reason"], str(r["id"])))
    if cap is None:
        return rows
    seen: Counter = Counter()
    out = []
    for r in rows:
        seen[(r["step"], r["reason"])] += 1
        if seen[(r["step"], r["reason"])] <= cap:
            out.append(r)
    return out


def _shard_hash(rows: list[dict[str, Any]], cfg_json: str, eval_json: str) -> str:
    h = hashlib.sha256(cfg_json.encode() + eval_json.encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------- reading
def read_sources(
    sources: list[Source], required: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], list[Quarantined]]:
    """Every good record of `sources` (ids unique) and every quarantined row."""
    rows: list[dict[str, Any]] = []
    bad: list[Quarantined] = []
    seen: dict[str, str] = {}
    for source in sources:
        for item in iter_records(source, required):
            if isinstance(item, Quarantined):
                bad.append(item)
            elif item["id"] in seen:
                bad.append(
                    Quarantined(
                        source.path, 0, f"duplicate id {item['id']!r} (first in {seen[item['id']]})", ""
                    )
                )
            else:
                seen[item["id"]] = source.path
                rows.append(item)
    return rows, bad


def _inline_seeds(cfg: CurateStage) -> CurateStage:
    """Seed files of `semantic_relevance` read here, once: workers (Ray nodes included) get the
    texts, and a shard's hash changes when a seed file's content does."""
    from verticalft.curation.semantic import read_seeds

    steps = []
    for step in cfg.filters:
        sem = step.semantic_relevance
        if sem is not None and sem.seeds:
            texts = [*read_seeds(sem.seeds), *sem.seed_texts]
            step = step.model_copy(
                update={"semantic_relevance": sem.model_copy(update={"seeds": [], "seed_texts": texts})}
            )
        steps.append(step)
    return cfg.model_copy(update={"filters": steps})


# --------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> StageResult:
    from tqdm.auto import tqdm

    recipe, cfg, out = ctx.recipe, _inline_seeds(ctx.recipe.stages.curate), ctx.dir
    # Only the keys the recipe set: rule blocks overlay their preset with exactly those (a
    # default-filled dump would read as "every threshold set"). Where the work runs is no part of
    # what a shard produces, so switching executors reuses finished shards.
    cfg_json = cfg.model_dump_json(exclude_unset=True, exclude={"executor", "num_workers"})
    eval_items = _eval_items(recipe.data.eval)
    eval_json = json.dumps(eval_items)

    docs, quarantined = read_sources(recipe.data.corpus)
    docs = [_corpus_row(r) for r in docs]
    shards = [docs[i : i + cfg.shard_size] for i in range(0, len(docs), cfg.shard_size)]
    shard_dir = out / "shards"
    results: dict[int, dict[str, Any]] = {}
    jobs, job_shards = [], []
    for k, rows in enumerate(shards):
        key = _shard_hash(rows, cfg_json, eval_json)
        marker = shard_dir / f"shard-{k:05d}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("hash") == key:
            results[k] = _load_shard(shard_dir, k)  # finished by an earlier (killed) attempt
        else:
            jobs.append((rows, cfg_json, eval_json))
            job_shards.append((k, key))
    resumed = len(results)
    with tqdm(total=len(shards), initial=resumed, desc=f"curate ({cfg.executor})", unit="shard") as bar:
        for j, res in map_shards(curate_shard, jobs, cfg.executor, cfg.num_workers):
            k, key = job_shards[j]
            _save_shard(shard_dir, k, key, res)
            results[k] = res
            bar.update()

    funnel, details, freq = Funnel(), Counter(), Counter()
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for k in range(len(shards)):
        res = results[k]
        funnel.merge(Funnel.from_list(res["funnel"]))
        details.update(res["details"])
        freq.update(res["doc_freq"])
        kept += res["kept"]
        dropped += res["dropped"]

    kept, global_drops, flagged, unmatchable = _global_steps(cfg, kept, eval_items, freq, funnel)
    dropped += global_drops
    funnel.check()

    kept.sort(key=lambda r: r["id"])
    corpus_dir = out / "corpus"
    parts = _write_shards(kept, corpus_dir, cfg.shard_size)

    noise = _noise_check(recipe.data.corpus, kept, [_dropped_row(r, cfg.pii) for r in dropped])
    sets = {}
    for name, source, required in (
        ("sft", recipe.data.sft, ("messages",)),
        ("preferences", recipe.data.preferences, ("prompt", "chosen", "rejected")),
    ):
        if source is not None:
            sets[name] = _curate_records(name, source, required, cfg, eval_items, freq, out)
            quarantined += sets[name].pop("quarantined")
            dropped += sets[name].pop("dropped_rows")

    dropped_rows = [_dropped_row(r, cfg.pii) for r in _sample_dropped(dropped, cfg.max_dropped_per_reason)]
    _write_shards(dropped_rows, out / "dropped", max(cfg.shard_size, 1))
    if cfg.pii:
        quarantined = [dataclasses.replace(q, raw=pii.redact(q.raw).text) for q in quarantined]
    _write_jsonl([q.__dict__ for q in quarantined], out / "quarantine.jsonl")
    _write_jsonl(flagged, out / "flagged.jsonl")

    metrics: dict[str, Any] = {
        "read": len(docs),
        "quarantined": len(quarantined),
        "kept": len(kept),
        "dropped": sum(sum(s.dropped.values()) for s in funnel.steps.values()),
        "shards": len(shards),
        "shards_resumed": resumed,
        "executor": cfg.executor,
        "funnel": funnel.to_list(),
        "details": dict(sorted(details.items())),
        "flagged_contamination": len(flagged),
        "eval_items_unmatchable": len(unmatchable),
        "corpus_parts": parts,
        "records": sets,
        "quarantine": [q.__dict__ for q in quarantined[:50]],
    }
    if noise:
        metrics["planted_noise"] = noise
    from verticalft.curation.report import write_report

    report = write_report(out, recipe.name, metrics)
    outputs = {"corpus": str(corpus_dir), "report": str(report), "dropped": str(out / "dropped")}
    outputs |= {name: str(out / name) for name in sets}
    summary = (
        f"{len(docs)} docs → {len(kept)} kept, {metrics['dropped']} dropped, {len(quarantined)} quarantined"
        + "".join(f"; {n} {s['in']} → {s['kept']}" for n, s in sets.items())
    )
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)


def _eval_items(source: Source | None) -> list[list[str]]:
    if source is None:
        return []
    rows, _ = read_sources([source], ("prompt",))
    return [[str(r["id"]), records.content(r["prompt"])] for r in rows]


def _save_shard(folder: Path, k: int, key: str, res: dict[str, Any]) -> None:
    if res["kept"]:
        _write_parquet(res["kept"], folder / f"shard-{k:05d}.kept.parquet")
    meta = {"hash": key, "n_kept": len(res["kept"]), **{f: res[f] for f in SHARD_FIELDS}}
    atomic_write_json(folder / f"shard-{k:05d}.json", meta)  # the marker: written last


def _load_shard(folder: Path, k: int) -> dict[str, Any]:
    meta = json.loads((folder / f"shard-{k:05d}.json").read_text())
    kept = _read_parquet(folder / f"shard-{k:05d}.kept.parquet") if meta["n_kept"] else []
    return {"kept": kept, **{f: meta[f] for f in SHARD_FIELDS}}


def _global_steps(
    cfg: CurateStage,
    kept: list[dict[str, Any]],
    eval_items: list[list[str]],
    freq: Counter,
    funnel: Funnel,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Cross-shard steps: exact dedup, near dedup, decontamination (each audited)."""
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

    pairs = [(r["id"], r["text"]) for r in kept]
    if cfg.dedup.exact:
        remove("exact_dedup", "exact_duplicate", {d.id: d.kept for d in exact_duplicates(pairs)})
    if cfg.dedup.near is not None:
        n = cfg.dedup.near
        conf = near_dedup.NearDedupConfig(n.threshold, n.num_perm, n.ngram, verify=n.verify)
        remove(
            "near_dedup",
            "near_duplicate",
            {d.id: d.kept for d in near_dedup.near_duplicates([(r["id"], r["text"]) for r in kept], conf)},
        )
    flagged: list[dict[str, Any]] = []
    index = _eval_index(cfg, eval_items)
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


def _curate_records(
    name: str,
    source: Source,
    required: tuple[str, ...],
    cfg: CurateStage,
    eval_items: list[list[str]],
    corpus_freq: Counter,
    out: Path,
) -> dict[str, Any]:
    """SFT / preference rows: field rules, PII redaction, prompt dedup, decontamination."""
    rows, bad = read_sources([source], required)
    rc = cfg.records
    rules = records.RecordRules(
        rc.dedup_prompt, rc.min_response_chars, rc.max_prompt_chars, rc.max_response_chars
    )
    funnel = Funnel()
    kept, dropped, pii_counts = [], [], Counter()
    for r in rows:
        reason = records.record_reason(r, rules)
        funnel.record("records", reason)
        if reason:
            dropped.append({"id": r["id"], "row": r, "step": f"{name}.records", "reason": reason})
            continue
        if cfg.pii:
            r = _redact_row(r, pii_counts)
        kept.append(r)
    funnel.step("records")
    by_id = {r["id"]: r for r in kept}
    dups = {d.id: d.kept for d in records.prompt_duplicates(by_id.items())} if rc.dedup_prompt else {}
    mode = getattr(cfg.decontaminate, name)
    index = _eval_index(cfg, eval_items) if mode != "off" else None
    if index is not None:
        prompts = [records.fields_of(r)["prompt"] for r in kept]
        index = index.without_common(
            corpus_freq + index.doc_frequency(prompts), cfg.decontaminate.max_train_docs
        )
    survivors, flagged = [], 0
    for r in kept:
        if r["id"] in dups:
            funnel.record("prompt_dedup", "duplicate_prompt")
            dropped.append(
                {
                    "id": r["id"],
                    "row": r,
                    "step": f"{name}.prompt_dedup",
                    "reason": "duplicate_prompt",
                    "detail": dups[r["id"]],
                }
            )
            continue
        funnel.record("prompt_dedup", None)
        m = index.match(records.fields_of(r)["prompt"]) if index is not None else None
        if m is not None:
            flagged += 1
        if m is not None and mode == "drop":
            funnel.record("decontaminate", "contains_eval_item")
            dropped.append(
                {
                    "id": r["id"],
                    "row": r,
                    "step": f"{name}.decontaminate",
                    "reason": "contains_eval_item",
                    "detail": m.eval_id,
                }
            )
            continue
        funnel.record("decontaminate", None)
        survivors.append(r)
    funnel.check()
    _write_shards(survivors, out / name, max(len(survivors), 1))
    return {
        "in": len(rows),
        "kept": len(survivors),
        "quarantined": bad,
        "dropped_rows": dropped,
        "funnel": funnel.to_list(),
        "pii": dict(pii_counts),
        "contaminated": flagged,
    }


def _redact_row(row: dict[str, Any], counts: Counter) -> dict[str, Any]:
    """The row with PII redacted in every message content / text field."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            red = pii.redact(value)
            counts.update(red.counts)
            return red.text
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) if k == "content" else v for k, v in value.items()}
        return value

    return {k: clean(v) if k in ("messages", "prompt", "chosen", "rejected") else v for k, v in row.items()}


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    from verticalft.rundir import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))


def _noise_check(
    sources: list[Source], kept: list[dict[str, Any]], dropped: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """When a source ships `noise_labels.jsonl` beside it (the samples do), how much was caught."""
    from verticalft.curation.noise_check import check_planted_noise

    labels = []
    for s in sources:
        path = Path(s.path).parent / "noise_labels.jsonl"
        if path.is_file():
            labels += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not labels:
        return None
    return check_planted_noise(labels, {r["id"]: r["text"] for r in kept}, {str(r["id"]): r for r in dropped})
