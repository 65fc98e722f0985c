"""Dataset loading: local JSONL/JSON/Parquet/CSV files, folders (Parquet shards, `save_to_disk`)
and Hugging Face datasets (`hf://name`, with config, revision, data files, streaming).

JSONL is read line by line so a bad row is reported with its file and line number (`DataError`)
instead of an opaque Arrow error deep inside `datasets`. Gzipped JSON Lines / JSON
(`.jsonl.gz`, `.json.gz`: how many datasets ship) read the same as the plain files.
SFT and preference sets go through `load_set`, which turns the formats users have (ShareGPT,
Alpaca, prompt/completion, implicit-prompt preferences; formats.py) into the canonical rows;
a set of several sources is read, weighted and concatenated by `load_sets`.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from verticalft.formats import Kind, Normalised
    from verticalft.recipe import SetSource, Source

HF_SCHEME = "hf://"


class DataError(ValueError):
    """A data file or row the toolkit cannot use; the message names the file and line."""


def source_files(source: Source) -> list[Path]:
    """Local files (or folders) behind a source (empty for `hf://` datasets)."""
    return [] if source.path.startswith(HF_SCHEME) else [Path(source.path)]


def data_suffix(path: Path) -> str:
    """The format suffix of a data file, looking through `.gz` (`x.jsonl.gz` → `.jsonl`)."""
    suffixes = [x.lower() for x in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return suffixes[-2]
    return path.suffix.lower()


def open_bytes(path: Path) -> io.BufferedIOBase:
    """The file for reading bytes, decompressed when it is gzipped (named `.gz`)."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


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


def _lines(f: io.BufferedIOBase, path: Path) -> Iterator[tuple[int, bytes]]:
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


def hf_kwargs(source: Source) -> dict[str, Any]:
    """`datasets.load_dataset` arguments of an `hf://` source: its name (a Hub id or a local
    folder), subset (`name=`), split, revision and data files; options left unset are not passed."""
    kwargs: dict[str, Any] = {"path": source.path[len(HF_SCHEME) :], "split": source.split}
    for key, arg in (("config", "name"), ("revision", "revision"), ("data_files", "data_files")):
        if getattr(source, key) is not None:
            kwargs[arg] = getattr(source, key)
    return kwargs


def describe(source: Source) -> str:
    """`hf://cais/mmlu (config 'all', split 'test')`: the source as errors name it."""
    extra = [f"{k} {getattr(source, k)!r}" for k in ("config", "split", "revision", "data_files")]
    extra = [e for e in extra if not e.endswith(" None")]
    return f"{source.path} ({', '.join(extra)})" if source.path.startswith(HF_SCHEME) else source.path


def open_hf(source: Source, streaming: bool) -> Dataset | IterableDataset:
    """An `hf://` source as `datasets.load_dataset` reads it, streamed (an `IterableDataset`: rows
    arrive as they are read, nothing is downloaded whole) or not; `hf://<save_to_disk folder>`
    is read with `load_from_disk`. Not found, no such config or split, offline: a `DataError`
    (offline: `HubUnreachable`) naming the source."""
    import datasets

    kwargs = hf_kwargs(source)
    if is_saved_dataset(Path(kwargs["path"])):
        return load_saved(Path(kwargs["path"]), source.split)
    try:
        return datasets.load_dataset(**kwargs, streaming=streaming)
    except Exception as exc:  # a recipe problem (or the network), said plainly
        raise hf_error(source, exc) from exc


class HubUnreachable(DataError):
    """The Hub could not be asked (offline, no network): unknown whether the dataset exists."""


def hf_error(source: Source, exc: Exception) -> DataError:
    """The `DataError` for a failed `load_dataset`: what went wrong in words, then the library's."""
    from datasets.exceptions import DatasetNotFoundError

    where = describe(source)
    if offline(exc):
        return HubUnreachable(
            f"{where}: the Hugging Face Hub cannot be reached (offline or no network) and the dataset is "
            f"not in the local cache ({exc})"
        )
    if isinstance(exc, DatasetNotFoundError):
        return DataError(
            f"{where}: no such dataset on the Hub, or it is gated/private (`hf auth login`) ({exc})"
        )
    if "BuilderConfig" in str(exc) or "Config name is missing" in str(exc):
        return DataError(f"{where}: set the source's `config:` to one of the dataset's subsets ({exc})")
    return DataError(f"{where}: cannot load split '{source.split}' ({exc})")


