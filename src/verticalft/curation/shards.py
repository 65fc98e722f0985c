"""The per-shard half of curation: the filter chain on one shard (runs in a worker: local process
pool or Ray), shards saved with a marker written last so a killed run redoes only unfinished
ones, and the Parquet I/O of shards, corpus parts and the audit copies.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from verticalft.curation import decontam
from verticalft.curation.chain import build_chain, run_chain
from verticalft.curation.executors import map_shards
from verticalft.recipe import CurateStage
from verticalft.rundir import atomic_write_json, atomic_write_text

CORPUS_COLUMNS = ["id", "text", "source", "date", "license"]
SHARD_FIELDS = ("dropped", "funnel", "details", "doc_freq")


def curate_shard(rows: list[dict[str, Any]], cfg_json: str, eval_json: str) -> dict[str, Any]:
    """The per-document chain on one shard, plus the eval n-gram counts of what it kept.

    Top-level and config-in/data-out so a process pool or Ray can run it anywhere.
    """
    cfg = CurateStage.model_validate_json(cfg_json)
    res = run_chain(rows, build_chain(cfg))
    index = eval_index(cfg, json.loads(eval_json))
    freq = index.doc_frequency(r["text"] for r in res.kept) if index else Counter()
    return {
        "kept": res.kept,
        "dropped": res.dropped,
        "funnel": res.funnel.to_list(),
        "details": dict(res.details),
        "doc_freq": dict(freq),
    }


def eval_index(cfg: CurateStage, items: list[list[str]]) -> decontam.EvalIndex | None:
    """The eval set's n-gram index with the recipe's decontamination settings (None: no eval set)."""
    if not items:
        return None
    d = cfg.decontaminate
    return decontam.EvalIndex.build([(i, t) for i, t in items], d.ngram, d.min_overlap)


def run_shards(
    shards: list[list[dict[str, Any]]],
    cfg_json: str,
    eval_json: str,
    folder: Path,
    executor: str,
    workers: int | None,
) -> tuple[dict[int, dict[str, Any]], int]:
    """Every shard's result, reusing the ones an earlier attempt finished (same content hash);
    returns the results by shard number and how many were reused."""
    from tqdm.auto import tqdm

    results: dict[int, dict[str, Any]] = {}
    jobs, job_shards = [], []
    for k, rows in enumerate(shards):
        key = shard_hash(rows, cfg_json, eval_json)
        marker = folder / f"shard-{k:05d}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("hash") == key:
            results[k] = load_shard(folder, k)  # finished by an earlier (killed) attempt
        else:
            jobs.append((rows, cfg_json, eval_json))
            job_shards.append((k, key))
    resumed = len(results)
    with tqdm(total=len(shards), initial=resumed, desc=f"curate ({executor})", unit="shard") as bar:
        for j, res in map_shards(curate_shard, jobs, executor, workers):
            k, key = job_shards[j]
            save_shard(folder, k, key, res)
            results[k] = res
            bar.update()
    return results, resumed


def shard_hash(rows: list[dict[str, Any]], cfg_json: str, eval_json: str) -> str:
    h = hashlib.sha256(cfg_json.encode() + eval_json.encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def save_shard(folder: Path, k: int, key: str, res: dict[str, Any]) -> None:
    if res["kept"]:
        write_parquet(res["kept"], folder / f"shard-{k:05d}.kept.parquet")
    meta = {"hash": key, "n_kept": len(res["kept"]), **{f: res[f] for f in SHARD_FIELDS}}
    atomic_write_json(folder / f"shard-{k:05d}.json", meta)  # the marker: written last


def load_shard(folder: Path, k: int) -> dict[str, Any]:
    meta = json.loads((folder / f"shard-{k:05d}.json").read_text())
    kept = read_parquet(folder / f"shard-{k:05d}.kept.parquet") if meta["n_kept"] else []
    return {"kept": kept, **{f: meta[f] for f in SHARD_FIELDS}}


# --------------------------------------------------------------------------- files
def corpus_row(r: dict[str, Any]) -> dict[str, Any]:
    """The fixed corpus columns; any other fields of the source row travel as JSON in `meta`."""
    extra = {k: v for k, v in r.items() if k not in CORPUS_COLUMNS}
    row = {k: (None if r.get(k) is None else str(r[k])) for k in CORPUS_COLUMNS}
    row["meta"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_parts(rows: list[dict[str, Any]], folder: Path, size: int) -> list[str]:
    """Rows (already in their final order) as `part-00000.parquet` … of `size` rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    names = []
    for k, start in enumerate(range(0, max(len(rows), 1), size)):
        path = folder / f"part-{k:05d}.parquet"
        write_parquet(rows[start : start + size], path)
        names.append(path.name)
    return names


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
