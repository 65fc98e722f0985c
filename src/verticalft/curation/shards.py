"""The per-shard half of curation: the filter chain on one shard (runs in a worker: local process
pool or Ray), shards saved with a marker written last so a killed run redoes only unfinished
ones, and the Parquet I/O of shards, corpus parts and the audit copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verticalft.curation import decontam
from verticalft.curation.audit import Funnel, sample_dropped
from verticalft.curation.chain import build_chain, run_chain
from verticalft.curation.executors import map_shards
from verticalft.curation.sources import Quarantined, stream_sources
from verticalft.recipe import CurateStage, Source
from verticalft.rundir import atomic_write_json

CORPUS_COLUMNS = ["id", "text", "source", "date", "license"]
MERGE_ROW_GROUP = 256  # rows per row group of files `merge_parts` streams (one group per file in memory)
MERGE_FANIN = 32  # files `merge_parts` reads at once; more go through merge rounds


@dataclass(frozen=True)
class InputShard:
    """Shard `k` of the corpus as read: its rows' file (absent when an earlier attempt finished the
    shard) and the key of its rows + settings, which names its result."""

    k: int
    path: str
    key: str


def cut_shards(
    sources: list[Source], size: int, cfg_json: str, eval_json: str, folder: Path
) -> tuple[list[InputShard], list[Quarantined], int]:
    """Stream the corpus sources into shards of `size` rows (`input-KKKKK.parquet`), holding one
    shard at a time; returns the shards, the quarantined rows and how many records were read."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[InputShard] = []
    bad: list[Quarantined] = []
    rows: list[dict[str, Any]] = []
    read = 0

    def flush() -> None:
        k = len(shards)
        key = shard_hash(rows, cfg_json, eval_json)
        path = folder / f"input-{k:05d}.parquet"
        if _finished(folder, k, key) is None:
            write_parquet(rows, path)
        shards.append(InputShard(k, str(path), key))
        rows.clear()

    for item in stream_sources(sources):
        if isinstance(item, Quarantined):
            bad.append(item)
            continue
        rows.append(corpus_row(item))
        read += 1
        if len(rows) == size:
            flush()
    if rows:
        flush()
    return shards, bad, read


def curate_shard(
    input_path: str, cfg_json: str, eval_json: str, folder: str, k: int, key: str
) -> dict[str, Any]:
    """The per-document chain on one shard, plus the eval n-gram counts of what it kept; the kept
    rows go to the shard's file here, in the worker, and only the summary travels back.

    Top-level and config-in/files-out so a process pool or Ray can run it anywhere (on a cluster
    `folder` must be storage every node sees).
    """
    cfg = CurateStage.model_validate_json(cfg_json)
    res = run_chain(read_parquet(Path(input_path)), build_chain(cfg))
    index = eval_index(cfg, json.loads(eval_json))
    freq = index.doc_frequency(r["text"] for r in res.kept) if index else Counter()
    meta = {
        # A capped audit sample can be cut per shard: the first `cap` per reason of the corpus are
        # among the first `cap` of their shard.
        "dropped": res.dropped
        if cfg.max_dropped_per_reason is None
        else sample_dropped(res.dropped, cfg.max_dropped_per_reason),
        "funnel": res.funnel.to_list(),
        "details": dict(res.details),
        "doc_freq": dict(freq),
    }
    save_shard(Path(folder), k, key, res.kept, meta)
    return {"hash": key, "n_kept": len(res.kept), **meta}


def eval_index(cfg: CurateStage, items: list[list[str]]) -> decontam.EvalIndex | None:
    """The eval set's n-gram index with the recipe's decontamination settings (None: no eval set)."""
    if not items:
        return None
    d = cfg.decontaminate
    return decontam.EvalIndex.build([(i, t) for i, t in items], d.ngram, d.min_overlap)


@dataclass
class ShardSummaries:
    """The shards' summaries folded as they arrive, so the driver never holds them all: summed
    funnel, filter details and eval n-gram document frequencies, each shard's key and kept count,
    and the dropped records (only the audit sample when `cap` is set)."""

    cap: int | None = None
    funnel: Funnel = field(default_factory=Funnel)
    details: Counter = field(default_factory=Counter)
    freq: Counter = field(default_factory=Counter)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    kept: dict[int, tuple[str, int]] = field(default_factory=dict)  # shard → (key, kept rows)
    resumed: int = 0

    def add(self, k: int, summary: dict[str, Any], reused: bool) -> None:
        self.funnel.merge(Funnel.from_list(summary["funnel"]))
        self.details.update(summary["details"])
        self.freq.update(summary["doc_freq"])
        self.dropped += summary["dropped"]
        if self.cap is not None and len(self.dropped) > 4 * self.cap:
            self.dropped = sample_dropped(self.dropped, self.cap)
        self.kept[k] = (summary["hash"], summary["n_kept"])
        self.resumed += reused


