"""The curation stage's readers: every recipe source as a stream of records or quarantined rows.

Why not `data.load_source`: training stages want a clean `Dataset` and stop on the first bad row
(`DataError` naming file:line). Curation reads raw, messy domain data, so it must never stop on a
bad row, and must lose nothing silently: a row it cannot use is yielded as `Quarantined` (file,
line, reason, the raw text) for the stage to write to `quarantine.jsonl` and count in the report.
Only a recipe problem (a path that does not exist, an unsupported file type, a column the whole
file lacks) raises `DataError`, since no row of such a source could ever be read.

Every record is a dict with the row's own fields plus `id`, `license` and `source`; a text record
also has `text`. Order is deterministic (files sorted), so curated output is reproducible.

Formats: .jsonl/.ndjson (line by line, in binary; also gzipped, .jsonl.gz), .json (a list of
objects; also .json.gz), .parquet (batch by batch), .csv, a folder of Parquet shards, a
`save_to_disk` folder (`datasets.load_from_disk`), a folder of .txt/.html/.htm pages
(HTML → text with trafilatura, tables kept), and `hf://name` (`datasets.load_dataset` with the
source's config/revision/data_files; `streaming: true` reads it row by row).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verticalft import formats
from verticalft.data import (
    HF_SCHEME,
    DataError,
    data_suffix,
    hf_error,
    is_saved_dataset,
    load_saved,
    open_bytes,
    open_hf,
    parquet_files,
    parse_jsonl,
)
from verticalft.recipe import Source

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

RAW_CHARS = 500  # how much of an offending row a quarantine entry keeps
PAGE_SUFFIXES = (".txt", ".html", ".htm")
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", *PAGE_SUFFIXES)
GZ_SUFFIXES = (".jsonl", ".ndjson", ".json")  # what may come gzipped
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Quarantined:
    """A row (or whole file, `line` 0) curation could not use, with why and what it held."""

    file: str  # path, or `hf://name`
    line: int  # 1-based: line for jsonl/csv, row (item) number for parquet/json/hf, 0 for a whole file
    error: str
    raw: str  # the offending row, truncated to RAW_CHARS


def iter_records(source: Source, required: tuple[str, ...] = ()) -> Iterator[dict[str, Any] | Quarantined]:
    """Every row of `source` as a record dict, or as `Quarantined` when it cannot be used.

    With no `required` fields the text contract applies: `source.text_field` must be a non-empty
    string, stored as `text`. Otherwise (e.g. `("messages",)` for SFT, `("prompt", "chosen",
    "rejected")` for preferences) those fields must be present and not null, and no text is needed.
    Raises `DataError` at once (not on first iteration) when the path does not exist or has an
    unsupported type.
    """
    if source.path.startswith(HF_SCHEME):
        ds = open_hf(source, source.streaming)  # opened now: a bad name fails here, not on first iteration
        stem = Path(source.path[len(HF_SCHEME) :].rstrip("/")).name or "hf"
        return _dataset_records(source, ds, required, source.path, stem)
    path = Path(source.path)
    if not path.exists():
        raise DataError(f"{path}: not found (relative paths resolve from {Path.cwd()})")
    if is_saved_dataset(path):
        return _dataset_records(source, load_saved(path, source.split), required, str(path), path.name)
    if path.is_dir() and parquet_files(path):
        return _parquet_folder_records(source, path, required)
    if path.is_dir():
        return _folder_records(source, path, required)
    if data_suffix(path) not in FILE_SUFFIXES or (_gzipped(path) and data_suffix(path) not in GZ_SUFFIXES):
        raise DataError(
            f"{path}: unsupported format '{''.join(path.suffixes[-2:]) if _gzipped(path) else path.suffix}' "
            "(use .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv, .txt, .html or a folder of "
            ".txt/.html pages)"
        )
    return _file_records(source, path, required)


def _gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _stem(path: Path) -> str:
    """The file's stem for default ids, through `.gz` (`sft.jsonl.gz` → `sft`, like `sft.jsonl`)."""
    return Path(path.stem).stem if _gzipped(path) else path.stem


# --------------------------------------------------------------------------- one record
def stream_sources(
    sources: list[Source], required: tuple[str, ...] = ()
) -> Iterator[dict[str, Any] | Quarantined]:
    """Every record of `sources` in order, or `Quarantined`; an id repeated within a source is
    quarantined naming the source of its first use, one repeated from another source gets `#<index>`. Holds a 16-byte digest per id seen, never the records, so a corpus of
    any size streams through (the curate stage cuts it into shards as it goes)."""
    for _, item in indexed_records(sources, required):
        yield item


