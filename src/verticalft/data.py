"""Dataset loading: local JSONL/JSON/Parquet/CSV files and Hugging Face datasets (`hf://name`).

JSONL is read line by line so a bad row is reported with its file and line number (`DataError`)
instead of an opaque Arrow error deep inside `datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

    from verticalft.recipe import Source

HF_SCHEME = "hf://"


class DataError(ValueError):
    """A data file or row the toolkit cannot use; the message names the file and line."""


def source_files(source: Source) -> list[Path]:
    """Local files behind a source (empty for `hf://` datasets)."""
    return [] if source.path.startswith(HF_SCHEME) else [Path(source.path)]


def missing_files(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if not p.exists()]


def parse_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | str, bytes]]:
    """(line number, row or error message, raw line) for every non-blank line of a JSONL file.

    The one place JSONL lines are parsed: `read_jsonl` stops at the first error, curation
    (`curation.sources`) quarantines the row and goes on.
    """
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
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
        suffix = path.suffix.lower()
        if suffix in {".jsonl", ".ndjson"}:
            return datasets.Dataset.from_list(read_jsonl(path, required))
        loader = {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
        if loader is None:
            raise DataError(f"{path}: unsupported format '{suffix}' (use .jsonl, .json, .parquet or .csv)")
        ds = datasets.load_dataset(loader, data_files=str(path), split="train")
    missing = [k for k in required if k not in ds.column_names]
    if missing:
        raise DataError(
            f"{source.path}: missing column(s) {', '.join(missing)}; has {', '.join(ds.column_names)}"
        )
    return ds


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
