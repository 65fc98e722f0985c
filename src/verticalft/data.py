"""Dataset loading: local JSONL/JSON/Parquet/CSV files and Hugging Face datasets (`hf://name`).

JSONL is read line by line so a bad row is reported with its file and line number (`DataError`)
instead of an opaque Arrow error deep inside `datasets`. Gzipped JSON Lines / JSON
(`.jsonl.gz`, `.json.gz`: how many datasets ship) read the same as the plain files.
SFT and preference sets go through `load_set`, which turns the formats users have (ShareGPT,
Alpaca, prompt/completion, implicit-prompt preferences; formats.py) into the canonical rows.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from datasets import Dataset

    from verticalft.formats import Kind, Normalised
    from verticalft.recipe import Source

HF_SCHEME = "hf://"


class DataError(ValueError):
    """A data file or row the toolkit cannot use; the message names the file and line."""


def source_files(source: Source) -> list[Path]:
    """Local files behind a source (empty for `hf://` datasets)."""
    return [] if source.path.startswith(HF_SCHEME) else [Path(source.path)]


def missing_files(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if not p.exists()]


def data_suffix(path: Path) -> str:
    """The format suffix of a data file, looking through `.gz` (`x.jsonl.gz` → `.jsonl`)."""
    suffixes = [x.lower() for x in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return suffixes[-2]
    return path.suffix.lower()


def open_bytes(path: Path) -> BinaryIO:
    """The file for reading bytes, decompressed when it is gzipped (named `.gz`)."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")  # type: ignore[return-value]


def parse_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | str, bytes]]:
    """(line number, row or error message, raw line) for every non-blank line of a JSONL file.

    The one place JSONL lines are parsed: `read_jsonl` stops at the first error, curation
    (`curation.sources`) quarantines the row and goes on.
    """
    with open_bytes(path) as f:
        for lineno, raw in _lines(f, path):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield lineno, f"not UTF-8 ({exc.reason})", raw
                continue
            except json.JSONDecodeError as exc:
                yield lineno, f"not valid JSON ({exc.msg})", raw
                continue
            if not isinstance(row, dict):
                yield lineno, f"expected a JSON object, got {type(row).__name__}", raw
                continue
            yield lineno, row, raw