def run_shards(
    shards: list[InputShard],
    *,
    cfg_json: str,
    eval_json: str,
    folder: Path,
    executor: str,
    workers: int | None,
    summaries: ShardSummaries,
) -> None:
    """Every shard's summary (`curate_shard`'s, without the kept rows) folded into `summaries`,
    reusing the ones an earlier attempt finished. A shard's input file is removed once its result
    is on disk."""
    from tqdm.auto import tqdm

    jobs, job_shards = [], []
    for s in shards:
        done = _finished(folder, s.k, s.key)
        if done is not None:
            summaries.add(s.k, done, reused=True)
        else:
            jobs.append((s.path, cfg_json, eval_json, str(folder), s.k, s.key))
            job_shards.append(s)
    with tqdm(total=len(shards), initial=summaries.resumed, desc=f"curate ({executor})", unit="shard") as bar:
        for j, res in map_shards(curate_shard, jobs, executor, workers):
            summaries.add(job_shards[j].k, res, reused=False)
            Path(job_shards[j].path).unlink(missing_ok=True)
            bar.update()


def shard_hash(rows: list[dict[str, Any]], cfg_json: str, eval_json: str) -> str:
    h = hashlib.sha256(cfg_json.encode() + eval_json.encode())
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _marker(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.json"


def _finished(folder: Path, k: int, key: str) -> dict[str, Any] | None:
    """Shard k's summary when an earlier attempt finished it with these rows and settings."""
    marker = _marker(folder, k)
    meta = json.loads(marker.read_text()) if marker.is_file() else None
    return meta if meta is not None and meta.get("hash") == key else None


def kept_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.kept.parquet"


def save_shard(folder: Path, k: int, key: str, kept: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    if kept:
        write_parquet(kept, kept_path(folder, k))
    atomic_write_json(_marker(folder, k), {"hash": key, "n_kept": len(kept), **meta})  # the marker: last


def load_kept(folder: Path, k: int, n_kept: int) -> list[dict[str, Any]]:
    return read_parquet(kept_path(folder, k)) if n_kept else []


# --------------------------------------------------------------------------- files
def corpus_row(r: dict[str, Any]) -> dict[str, Any]:
    """The fixed corpus columns; any other fields of the source row travel as JSON in `meta`."""
    extra = {k: v for k, v in r.items() if k not in CORPUS_COLUMNS}
    row = {k: (None if r.get(k) is None else str(r[k])) for k in CORPUS_COLUMNS}
    row["meta"] = json.dumps(extra, sort_keys=True, default=str) if extra else None
    return row


def write_parquet(rows: list[dict[str, Any]], path: Path, row_group_size: int | None = None) -> None:
    """Rows as one Parquet file, atomically. `row_group_size`: rows per row group (default: all in
    one), the unit a streaming reader holds in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp, row_group_size=row_group_size)
    tmp.replace(path)


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_parts(rows: list[dict[str, Any]], folder: Path, size: int) -> list[str]:
    """Rows (already in their final order) as `part-00000.parquet` … of `size` rows each."""
    _clear_parts(folder)
    return [
        _write_part(rows[start : start + size], folder, k)
        for k, start in enumerate(range(0, max(len(rows), 1), size))
    ]


def merge_parts(paths: list[str], folder: Path, size: int) -> list[str]:
    """`write_parts` of the rows of `paths` (each sorted by id) merged by id, streamed: one row group
    from each of at most `MERGE_FANIN` files in memory (write them with small ones:
    `MERGE_ROW_GROUP`), never the corpus. More files are merged in rounds through temporary files
    — the external merge sort — so memory does not grow with the number of shards. Same parts,
    same bytes as `write_parts`."""
    _clear_parts(folder)
    scratch = folder / ".merge"
    shutil.rmtree(scratch, ignore_errors=True)
    rounds = 0
    while len(paths) > MERGE_FANIN:
        groups = [paths[i : i + MERGE_FANIN] for i in range(0, len(paths), MERGE_FANIN)]
        paths = [_merge_file(g, scratch / f"round{rounds}-{j:05d}.parquet") for j, g in enumerate(groups)]
        rounds += 1
    names = [_write_part(part, folder, k) for k, part in enumerate(_chunks(_merged(paths), size))]
    if not names:
        names.append(_write_part([], folder, 0))
    shutil.rmtree(scratch, ignore_errors=True)
    return names


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive lists of `size` rows (the last shorter), streamed."""
    import itertools

    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _sorted_rows(path: str) -> Iterator[dict[str, Any]]:
    """A Parquet file's rows, one row group in memory at a time (Arrow's batch iterator reads ahead,
    several times that per open file: `benchmarks/bench_merge_memory.py`)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path, pre_buffer=False)
    for i in range(f.num_row_groups):
        yield from f.read_row_group(i).to_pylist()


def _merged(paths: list[str]) -> Iterator[dict[str, Any]]:
    import heapq

    return heapq.merge(*(_sorted_rows(p) for p in paths), key=lambda r: r["id"])


def _merge_file(paths: list[str], path: Path) -> str:
    """One merge round: `paths` merged by id into `path`, in row groups of `MERGE_ROW_GROUP`. The
    schema is the inputs' unified one (a column all-null in one file is typed in another); the
    final parts are built from the rows again, as `write_parts` builds them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    with pq.ParquetWriter(path, schema) as writer:
        for batch in _chunks(_merged(paths), MERGE_ROW_GROUP):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return str(path)


def _clear_parts(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()


def _write_part(rows: list[dict[str, Any]], folder: Path, k: int) -> str:
    path = folder / f"part-{k:05d}.parquet"
    write_parquet(rows, path)
    return path.name
