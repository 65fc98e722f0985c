"""Sources beyond one file per set: several weighted sources per set, `hf://` with
config / data_files / streaming, `save_to_disk` folders and Parquet folders through every reader.

Expected rows and counts are written by hand from the fixtures below; no network (an `hf://` set is
a local datasets repository folder, as `datasets.load_dataset` reads one)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verticalft import data
from verticalft.curation.shards import cut_shards, read_parquet
from verticalft.curation.sources import Quarantined, iter_records
from verticalft.pipeline import run_recipe, unusable_sets
from verticalft.plan import source_examples, source_tokens
from verticalft.recipe import Data, RecipeError, SetSource, Source, load_recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["amortisation", "covenant", "tranche", "coupon", "yield", "duration", "custody", "escrow"]


def chat(i: int, topic: str) -> dict:
    return {
        "id": f"{topic}-{i}",
        "messages": [
            {"role": "user", "content": f"Explain {topic} case {WORDS[i % len(WORDS)]} {i} briefly."},
            {"role": "assistant", "content": f"It is the {topic} answer about {WORDS[i % len(WORDS)]}."},
        ],
    }


def alpaca(i: int) -> dict:
    return {"id": f"alp-{i}", "instruction": f"Define {WORDS[i]} for a new analyst.", "input": "", "output": f"{WORDS[i]} means X{i}."}  # fmt: skip


def alpaca_messages(i: int) -> list[dict]:
    """What formats.py makes of `alpaca(i)`: one user turn (input empty) and the answer."""
    return [
        {"role": "user", "content": f"Define {WORDS[i]} for a new analyst."},
        {"role": "assistant", "content": f"{WORDS[i]} means X{i}."},
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def parquet_folder(folder: Path, rows: list[dict], per_file: int) -> Path:
    """Rows as several Parquet shards, like a Spark or pandas export."""
    folder.mkdir(parents=True)
    for k in range(0, len(rows), per_file):
        pq.write_table(
            pa.Table.from_pylist(rows[k : k + per_file]), folder / f"part-{k // per_file:05d}.parquet"
        )
    return folder


def user_turns(ds) -> list[str]:
    return [row["messages"][0]["content"] for row in ds]


def contents(rows: list[dict]) -> list[str]:
    return [r["messages"][0]["content"] for r in rows]


# --------------------------------------------------------------------------- several sources
def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    """A Parquet folder of 4 `messages` rows (weight 2) and a .jsonl.gz of 6 Alpaca rows (weight 0.5)."""
    chats = parquet_folder(tmp_path / "chats", [chat(i, "bond") for i in range(4)], per_file=3)
    alp = write_jsonl(tmp_path / "glossary.jsonl.gz", [alpaca(i) for i in range(6)])
    return chats, alp


def test_weighted_sources_give_each_row_weight_times(tmp_path):
    chats, alp = two_sources(tmp_path)
    d = Data.model_validate({"sft": [{"path": str(chats), "weight": 2}, {"path": str(alp), "weight": 0.5}]})
    ds = data.load_sets(d.sft, "sft", seed=0)
    # by hand: 4 rows × 2 = 8, then round(6 × 0.5) = 3 distinct Alpaca rows of the 6
    assert len(ds) == 11
    turns = Counter(user_turns(ds))
    assert all(turns[c] == 2 for c in contents([chat(i, "bond") for i in range(4)]))
    picked = [t for t in turns if t.startswith("Define")]
    assert len(picked) == 3 and all(turns[t] == 1 for t in picked)
    by_prompt = {alpaca_messages(i)[0]["content"]: alpaca_messages(i) for i in range(6)}
    assert all(row["messages"] == by_prompt[row["messages"][0]["content"]] for row in ds.select(range(8, 11)))
    # seeded: the same half every time, another seed may pick another
    assert user_turns(data.load_sets(d.sft, "sft", seed=0)) == user_turns(ds)
    # one mapping (every recipe before lists) is a list of one with weight 1
    assert Data.model_validate({"sft": {"path": str(alp)}}).sft[0].weight == 1.0


def test_weights_in_plan_counts(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i, "a") for i in range(4)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(i, "b") for i in range(6)])
    d = Data.model_validate({"sft": [{"path": str(a), "weight": 2}, {"path": str(b), "weight": 0.5}]})
    assert source_examples(d.sft) == 4 * 2 + 3
    assert source_tokens(d.sft) == pytest.approx(2 * a.stat().st_size / 4 + 0.5 * b.stat().st_size / 4)
    declared = Data.model_validate(
        {"preferences": [{"path": "x", "tokens": 100, "weight": 3}, {"path": "y", "tokens": 40}]}
    )
    assert source_tokens(declared.preferences) == 340 and source_examples(declared.preferences) is None


def test_held_out_rows_have_no_weighted_copy_in_train(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i, "a") for i in range(20)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(i, "b") for i in range(20)])
    d = Data.model_validate({"sft": [{"path": str(a), "weight": 3}, {"path": str(b)}]})
    train, test = data.split_sets(d.sft, "sft", 0, lambda n: 0.25)
    assert len(test) == 10  # a quarter of the 40 distinct rows
    held = set(user_turns(test))
    assert not held & set(user_turns(train))
    n_a = sum(t.startswith("Explain a ") for t in held)
    assert len(train) == 3 * (20 - n_a) + (20 - (10 - n_a))
    assert "__source_index" not in train.column_names + test.column_names


def test_a_single_mapping_set_names_its_keys_as_written(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nmodels: {teacher: t}\ndata:\n  sft: {path: a.jsonl, wieght: 2}\n"
        "  preferences: [{path: p.jsonl}, {path: q.jsonl, weight: 0}]\n"
    )
    with pytest.raises(RecipeError) as exc:
        load_recipe(recipe)
    problems = {p.path: p.message for p in exc.value.problems}
    assert problems["data.sft.wieght"] == "unknown key (did you mean 'weight'?)"
    assert "greater than 0" in problems["data.preferences.1.weight"]


def curate_run(tmp_path: Path, sft: list[dict]) -> StageContext:
    """The curate stage alone on the tiny finance recipe with `sft` as its SFT set."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"Bank deposit note {w} " * 30} for w in WORDS])
    overrides = [
        f"data.sft={json.dumps(sft)}",
        f"data.corpus=[{{path: {corpus}}}]",
        "data.preferences=null",
        "stages.curate.filters=[]",
    ]
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", overrides)
    run = RunDir(tmp_path / "run")
    run_recipe(r, run, only=["curate"], until="curate", echo=lambda s: None)
    return StageContext(r, run, "sft")