def _lines(f: BinaryIO, path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines; a corrupt gzip stream is a `DataError` naming the file and line it broke at."""
    lineno = 0
    try:
        for lineno, raw in enumerate(f, start=1):  # noqa: B007 - lineno is read after the loop
            yield lineno, raw
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}:{lineno + 1}: cannot decompress ({exc})") from exc


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every row of a JSONL file; `DataError` naming file:line on the first bad one."""
    rows = []
    for lineno, row, _ in parse_jsonl(path):
        if isinstance(row, str):
            raise DataError(f"{path}:{lineno}: {row}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def load_hf(source: Source) -> Dataset:
    """`hf://name` → `datasets.load_dataset(name, split=source.split)`; a local folder works too."""
    import datasets

    name = source.path[len(HF_SCHEME) :]
    try:
        return datasets.load_dataset(name, split=source.split)
    except Exception as exc:  # not found, offline, no such split: a recipe problem, said plainly
        raise DataError(f"{source.path}: cannot load split '{source.split}' ({exc})") from exc


def load_parquet_folder(path: Path) -> Dataset:
    """A folder of Parquet shards (`part-*.parquet`, what the curate stage writes) as one dataset."""
    import datasets

    files = sorted(str(p) for p in path.glob("*.parquet"))
    if not files:
        raise DataError(f"{path}: a folder source must hold .parquet shards; found none")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def load_source(source: Source, required: tuple[str, ...] = ()) -> Dataset:
    """Load one recipe data source as a `datasets.Dataset`."""
    import datasets

    if source.path.startswith(HF_SCHEME):
        ds = load_hf(source)
    else:
        path = Path(source.path)
        if not path.exists():
            raise DataError(f"{path}: file not found (relative paths resolve from {Path.cwd()})")
        if path.is_dir():
            ds = load_parquet_folder(path)
            missing = [k for k in required if k not in ds.column_names]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(ds.column_names)}"
                )
            return ds
        suffix = data_suffix(path)
        if suffix in {".jsonl", ".ndjson"}:
            return datasets.Dataset.from_list(read_jsonl(path, required))
        loader = {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
        if loader is None or (path.suffix.lower() == ".gz" and loader != "json"):
            raise DataError(
                f"{path}: unsupported format '{''.join(path.suffixes[-2:]) if loader else suffix}' "
                "(use .jsonl, .jsonl.gz, .json, .json.gz, .parquet or .csv)"
            )
        ds = datasets.load_dataset(loader, data_files=str(path), split="train")
    missing = [k for k in required if k not in ds.column_names]
    if missing:
        raise DataError(
            f"{source.path}: missing column(s) {', '.join(missing)}; has {', '.join(ds.column_names)}"
        )
    return ds


def load_set(source: Source, kind: Kind) -> Dataset:
    """An SFT (`messages`, plus `tools` when present) or preference (`prompt`/`chosen`/`rejected`)
    set in canonical rows, whatever format the source is in (formats.py); `DataError` names the
    file and line of a row no format fits, what it lacks and which formats were tried.

    A source already canonical comes back as `load_source` reads it, unchanged.
    """
    import datasets

    from verticalft.formats import PREFERENCE_FIELDS, SFT_FIELDS, is_canonical_source

    required = SFT_FIELDS if kind == "sft" else PREFERENCE_FIELDS
    if is_canonical_source(source.format, source.columns):
        return load_source(source, required)
    rows, changed = [], False
    for where, row in located_rows(source):
        norm = normalised(where, row, source, kind)
        changed |= norm.row is not row
        rows.append(norm.row)
    # Nothing converted: read exactly as before, so today's canonical sets give the same data.
    return datasets.Dataset.from_list(rows) if changed else load_source(source, required)


def normalised(where: str, row: dict[str, Any] | str, source: Source, kind: Kind) -> Normalised:
    """One row in canonical form, or `DataError` prefixed with `where` (file:line)."""
    from verticalft.formats import FormatError, normalise_row

    if isinstance(row, str):
        raise DataError(f"{where}: {row}")
    try:
        return normalise_row(row, kind, source.format, source.columns)
    except FormatError as exc:
        raise DataError(f"{where}: {exc}") from exc


def check_set(source: Source, kind: Kind, limit: int = 50) -> tuple[dict[str, int], list[str]]:
    """(rows per detected format, every problem as `file:line: …`) over the first `limit` rows of
    a set: what `verticalft validate` says before any work, so a file in a format no stage can use
    fails at once instead of after curate (which would keep 0 rows) or deep inside sft."""
    from collections import Counter

    found: Counter[str] = Counter()
    problems = []
    try:
        for where, row in located_rows(source, limit):
            try:
                found[normalised(where, row, source, kind).format] += 1
            except DataError as exc:
                problems.append(str(exc))
    except DataError as exc:  # unreadable file, unsupported type
        problems.append(str(exc))
    return dict(found), problems


def located_rows(source: Source, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(`file:line` or `file row n`, row or why it is unreadable) for the rows of a source, the
    first `limit` only when given: what `load_set` and `verticalft validate` check row by row."""
    from itertools import islice

    if not source.path.startswith(HF_SCHEME):
        path = Path(source.path)
        if path.is_file() and data_suffix(path) in {".jsonl", ".ndjson"}:
            parsed = ((f"{path}:{n}", row) for n, row, _ in parse_jsonl(path))
            yield from islice(parsed, limit)
            return
    for i, row in enumerate(islice(load_source(source), limit), start=1):
        yield f"{source.path} row {i}", row


def load_texts(sources: list[Source]) -> Dataset:
    """Concatenate text sources into one dataset with a single `text` column."""
    import datasets

    parts = []
    for s in sources:
        ds = load_source(s, (s.text_field,))
        ds = ds.select_columns([s.text_field])
        if s.text_field != "text":
            ds = ds.rename_column(s.text_field, "text")
        parts.append(ds)
    return datasets.concatenate_datasets(parts)


def mix_replay(domain: Dataset, replay: Dataset, ratio: float, seed: int) -> Dataset:
    """Mix general text into the domain corpus so that `ratio` of the documents are replay.

    Replay rows are sampled (with repetition if the replay set is small) and the result shuffled.
    """
    import datasets

    if ratio <= 0 or len(replay) == 0:
        return domain
    n_replay = round(len(domain) * ratio / (1 - ratio))
    reps = -(-n_replay // len(replay))
    pool = datasets.concatenate_datasets([replay] * reps).shuffle(seed=seed).select(range(n_replay))
    return datasets.concatenate_datasets([domain, pool]).shuffle(seed=seed)