def indexed_records(
    sources: Sequence[Source], required: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, Any] | Quarantined]]:
    """`stream_sources` with the index of the source each item came from: a set of several
    sources is curated as one (dedup across them) but written per source, for its weight."""
    first: dict[bytes, int] = {}
    for n, source in enumerate(sources):
        for item in iter_records(source, required):
            if isinstance(item, Quarantined):
                yield n, item
                continue
            digest = id_digest(item["id"])
            if digest in first and first[digest] != n:
                # the same id in another source of the set (two files named `train.jsonl` give the
                # same default ids `train:<line>`): told apart by the source's index, nothing lost
                item = {**item, "id": f"{item['id']}#{n}"}
                digest = id_digest(item["id"])
            if digest in first:
                error = f"duplicate id {item['id']!r} (first in {sources[first[digest]].path})"
                yield n, Quarantined(source.path, 0, error, "")
            else:
                first[digest] = n
                yield n, item


def id_digest(record_id: Any) -> bytes:
    """16 bytes per id: what `indexed_records` holds to find repeats in a corpus of any size."""
    return hashlib.blake2b(repr(record_id).encode(), digest_size=16).digest()


def read_sources(
    sources: list[Source], required: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], list[Quarantined]]:
    """Every good record of `sources` (ids unique) and every quarantined row, in memory."""
    rows: list[dict[str, Any]] = []
    bad: list[Quarantined] = []
    for item in stream_sources(sources, required):
        if isinstance(item, Quarantined):
            bad.append(item)
        else:
            rows.append(item)
    return rows, bad


def eval_prompts(source: Source | None) -> list[list[str]]:
    """[id, prompt text] of every eval item: what decontamination matches against — the user
    turns of the item, its `prompt` or the user turns of its `messages` (`scoring.item_user_text`).
    Read with `answer` required, the field every eval item has, whichever of the two it asks with."""
    from verticalft.scoring import item_user_text

    if source is None:
        return []
    rows, _ = read_sources([source], ("answer",))
    return [[str(r["id"]), text] for r in rows if (text := item_user_text(r))]


def _raw(value: bytes | str) -> str:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    text = text.rstrip("\r\n")
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + "…"


def _dump(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)[: RAW_CHARS + 1]


def _fields(names: list[str]) -> str:
    quoted = ", ".join(repr(n) for n in names)
    return f"field {quoted}" if len(names) == 1 else f"fields {quoted}"


def _problem(row: dict[str, Any], field: str, required: tuple[str, ...]) -> str | None:
    """Why `row` breaks the record contract (text in `field`, or the `required` fields), or None."""
    if required:
        missing = [k for k in required if k not in row]
        if missing:
            return f"missing {_fields(missing)}"
        null = [k for k in required if row[k] is None]
        return f"{_fields(null)} null" if null else None
    if field not in row:
        return f"missing field '{field}'"
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        return f"field '{field}' is not a non-empty string"
    return None


def _record(
    row: dict[str, Any],
    source: Source,
    *,
    required: tuple[str, ...],
    file: str,
    line: int,
    stem: str,
    raw: bytes | str | None = None,
    page_id: str | None = None,
) -> dict[str, Any] | Quarantined:
    """The record of one parsed row: contract checked, `id`/`license`/`source` filled in.

    `raw` is the row as read (a JSONL or CSV line), else the row is dumped as JSON. A page (from a
    folder) has its text in `text` whatever the source's `text_field`, and its path as `page_id`.
    """
    field = "text" if page_id is not None else source.text_field
    kind = formats.kind_of(required)
    if kind is not None and page_id is None:  # an SFT/preference set: any format users have
        try:
            row = formats.normalise_row(row, kind, source.format, source.columns).row
        except formats.FormatError as exc:
            return Quarantined(file, line, str(exc), _raw(_dump(row) if raw is None else raw))
    problem = _problem(row, field, required)
    if problem:
        return Quarantined(file, line, problem, _raw(_dump(row) if raw is None else raw))
    rec = dict(row)
    if not required and field != "text":
        rec["text"] = rec.pop(field)
    own_id = page_id if page_id is not None else row.get(source.id_field)
    rec["id"] = str(own_id) if own_id is not None and own_id != "" else f"{stem}:{line}"
    own_license = row.get("license")
    rec["license"] = own_license if isinstance(own_license, str) and own_license.strip() else source.license
    rec["source"] = row["source"] if row.get("source") is not None else source.path
    return rec