def test_curate_reads_every_source_dedups_across_them_and_training_weights_what_it_kept(tmp_path):
    chats, alp = two_sources(tmp_path)
    # a third file repeats one chat prompt (prompt dedup across sources) and has a row no format fits
    extra = write_jsonl(tmp_path / "extra.jsonl", [{**chat(1, "bond"), "id": "dup"}, {"question": "q?"}])
    sft = [{"path": str(chats), "weight": 2}, {"path": str(alp), "weight": 0.5}, {"path": str(extra)}]
    ctx = curate_run(tmp_path, sft)
    rec = ctx.run.record("curate").metrics["records"]["sft"]
    assert (rec["in"], rec["kept"]) == (4 + 6 + 1, 10)
    assert [(s["kept"], s["trained"]) for s in rec["sources"]] == [(4, 8), (6, 3), (0, 0)]
    curated = ctx.curated("sft")
    # the third source kept nothing: no folder, no source
    assert [(Path(s.path).name, s.weight, s.format) for s in curated] == [("0", 2.0, "messages"), ("1", 0.5, "messages")]  # fmt: skip
    ds = data.load_sets(curated, "sft", seed=0)
    turns = Counter(user_turns(ds))
    assert len(ds) == 11 and all(turns[c] == 2 for c in contents([chat(i, "bond") for i in range(4)]))
    assert sum(t.startswith("Define") for t in turns) == 3
    quarantine = (ctx.run.root / "curate/quarantine.jsonl").read_text()
    assert f"{extra}" in quarantine and "missing field 'messages'" in quarantine


def test_parquet_folder_rows_are_curated_not_quarantined(tmp_path):
    """Before: every shard of the folder was quarantined as an unsupported file type."""
    rows = [chat(i, "bond") for i in range(5)]
    folder = parquet_folder(tmp_path / "export", rows, per_file=2)
    items = list(iter_records(Source(path=str(folder)), ("messages",)))
    assert not [i for i in items if isinstance(i, Quarantined)]
    assert [(r["id"], r["messages"]) for r in items] == [(r["id"], r["messages"]) for r in rows]
    assert [r["source"] for r in items] == [str(folder)] * 5


