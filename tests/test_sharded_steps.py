"""The global curation steps over shard files (what every executor runs) give the same answers as
the in-memory oracle (tests/curation_oracle.py, written from the single-node definitions): same
documents kept, same drops with the same step, reason and detail, same contamination flags and
funnel — on one process and on the process pool — and a rerun reuses finished files."""

import copy
import random
from collections import Counter
from pathlib import Path

import pytest
from curation_oracle import global_steps
from sample_helpers import DOMAINS, ROOT, noise_kinds, rows

from verticalft.curation import executors
from verticalft.curation.audit import Funnel
from verticalft.curation.sharded_steps import ShardFile, bucket_ranges, sharded_global_steps
from verticalft.curation.shards import corpus_row, eval_index, read_parquet, write_parquet
from verticalft.curation.sources import eval_prompts
from verticalft.recipe import load_recipe

VOCAB = sorted({"".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=6)) for i in range(3000)})


def config(domain: str = "finance", overrides: tuple[str, ...] = ()):
    recipe = load_recipe(ROOT / f"recipes/{domain}.yaml", "tiny", list(overrides))
    return recipe.stages.curate, eval_prompts(recipe.data.eval)


def write_shards(docs: list[dict], size: int, folder: Path) -> list[ShardFile]:
    files = []
    for k, start in enumerate(range(0, len(docs), size)):
        path = folder / f"shard-{k:05d}.kept.parquet"
        write_parquet(docs[start : start + size], path)
        files.append(ShardFile(k, str(path), f"key{k}", len(docs[start : start + size])))
    return files


def sharded(cfg, files, eval_items, freq: Counter, funnel: Funnel, folder: Path, workers: int = 1):
    return sharded_global_steps(
        cfg,
        files,
        eval_items=eval_items,
        freq=freq,
        funnel=funnel,
        folder=folder,
        executor="local",
        workers=workers,
    )


def both_paths(cfg, docs, eval_items, folder: Path, size: int, freq: Counter | None = None, workers: int = 1):
    freq = freq or Counter()
    memory_funnel, sharded_funnel = Funnel(), Funnel()
    kept, dropped, flagged, unmatchable = global_steps(
        cfg, copy.deepcopy(docs), eval_items, freq, memory_funnel
    )
    files = write_shards(docs, size, folder / "shards")
    res = sharded(cfg, files, eval_items, freq, sharded_funnel, folder / "global", workers)
    survivors = [r for path in res.survivors for r in read_parquet(Path(path))]
    sharded_funnel.check()
    return (kept, dropped, flagged, unmatchable, memory_funnel), (survivors, res, sharded_funnel)


def assert_same(memory, sharded) -> None:
    kept, dropped, flagged, unmatchable, memory_funnel = memory
    survivors, res, sharded_funnel = sharded
    by_id = lambda rows: {r["id"]: (r["step"], r["reason"], r["detail"]) for r in rows}  # noqa: E731
    assert sorted(survivors, key=lambda r: r["id"]) == sorted(kept, key=lambda r: r["id"])
    assert res.n_kept == len(kept)
    assert by_id(res.dropped) == by_id(dropped)
    assert res.flagged == flagged
    assert res.unmatchable == unmatchable
    assert sharded_funnel.to_list() == memory_funnel.to_list()