def offline(exc: BaseException) -> bool:
    """Whether a failure (or what caused it) is the network's: then nothing is known of the dataset."""
    network: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, *http_transport_errors())
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def http_transport_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of the HTTP clients the Hub libraries call through: huggingface_hub 2.x
    uses `httpx2`, older stacks and vLLM's OpenAI client `httpx`; either may be absent (a fresh
    `make setup` has httpx2 only), so each is looked for rather than imported."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        if importlib.util.find_spec(name) is not None:
            found.append(importlib.import_module(name).TransportError)
    return tuple(found)


def stream_rows(kwargs_json: str) -> Iterator[dict[str, Any]]:
    """Rows of a streamed `load_dataset` (arguments as JSON): the generator `load_hf` hands to
    `Dataset.from_generator`, which writes them to the datasets cache as they arrive."""
    import datasets

    yield from datasets.load_dataset(**json.loads(kwargs_json), streaming=True)


def load_hf(source: Source) -> Dataset:
    """`hf://name` as a `Dataset` (`datasets.load_dataset` with the source's config, revision and
    data files); a local folder works too. With `streaming: true` the rows are read as a stream into
    the datasets cache (`Dataset.from_generator`): only the requested split's rows are fetched,
    never the whole repository, and memory stays bounded."""
    import datasets

    ds = open_hf(source, source.streaming)
    if isinstance(ds, datasets.Dataset):
        return ds
    try:
        return datasets.Dataset.from_generator(
            stream_rows, gen_kwargs={"kwargs_json": json.dumps(hf_kwargs(source))}
        )
    except Exception as exc:
        raise hf_error(source, exc) from exc