def _check_columns(where: str, columns: Iterable[str], source: Source, required: tuple[str, ...]) -> None:
    """A column no row of a table has is the recipe's mistake (wrong `text_field`?), not the rows'."""
    columns = list(columns)
    kind = formats.kind_of(required)
    if kind is not None:  # SFT/preference rows may come in any format users have
        problem = formats.columns_problem(columns, kind, source.format, source.columns)
        if problem:
            raise DataError(f"{where}: {problem}; has {', '.join(columns)}")
        return
    missing = [k for k in (required or (source.text_field,)) if k not in columns]
    if missing:
        hint = "" if required else " (set the source's text_field)"
        raise DataError(f"{where}: no column(s) {', '.join(missing)}{hint}; has {', '.join(columns)}")


# --------------------------------------------------------------------------- files
def _file_records(
    source: Source, path: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    suffix = data_suffix(path)
    if suffix in {".jsonl", ".ndjson"}:
        yield from _jsonl_records(source, path, required)
    elif suffix == ".json":
        yield from _json_records(source, path, required)
    elif suffix == ".parquet":
        yield from _parquet_records(source, path, required)
    elif suffix == ".csv":
        yield from _csv_records(source, path, required)
    else:
        yield _page_record(source, path, path.name, required)


def _jsonl_records(
    source: Source, path: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    stem = _stem(path)
    try:
        for line, row, raw in parse_jsonl(path):
            if isinstance(row, str):
                yield Quarantined(str(path), line, row, _raw(raw))
            else:
                yield _record(row, source, required=required, file=str(path), line=line, stem=stem, raw=raw)
    except DataError as exc:  # a truncated .jsonl.gz: the rows before it stand, the rest is lost
        yield Quarantined(str(path), 0, str(exc), "")


def _json_records(
    source: Source, path: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    with open_bytes(path) as f:
        try:
            data = f.read()
        except (OSError, EOFError) as exc:  # a corrupt .json.gz
            yield Quarantined(str(path), 0, f"cannot decompress ({exc})", "")
            return
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        yield Quarantined(str(path), 0, f"not UTF-8 ({exc.reason})", _raw(data[: 4 * RAW_CHARS]))
        return
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines under a .json name, as `datasets` accepts too
            yield from _jsonl_records(source, path, required)
        else:
            msg = f"not valid JSON ({exc.msg}, line {exc.lineno})"
            yield Quarantined(str(path), 0, msg, _raw(data[: 4 * RAW_CHARS]))
        return
    if not isinstance(items, list):
        msg = f"expected a JSON list of objects, got {type(items).__name__}"
        yield Quarantined(str(path), 0, msg, _raw(data[: 4 * RAW_CHARS]))
        return
    for n, row in enumerate(items, start=1):
        if not isinstance(row, dict):
            yield Quarantined(
                str(path), n, f"expected a JSON object, got {type(row).__name__}", _raw(_dump(row))
            )
        else:
            yield _record(row, source, required=required, file=str(path), line=n, stem=_stem(path))


def _parquet_records(
    source: Source, path: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield Quarantined(str(path), 0, f"not a readable Parquet file ({exc})", "")
        return
    _check_columns(str(path), pf.schema_arrow.names, source, required)
    n = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):  # never the whole file in memory
        for row in batch.to_pylist():
            n += 1
            yield _record(row, source, required=required, file=str(path), line=n, stem=path.stem)


def _csv_records(
    source: Source, path: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    # Long documents exceed csv's default 128 KiB field limit; the limit is process-wide.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # surrogateescape: a non-UTF-8 row decodes to lone surrogates we can spot, instead of an
    # exception that would end the whole file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        end = 0  # last physical line consumed so far
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                yield Quarantined(str(path), start, f"not valid CSV ({exc})", "")
                continue
            end = reader.line_num
            if not cells:
                continue  # blank line
            raw = ",".join(cells)
            if not _is_utf8(raw):
                bad = raw.encode("utf-8", errors="surrogateescape")
                if header is None:
                    yield Quarantined(str(path), start, "header not UTF-8", _raw(bad))
                    return
                yield Quarantined(str(path), start, "not UTF-8", _raw(bad))
                continue
            if header is None:
                header = cells
                _check_columns(str(path), header, source, required)
                continue
            if len(cells) != len(header):
                yield Quarantined(
                    str(path), start, f"row has {len(cells)} field(s), header has {len(header)}", _raw(raw)
                )
                continue
            yield _record(
                dict(zip(header, cells, strict=True)),
                source,
                required=required,
                file=str(path),
                line=start,
                stem=path.stem,
                raw=raw,
            )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- folders of pages
def _folder_records(
    source: Source, folder: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    for rel, path in files:
        if path.suffix.lower() in PAGE_SUFFIXES:
            yield _page_record(source, path, rel, required)
        elif not any(part.startswith(".") for part in Path(rel).parts):  # hidden files: not data
            yield Quarantined(
                str(path),
                0,
                f"unsupported file type '{path.suffix}' in a folder source (only .txt/.html/.htm; list "
                "data files as sources of their own, or use hf://<folder>)",
                "",
            )


def _page_record(
    source: Source, path: Path, rel: str, required: tuple[str, ...]
) -> dict[str, Any] | Quarantined:
    """One .txt or .html page → one record, `id` its path relative to the source folder."""
    data = path.read_bytes()
    row: dict[str, Any]
    if path.suffix.lower() == ".txt":
        try:
            row = {"text": data.decode("utf-8-sig")}
        except UnicodeDecodeError as exc:
            return Quarantined(str(path), 0, f"not UTF-8 ({exc.reason})", _raw(data[:RAW_CHARS]))
    else:
        html = _html_row(data)
        if html is None:
            return Quarantined(str(path), 0, "no text extracted from HTML", _raw(data[:RAW_CHARS]))
        row = html
    if not required and not row["text"].strip():
        return Quarantined(str(path), 0, "no text (empty page)", _raw(data[:RAW_CHARS]))
    return _record(
        row,
        source,
        required=required,
        file=str(path),
        line=0,
        stem=path.stem,
        raw=data[: 4 * RAW_CHARS],
        page_id=rel,
    )


def _html_row(data: bytes) -> dict[str, Any] | None:
    """Main text of an HTML page (navigation, menus, footers dropped; tables kept) and its date."""
    import trafilatura
    from trafilatura.settings import Document

    doc = trafilatura.bare_extraction(
        data, with_metadata=True, include_tables=True, include_comments=False, include_images=False
    )
    # a Document (a dict only with the deprecated as_dict=True), or None when nothing was found
    if not isinstance(doc, Document) or not (doc.text or "").strip():
        return None
    row: dict[str, Any] = {"text": doc.text}
    if doc.date:
        row["date"] = doc.date
    return row


# --------------------------------------------------------------------------- datasets
def _parquet_folder_records(
    source: Source, folder: Path, required: tuple[str, ...]
) -> Iterator[dict[str, Any] | Quarantined]:
    """A folder of Parquet shards (Spark/pandas/curate output): each shard batch by batch, the same
    files the training stages read (`data.parquet_files`)."""
    for path in parquet_files(folder):
        yield from _parquet_records(source, path, required)


def _dataset_records(
    source: Source, ds: Dataset | IterableDataset, required: tuple[str, ...], where: str, stem: str
) -> Iterator[dict[str, Any] | Quarantined]:
    """Rows of a `datasets` table (an `hf://` set, a save_to_disk folder) or stream (`streaming:
    true`: read row by row, with a progress bar, never downloaded whole), numbered from 1."""
    import datasets
    from tqdm.auto import tqdm

    columns = ds.column_names
    if columns is not None:  # a stream of JSON files knows its columns only from its rows
        _check_columns(where, columns, source, required)
    rows = ds
    if isinstance(ds, datasets.IterableDataset):
        rows = tqdm(ds, desc=f"read {where}", unit="row", mininterval=5.0)
    try:
        for n, row in enumerate(rows, start=1):
            if n == 1 and columns is None:
                _check_columns(where, row, source, required)
            yield _record(row, source, required=required, file=where, line=n, stem=stem)
    except DataError:
        raise
    except Exception as exc:  # a stream breaks while read (network, a bad file): said plainly
        raise hf_error(source, exc) from exc