def plant_eval_items(domain: str, docs: list[dict], eval_items: list[list[str]], n: int) -> list[str]:
    """Insert `n` eval items (of 20+ words: shorter than the 13-gram, an item matches only a text
    as short) in the middle of `n` clean sample documents spread over the corpus (the samples plant
    duplicates, not contamination); their ids."""
    noisy = set(noise_kinds(domain))
    clean = [d for d in docs if d["id"] not in noisy]
    items = [text for _, text in eval_items if len(text.split()) >= 20]
    planted = []
    for i in range(n):
        doc, item = clean[(i * len(clean)) // n], items[(i * len(items)) // n]
        words = doc["text"].split(" ")
        doc["text"] = " ".join([*words[: len(words) // 2], item, *words[len(words) // 2 :]])
        planted.append(doc["id"])
    return planted


@pytest.mark.parametrize("domain", DOMAINS)
def test_samples_keep_and_drop_the_same_documents(domain, tmp_path):
    cfg, eval_items = config(domain)
    docs = [corpus_row(r) for r in rows(domain, "corpus.jsonl")]
    planted = plant_eval_items(domain, docs, eval_items, 6)
    freq = eval_index(cfg, eval_items).doc_frequency(d["text"] for d in docs)
    with executors.session("local", 2):  # the process pool, as the stage runs it
        memory, sharded = both_paths(cfg, docs, eval_items, tmp_path, size=97, freq=freq, workers=2)
    assert_same(memory, sharded)
    steps = Counter(r["step"] for r in memory[1])
    assert steps["exact_dedup"] > 20 and steps["near_dedup"] > 20  # the samples plant both kinds
    flagged = {f["id"] for f in memory[2]}
    assert set(planted) <= flagged  # (real estate's templated listings match some items on their own)
    assert {r["id"] for r in memory[1] if r["step"] == "decontaminate"} == flagged


def words(seed: int, n: int) -> list[str]:
    return random.Random(seed).choices(VOCAB, k=n)


def edit(ws: list[str], share: float, seed: int) -> list[str]:
    rng, out = random.Random(seed), list(ws)
    for p in rng.sample(range(len(out)), int(share * len(out))):
        out[p] = rng.choice(VOCAB)
    return out


def synthetic() -> tuple[list[dict], list[list[str]]]:
    """Clusters spread over shards: copies, light edits, chains (a~b, b~c, a≁c), pairs near the
    threshold that LSH proposes and verification must settle; plus eval items planted in documents."""
    docs, rng = [], random.Random(7)
    for c in range(60):
        base = words(c, rng.randint(60, 200))
        variants = [base, base, edit(base, 0.01, c + 1000), edit(base, 0.03, c + 2000)]
        if c % 3 == 0:  # a chain: each step a few % away from the previous one
            for s in range(4):
                variants.append(edit(variants[-1], 0.02, c * 10 + s))
        if c % 4 == 0:
            variants.append(edit(base, 0.08, c + 3000))  # Jaccard near 0.5
        docs += [" ".join(v) for v in variants]
    docs += [" ".join(words(10_000 + i, rng.randint(5, 150))) for i in range(400)]
    docs += ["", "", "short text", "Short, text!"]
    eval_items = [[f"ev-{i}", " ".join(words(20_000 + i, 30))] for i in range(10)]
    for i, (_, item) in enumerate(eval_items[:6]):
        docs.append(" ".join(words(30_000 + i, 40)) + " " + item + " " + " ".join(words(40_000 + i, 40)))
    order = list(range(len(docs)))
    random.Random(3).shuffle(order)  # ids in another order than the clusters were made
    rows = [{"id": f"doc-{order[i]:05d}", "text": t, "source": "synthetic"} for i, t in enumerate(docs)]
    random.Random(4).shuffle(rows)  # and shard order unrelated to ids
    return [corpus_row(r) for r in rows], eval_items


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("stages.curate.dedup.near.threshold=0.5",),
        ("stages.curate.dedup.near.verify=false",),
        ("stages.curate.dedup.exact=false", "stages.curate.decontaminate.corpus=flag"),
        ("stages.curate.dedup.near=null", "stages.curate.decontaminate.min_overlap=0"),
    ],
    ids=["default", "t0.5", "no-verify", "no-exact+flag", "no-near+any-ngram"],
)
def test_synthetic_clusters_across_shards_give_the_same_answers(overrides, tmp_path):
    cfg, _ = config(overrides=overrides)
    docs, eval_items = synthetic()
    memory, sharded = both_paths(cfg, docs, eval_items, tmp_path, size=41)
    assert_same(memory, sharded)
    if cfg.dedup.near is not None:
        assert sum(r["step"] == "near_dedup" for r in memory[1]) > 50
    if cfg.decontaminate.corpus != "off":
        assert len(memory[2]) >= 6  # every planted eval item found


def test_a_rerun_reuses_finished_files_and_redoes_a_missing_one(tmp_path):
    cfg, _ = config()
    docs, eval_items = synthetic()
    first = both_paths(cfg, docs, eval_items, tmp_path, size=101)[1]
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "global").rglob("*.np*")}
    assert any("signatures" in str(p) for p in made) and any("pairs" in str(p) for p in made)
    lost = sorted(p for p in made if "signatures" in str(p))[2]
    lost.unlink()
    files = write_shards(docs, 101, tmp_path / "shards")
    res = sharded(cfg, files, eval_items, Counter(), Funnel(), tmp_path / "global")
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "global").rglob("*.np*")}
    assert lost.is_file()
    # Only the lost shard's signatures were redone (same content → same name, so the band
    # buckets keyed on the signature names stay valid).
    assert [p for p in made if p != lost and "signatures" in str(p) and after[p] != made[p]] == []
    assert res.dropped == first[1].dropped and res.flagged == first[1].flagged


def test_bucket_ranges_cover_every_bucket_once():
    for n in (1, 199_999, 200_001, 1_000_000, 10**9):
        ranges = bucket_ranges(n)
        assert ranges[0][0] == 0 and ranges[-1][1] == 256
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert len(ranges) == min(256, -(-n // 200_000))
    assert bucket_ranges(0) == []


def test_merge_in_rounds_writes_the_same_parts_as_an_in_memory_sort(tmp_path, monkeypatch):
    from verticalft.curation import shards

    rng = random.Random(7)
    docs = [
        {
            "id": f"d{rng.randrange(10**6):07d}-{i}",
            "text": " ".join(rng.choices(VOCAB, k=rng.randrange(1, 40))),
        }
        for i in range(1000)
    ]
    for i, d in enumerate(docs):  # a column all-null in some files, typed in others
        d["date"] = "2024-01-02" if i >= 700 and i % 3 else None
    files = []
    for k in range(10):  # ten files, each sorted by id, ids interleaved across files
        part = sorted(docs[k * 100 : (k + 1) * 100], key=lambda r: r["id"])
        files.append(str(tmp_path / f"s{k}.parquet"))
        write_parquet(part, Path(files[-1]), 16)
    expected = shards.write_parts(sorted(docs, key=lambda r: r["id"]), tmp_path / "memory", 90)
    monkeypatch.setattr(shards, "MERGE_FANIN", 3)  # 10 files → 4 → 2 → merged: two rounds
    rounds, merge_file = [], shards._merge_file
    monkeypatch.setattr(
        shards, "_merge_file", lambda paths, path: rounds.append(len(paths)) or merge_file(paths, path)
    )
    got = shards.merge_parts(files, tmp_path / "merged", 90)
    assert rounds == [3, 3, 3, 1, 3, 1]  # the rounds happened: 10 → 4 → 2 files, then the parts
    assert got == expected and len(got) == 12
    for name in got:
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "memory" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == got  # no scratch left