def is_saved_dataset(path: Path) -> bool:
    """A `Dataset.save_to_disk` folder (`state.json` + `dataset_info.json`) or a `DatasetDict`
    one (`dataset_dict.json`, a folder per split)."""
    if not path.is_dir():
        return False
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def load_saved(path: Path, split: str) -> Dataset:
    """A `save_to_disk` folder through `datasets.load_from_disk`; of a `DatasetDict`, `split`."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable save_to_disk folder ({exc})") from exc
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(
                f"{path}: the saved DatasetDict has no split '{split}' (has {', '.join(saved)}); "
                "set the source's split"
            )
        return saved[split]
    return saved


def load_parquet_folder(path: Path) -> Dataset:
    """A folder of Parquet shards (`part-*.parquet`, what the curate stage writes) as one dataset."""
    import datasets

    files = parquet_files(path)
    if not files:
        raise DataError(
            f"{path}: a folder source must hold .parquet shards or be a save_to_disk folder; found neither"
        )
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")


def parquet_files(folder: Path) -> list[Path]:
    """The Parquet shards of a folder source (top level, sorted): what training and curate read."""
    return sorted(folder.glob("*.parquet"))


def load_folder(path: Path, split: str) -> Dataset:
    """A folder source: a save_to_disk folder, else a folder of Parquet shards."""
    return load_saved(path, split) if is_saved_dataset(path) else load_parquet_folder(path)


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
            ds = load_folder(path, source.split)
        else:
            suffix = data_suffix(path)
            if suffix in {".jsonl", ".ndjson"}:
                return datasets.Dataset.from_list(read_jsonl(path, required))
            loader = {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
            if loader is None or (path.suffix.lower() == ".gz" and loader != "json"):
                raise DataError(
                    f"{path}: unsupported format '{''.join(path.suffixes[-2:]) if loader else suffix}' "
                    "(use .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv or a folder)"
                )
            ds = datasets.load_dataset(loader, data_files=str(path), split="train")
    missing = [k for k in required if k not in ds.column_names]
    if missing:
        raise DataError(
            f"{source.path}: missing column(s) {', '.join(missing)}; has {', '.join(ds.column_names)}"
        )
    return ds


def weighted_rows(n: int, weight: float) -> int:
    """How many rows a source of `n` rows gives at `weight`: every row `int(weight)` times plus a
    sample of the fraction (rounded), the count `weighted` selects and `plan` prices."""
    whole = int(weight)
    return whole * n + round((weight - whole) * n)


def weighted(ds: Dataset, weight: float, seed: int) -> Dataset:
    """The rows of one source as training sees them at `weight` (recipe.SetSource says why so):
    whole copies in file order, then a seeded sample without replacement, in file order, for the
    fraction. Weight 1 gives `ds` itself, untouched. The trainers shuffle every epoch, so the
    order here does not decide what a batch holds."""
    import random

    n, whole = len(ds), int(weight)
    part = weighted_rows(n, weight) - whole * n
    if whole == 1 and part == 0:
        return ds
    picks = sorted(random.Random(seed).sample(range(n), part))
    return ds.select([i for _ in range(whole) for i in range(n)] + picks)


def load_sets(sources: list[SetSource], kind: Kind, seed: int) -> Dataset:
    """A whole SFT or preference set: each source read in canonical rows (`load_set`), weighted
    (`weighted`, seed `seed` + its index) and concatenated in recipe order. With `split_sets`, the
    one place weights apply: raw sources and curate's per-source folders (`StageContext.curated`)
    both come here."""
    parts = [weighted(load_set(s, kind), s.weight, seed + i) for i, s in enumerate(sources)]
    return concatenated(parts)


def split_sets(
    sources: list[SetSource], kind: Kind, seed: int, test_size: Callable[[int], float]
) -> tuple[Dataset, Dataset]:
    """(train, held-out) of a set for a trainer: the held-out rows are drawn from the unweighted
    rows (`test_size(n)` of the `n`, seeded) and the weights apply to the train rows only, so no
    copy of a held-out row is trained on (weighting first would leak duplicates into the eval loss).
    One source of weight 1 splits exactly as `Dataset.train_test_split` of the file."""
    parts = [load_set(s, kind) for s in sources]
    if len(parts) == 1:
        split = parts[0].train_test_split(test_size=test_size(len(parts[0])), seed=seed)
        return weighted(split["train"], sources[0].weight, seed), split["test"]
    tag = "__source_index"
    whole = concatenated([p.add_column(tag, [i] * len(p)) for i, p in enumerate(parts)])
    split = whole.train_test_split(test_size=test_size(len(whole)), seed=seed)
    train = split["train"]
    by_source = [train.select([j for j, k in enumerate(train[tag]) if k == i]) for i in range(len(sources))]
    trained = [
        weighted(part, s.weight, seed + i) for i, (part, s) in enumerate(zip(by_source, sources, strict=True))
    ]
    return concatenated(trained).remove_columns(tag), split["test"].remove_columns(tag)


def concatenated(parts: list[Dataset]) -> Dataset:
    """Rows of several sources as one dataset; columns one source lacks are null in its rows."""
    import datasets

    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError:  # columns of different types (a `tools` list in one file, none in another)
        return datasets.Dataset.from_list([row for part in parts for row in part])


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
    fails at once instead of after curate (which would keep 0 rows) or deep inside sft. An `hf://`
    set is streamed (nothing downloaded whole); `HubUnreachable` is raised, not listed: offline,
    nothing is known of the set, which is no problem of the recipe."""
    from collections import Counter

    found: Counter[str] = Counter()
    problems = []
    try:
        for where, row in located_rows(source, limit):
            try:
                found[normalised(where, row, source, kind).format] += 1
            except DataError as exc:
                problems.append(str(exc))
    except HubUnreachable:
        raise
    except DataError as exc:  # unreadable file, unsupported type, no such dataset/config
        problems.append(str(exc))
    return dict(found), problems


def located_rows(source: Source, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(`file:line` or `file row n`, row or why it is unreadable) for the rows of a source, the
    first `limit` only when given: what `load_set` and `verticalft validate` check row by row.
    The first rows of an `hf://` source are streamed: reading 50 rows never downloads the set."""
    from itertools import islice

    if not source.path.startswith(HF_SCHEME):
        path = Path(source.path)
        if path.is_file() and data_suffix(path) in {".jsonl", ".ndjson"}:
            parsed = ((f"{path}:{n}", row) for n, row, _ in parse_jsonl(path))
            yield from islice(parsed, limit)
            return
        for i, row in enumerate(islice(load_source(source), limit), start=1):
            yield f"{source.path} row {i}", row
        return
    rows = open_hf(source, streaming=limit is not None or source.streaming)
    try:
        for i, row in enumerate(islice(rows, limit), start=1):
            yield f"{source.path} row {i}", row
    except DataError:
        raise
    except Exception as exc:  # a stream fails while it is read (network, a bad data file)
        raise hf_error(source, exc) from exc


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
