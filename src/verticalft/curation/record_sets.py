"""The SFT and preference sets through curation: field-aware rules, PII redaction, prompt dedup and
decontamination of prompts against the eval set (n-grams common in training data do not count)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from verticalft.curation import pii, records
from verticalft.curation.audit import Funnel
from verticalft.curation.decontam import EvalIndex
from verticalft.curation.shards import eval_index, write_parts
from verticalft.curation.sources import Quarantined, indexed_records
from verticalft.data import weighted_rows
from verticalft.recipe import CurateStage, SetSource


def curate_records(
    *,
    name: str,
    sources: list[SetSource],
    required: tuple[str, ...],
    cfg: CurateStage,
    eval_items: list[list[str]],
    corpus_freq: Counter,
    out: Path,
) -> dict[str, Any]:
    """One set (`sft` / `preferences`) written to `out/<name>/<i>/`, a folder per source `i`;
    returns its counts, funnel, quarantined rows and dropped rows.

    The sources are curated as one set (rules, prompt dedup across them, decontamination) but
    written apart and unweighted: the weights apply when training reads them (`data.load_sets`,
    through `StageContext.curated`), the same code as for raw sources, so the curated data holds
    each record once and a weight change does not redo curation."""
    rows, bad, origin = _read_set(sources, required)
    funnel = Funnel()
    dropped: list[dict[str, Any]] = []  # every dropped row, with its step and reason, for the audit
    kept, pii_counts = _apply_record_rules(rows, name, cfg, funnel, dropped)
    mode = getattr(cfg.decontaminate, name)
    index = _eval_index(kept, cfg, eval_items, corpus_freq) if mode != "off" else None
    survivors, flagged = _dedup_and_decontaminate(
        kept, name, cfg=cfg, index=index, mode=mode, funnel=funnel, dropped=dropped
    )
    funnel.check()
    per_source = _write_per_source(survivors, origin, len(sources), out / name)
    return {
        "in": len(rows),
        "kept": len(survivors),
        "sources": [
            {"path": s.path, "kept": len(k), "weight": s.weight, "trained": weighted_rows(len(k), s.weight)}
            for s, k in zip(sources, per_source, strict=True)
        ],
        "quarantined": bad,
        "dropped_rows": dropped,
        "funnel": funnel.to_list(),
        "pii": dict(pii_counts),
        "contaminated": flagged,
    }


def _read_set(
    sources: list[SetSource], required: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[Quarantined], dict[str, int]]:
    """(rows, quarantined rows, source number of each row id): the sources read as one set, so
    the steps below see every source's rows together."""
    rows, bad, origin = [], [], {}
    for i, item in indexed_records(sources, required):
        if isinstance(item, Quarantined):
            bad.append(item)
        else:
            rows.append(item)
            origin[item["id"]] = i
    return rows, bad, origin


def _apply_record_rules(
    rows: list[dict[str, Any]], name: str, cfg: CurateStage, funnel: Funnel, dropped: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Counter]:
    """(kept rows, PII counts): the field-aware rules (empty, truncated, too long…) drop a row;
    a kept one is PII-redacted when the recipe asks. Drops go to `dropped` and the funnel's
    `records` step (which exists even for an empty set)."""
    rc = cfg.records
    rules = records.RecordRules(
        rc.dedup_prompt, rc.min_response_chars, rc.max_prompt_chars, rc.max_response_chars
    )
    kept, pii_counts = [], Counter[str]()
    for r in rows:
        reason = records.record_reason(r, rules)
        funnel.record("records", reason)
        if reason:
            dropped.append({"id": r["id"], "row": r, "step": f"{name}.records", "reason": reason})
            continue
        if cfg.pii:
            r = redact_row(r, pii_counts)
        kept.append(r)
    funnel.step("records")
    return kept, pii_counts


def _eval_index(
    kept: list[dict[str, Any]], cfg: CurateStage, eval_items: list[list[str]], corpus_freq: Counter
) -> EvalIndex | None:
    """The eval items' n-gram index without the n-grams common in training data (the corpus's
    counts plus these prompts'): a prompt sharing only common wording with an eval item is no leak.
    None when there is no eval set."""
    index = eval_index(cfg, eval_items)
    if index is None:
        return None
    prompts = [records.fields_of(r)["prompt"] for r in kept]
    return index.without_common(corpus_freq + index.doc_frequency(prompts), cfg.decontaminate.max_train_docs)


def _dedup_and_decontaminate(
    kept: list[dict[str, Any]],
    name: str,
    *,
    cfg: CurateStage,
    index: EvalIndex | None,
    mode: str,
    funnel: Funnel,
    dropped: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """(survivors, rows whose prompt contains an eval item): a repeated prompt is dropped (the
    first by id stays), then a prompt matching an eval item is counted and, in mode `drop`, dropped."""
    by_id = {r["id"]: r for r in kept}
    dups = (
        {d.id: d.kept for d in records.prompt_duplicates(by_id.items())} if cfg.records.dedup_prompt else {}
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
    return survivors, flagged


def _write_per_source(
    survivors: list[dict[str, Any]], origin: dict[str, int], n_sources: int, folder: Path
) -> list[list[dict[str, Any]]]:
    """The survivors split back by source and written to `folder/<i>/`; returns each source's rows.

    The folder is cleared first: no folder of a source the recipe no longer has. A source that kept
    nothing gets no folder (nothing for training to read)."""
    per_source: list[list[dict[str, Any]]] = [[] for _ in range(n_sources)]
    for r in survivors:
        per_source[origin[r["id"]]].append(r)
    shutil.rmtree(folder, ignore_errors=True)
    for i, kept_rows in enumerate(per_source):
        if kept_rows:
            write_parts(kept_rows, folder / str(i), len(kept_rows))
    return per_source


def redact_row(row: dict[str, Any], counts: Counter) -> dict[str, Any]:
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