# --------------------------------------------------------------------------- hf:// options
@pytest.fixture
def hf_repo(tmp_path, monkeypatch) -> Path:
    """A datasets repository folder with two configs declared in its README (no script), as on the Hub."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    repo = tmp_path / "repo"
    (repo / "chats").mkdir(parents=True)
    (repo / "glossary").mkdir()
    write_jsonl(repo / "chats/train.jsonl", [chat(i, "bond") for i in range(3)])
    write_jsonl(repo / "chats/extra.jsonl", [chat(i, "fx") for i in range(2)])
    write_jsonl(repo / "glossary/train.jsonl", [alpaca(i) for i in range(4)])
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: chats\n  data_files:\n  - split: train\n    path: chats/*.jsonl\n  default: true\n"
        "- config_name: glossary\n  data_files:\n  - split: train\n    path: glossary/train.jsonl\n"
        "---\n# test repo\n"
    )
    return repo


def test_hf_config_selects_the_subset_and_data_files_the_files(hf_repo):
    default = data.load_sets([SetSource(path=f"hf://{hf_repo}")], "sft", 0)
    assert len(default) == 5  # chats: 3 + 2
    glossary = data.load_sets([SetSource(path=f"hf://{hf_repo}", config="glossary")], "sft", 0)
    assert [r["messages"] for r in glossary] == [alpaca_messages(i) for i in range(4)]
    only = data.load_source(Source(path=f"hf://{hf_repo}", data_files="chats/extra.jsonl"))
    assert [r["id"] for r in only] == ["fx-0", "fx-1"]
    with pytest.raises(data.DataError, match=r"config 'nope'.*set the source's `config:`.*glossary"):
        data.load_source(Source(path=f"hf://{hf_repo}", config="nope"))


def test_streaming_corpus_is_cut_into_the_same_shards_as_a_download(hf_repo, tmp_path, monkeypatch):
    texts = [{"text": f"Filing {i}: the bank's {WORDS[i % 8]} rose.", "id": f"d{i}"} for i in range(7)]
    write_jsonl(hf_repo / "chats/train.jsonl", texts)
    (hf_repo / "chats/extra.jsonl").unlink()
    streamed = Source(path=f"hf://{hf_repo}", config="chats", streaming=True)
    assert type(data.open_hf(streamed, streamed.streaming)).__name__ == "IterableDataset"

    def shards(source: Source, folder: str) -> list[dict]:
        cut, bad, read = cut_shards([source], 3, "{}", "[]", tmp_path / folder)
        assert not bad and read == 7 and len(cut) == 3
        return [row for s in cut for row in read_parquet(Path(s.path))]

    assert shards(streamed, "stream") == shards(Source(path=f"hf://{hf_repo}", config="chats"), "whole")
    # a training stage without curate gets the stream's rows as a Dataset (written as they arrive)
    assert data.load_source(streamed).to_list() == texts


def test_hf_problems_are_said_plainly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(data.HubUnreachable, match=r"hf://nobody/nothing \(config 'all', split 'test'\): the Hugging Face Hub cannot be reached"):  # fmt: skip
        data.load_source(Source(path="hf://nobody/nothing", config="all", split="test"))
    with pytest.raises(ValueError, match="only for hf:// sources"):
        Source(path="a.jsonl", config="all")


# --------------------------------------------------------------------------- save_to_disk
def test_save_to_disk_folders_load_as_a_path(tmp_path):
    import datasets

    rows = [chat(i, "bond") for i in range(3)]
    flat = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(flat))
    split = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows[2:])}
    ).save_to_disk(str(split))
    assert [r["messages"] for r in data.load_sets([SetSource(path=str(flat))], "sft", 0)] == [
        r["messages"] for r in rows
    ]
    assert [r["id"] for r in data.load_source(Source(path=str(split), split="test"))] == ["bond-2"]
    with pytest.raises(data.DataError, match="has no split 'validation' \\(has train, test\\)"):
        data.load_source(Source(path=str(split), split="validation"))
    recs = list(iter_records(Source(path=str(split)), ("messages",)))
    assert [(r["id"], r["source"]) for r in recs] == [("bond-0", str(split)), ("bond-1", str(split))]
    assert data.check_set(Source(path=str(flat)), "sft", 50) == ({"messages": 3}, [])


def validate(*overrides: str) -> subprocess.CompletedProcess:
    args = ["validate", "recipes/finance.yaml", "-p", "tiny"]
    for o in overrides:
        args += ["--set", o]
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )


@pytest.mark.slow  # five `verticalft validate` processes: 37 CPU-seconds
def test_validate_reads_save_to_disk_and_hf_sets_and_tells_a_missing_config_from_offline(hf_repo, tmp_path):
    import datasets

    saved = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([alpaca(i) for i in range(3)])}).save_to_disk(
        str(saved)
    )
    sft = [{"path": str(saved)}, {"path": f"hf://{hf_repo}", "config": "glossary", "weight": 2}]
    ok = validate(f"data.sft={json.dumps(sft)}")
    out = " ".join((ok.stdout + ok.stderr).split())
    assert ok.returncode == 0, out[-2000:]
    assert f"data.sft.0 {saved}: format alpaca (3/3 rows)" in out
    assert f"data.sft.1 hf://{hf_repo}: format alpaca (4/4 rows)" in out
    bad = validate(f"data.sft={json.dumps([{'path': f'hf://{hf_repo}', 'config': 'nope'}])}")
    out = " ".join((bad.stdout + bad.stderr).split())
    assert bad.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert "problem: hf://" in out and "config 'nope'" in out
    offline = validate("data.sft={path: 'hf://nobody/nothing'}")
    out = " ".join((offline.stdout + offline.stderr).split())
    assert offline.returncode == 0, out[-2000:]
    assert (
        "note: data.sft: not checked: hf://nobody/nothing (split 'train'): the Hugging Face Hub cannot be reached"
        in out
    )


def test_run_stops_before_work_on_an_hf_set_no_format_fits(hf_repo):
    write_jsonl(hf_repo / "glossary/train.jsonl", [{"question": "q?", "answer": "a"}] * 2)
    r = load_recipe(
        ROOT / "recipes/finance.yaml", "tiny", [f"data.sft=[{{path: 'hf://{hf_repo}', config: glossary}}]"]
    )
    [problem] = unusable_sets(r, ["curate", "sft"])
    assert problem.startswith(f"data.sft: no usable row in the first 50 of hf://{hf_repo}; first: hf://{hf_repo} row 1: missing field 'messages'")  # fmt: skip


def test_two_files_of_the_same_name_keep_every_row_with_distinct_ids(tmp_path):
    """Two `train.jsonl` in different folders: both give default ids `train:1`, `train:2`, … The
    second source's rows are told apart by its index (`train:1#1`), not quarantined as duplicates;
    an id repeated inside one file is still the file's error."""
    from verticalft.curation.sources import indexed_records

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    no_id = [{"messages": chat(i, "tax")["messages"]} for i in range(3)]
    a = write_jsonl(tmp_path / "a" / "train.jsonl", no_id)
    b = write_jsonl(tmp_path / "b" / "train.jsonl", no_id[:2])
    out = list(indexed_records([SetSource(path=str(a)), SetSource(path=str(b))], ("messages",)))
    assert [(n, r["id"]) for n, r in out] == [
        (0, "train:1"), (0, "train:2"), (0, "train:3"), (1, "train:1#1"), (1, "train:2#1"),
    ]  # fmt: skip
    twice = write_jsonl(tmp_path / "c.jsonl", [{**chat(0, "x"), "id": "q7"}, {**chat(1, "x"), "id": "q7"}])
    out = [item for _, item in indexed_records([SetSource(path=str(twice))], ("messages",))]
    assert out[0]["id"] == "q7" and isinstance(out[1], Quarantined) and "duplicate id 'q7'" in out[1].error


def test_a_network_error_of_the_hub_client_is_offline_however_deep():
    """huggingface_hub 2.x raises through httpx2 (not httpx, which a fresh `make setup` lacks): a
    connect error wrapped twice is still the network's; a bad value is not."""
    import httpx2

    from verticalft.data import offline

    def wrapped() -> BaseException:
        try:
            try:
                raise httpx2.ConnectError("[Errno 101] Network is unreachable")
            except httpx2.ConnectError as inner:
                raise OSError("could not reach the Hub") from inner
        except OSError as middle:
            try:
                raise RuntimeError("load_dataset failed") from middle
            except RuntimeError as outer:
                return outer

    assert offline(wrapped()) is True
    assert offline(TimeoutError()) is True
    assert offline(ValueError("no such config")) is False
