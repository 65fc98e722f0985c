"""The curate stage end to end on the shipped samples: planted noise caught, clean data kept,
executors identical, malformed rows quarantined, a killed run resumed shard by shard."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sample_helpers import DOMAINS, ROOT, noise_kinds

from verticalft.curation import shards
from verticalft.pipeline import StageFailed, run_recipe
from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir


def curate(tmp: Path, domain: str = "finance", overrides: tuple[str, ...] = ()) -> dict:
    r = load_recipe(ROOT / f"recipes/{domain}.yaml", "tiny", overrides)
    run = RunDir(tmp)
    run_recipe(r, run, only=["curate"], until="curate", echo=lambda s: None)
    return run.record("curate").__dict__


def corpus_bytes(record: dict) -> dict[str, bytes]:
    folder = Path(record["outputs"]["corpus"])
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def kept_ids(record: dict) -> set[str]:
    folder = Path(record["outputs"]["corpus"])
    return {i for p in sorted(folder.glob("part-*.parquet")) for i in pq.read_table(p)["id"].to_pylist()}


@pytest.fixture(scope="module", params=DOMAINS)
def curated(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    return request.param, curate(tmp, request.param)


def test_planted_noise_is_removed_and_clean_documents_stay(curated):
    domain, rec = curated
    noise = rec["metrics"]["planted_noise"]
    kinds = noise["kinds"]
    for kind in (
        "exact_duplicate",
        "pii",
        "non_english",
        "license",
        "stale_date",
        "too_short",
        "boilerplate",
    ):
        assert kinds[kind]["rate"] == 1.0, (kind, kinds[kind])
    assert kinds["near_duplicate"]["rate"] >= 0.95
    assert kinds["boilerplate_lines"]["rate"] >= 0.95
    assert noise["clean"]["rate"] <= 0.02, noise["clean"]
    # What the report says is what the corpus holds: no planted duplicate id survived.
    ids = kept_ids(rec)
    labels = noise_kinds(domain)
    assert not {i for i, k in labels.items() if k in ("exact_duplicate", "non_english", "license")} & ids


def test_every_record_is_accounted_for(curated):
    _, rec = curated
    m = rec["metrics"]
    funnel = m["funnel"]
    first = funnel[0]
    assert first["in"] == m["read"]
    assert m["kept"] == funnel[-1]["kept"]
    assert m["read"] == m["kept"] + m["dropped"]
    dropped = pq.read_table(Path(rec["outputs"]["dropped"]) / "part-00000.parquet").to_pylist()
    corpus_drops = [d for d in dropped if not d["step"].startswith(("sft.", "preferences."))]
    assert len(corpus_drops) == m["dropped"]
    dup = next(d for d in corpus_drops if d["reason"] == "exact_duplicate")
    assert dup["detail"] in kept_ids(rec)  # a duplicate names the copy that stays


def test_report_and_funnel_plot_are_written(curated):
    domain, rec = curated
    report = Path(rec["outputs"]["report"])
    text = report.read_text()
    assert "Planted noise caught" in text and "near_duplicate" in text
    assert (report.parent / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_records_pass_through_curation(curated):
    _, rec = curated
    sets = rec["metrics"]["records"]
    assert set(sets) == {"sft", "preferences"}
    for name, s in sets.items():
        folder = Path(rec["outputs"][name])
        rows = pq.read_table(folder / "0" / "part-00000.parquet").to_pylist()  # a folder per source
        assert len(rows) == s["kept"] > 0.95 * s["in"]
        assert "messages" in rows[0] if name == "sft" else {"prompt", "chosen", "rejected"} <= set(rows[0])


@pytest.mark.slow  # two curate runs, one starting a Ray cluster: 11 CPU-seconds + Ray's workers
def test_local_and_ray_executors_write_identical_bytes(tmp_path):
    local = curate(tmp_path / "local", overrides=("stages.curate.num_workers=2",))
    ray = curate(tmp_path / "ray", overrides=("stages.curate.executor=ray", "stages.curate.num_workers=2"))
    assert ray["metrics"]["executor"] == "ray"
    assert local["metrics"]["shards"] >= 2
    assert corpus_bytes(local) == corpus_bytes(ray)
    assert local["metrics"]["funnel"] == ray["metrics"]["funnel"]
    # Both run the global steps as tasks over shard files (curation/sharded_steps.py), in the
    # process pool or on Ray: the same drops for the same reasons, the same contamination flags.
    folder = lambda rec, name: Path(rec["outputs"]["corpus"]).parent / name  # noqa: E731
    for rec in (local, ray):
        assert (
            len(list((folder(rec, "global") / "survivors").glob("shard-*.parquet")))
            == rec["metrics"]["shards"]
        )
    for name in ("dropped/part-00000.parquet", "flagged.jsonl"):
        assert folder(local, name).read_bytes() == folder(ray, name).read_bytes(), name
    assert local["metrics"]["planted_noise"] == ray["metrics"]["planted_noise"]


def test_malformed_rows_are_quarantined_and_nothing_else_is_lost(tmp_path):
    good = [
        json.loads(x) for x in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").read_text().splitlines()
    ]
    path = tmp_path / "corpus.jsonl"
    with path.open("wb") as f:
        for i, row in enumerate(good[:200]):
            f.write(json.dumps(row).encode() + b"\n")
            if i == 9:
                f.write(b'{"id": "broken", "text": "unterminated\n')  # line 11
            if i == 19:
                f.write(b'{"id": "no-text", "body": "wrong field"}\n')  # line 22
            if i == 29:
                f.write(b'{"id": "latin1", "text": "caf\xe9 revenue"}\n')  # line 33
    rec = curate(tmp_path / "run", overrides=(f"data.corpus=[{{path: {path}, license: cc-by-4.0}}]",))
    q = {(Path(x["file"]).name, x["line"]) for x in rec["metrics"]["quarantine"]}
    assert q == {("corpus.jsonl", 11), ("corpus.jsonl", 22), ("corpus.jsonl", 33)}
    assert rec["metrics"]["read"] == 200
    lines = (Path(rec["outputs"]["report"]).parent / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_a_killed_run_resumes_from_its_finished_shards(tmp_path, monkeypatch):
    calls = []
    real = shards.curate_shard

    def dies_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed mid-way
        return real(*args)

    monkeypatch.setattr(shards, "curate_shard", dies_on_third)
    over = ("stages.curate.num_workers=1",)  # in-process, so the patch applies
    with pytest.raises(KeyboardInterrupt):
        curate(tmp_path / "run", overrides=over)
    monkeypatch.setattr(shards, "curate_shard", real)
    resumed = curate(tmp_path / "run", overrides=over)
    assert resumed["metrics"]["shards_resumed"] == 2
    fresh = curate(tmp_path / "fresh", overrides=over)
    assert corpus_bytes(resumed) == corpus_bytes(fresh)


def test_switching_executor_does_not_invalidate_curation(tmp_path):
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny")
    from verticalft.pipeline import stage_fingerprints

    ray = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.curate.executor=ray"])
    assert stage_fingerprints(r, ["curate"]) == stage_fingerprints(ray, ["curate"])
    stricter = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["stages.curate.dedup.near.threshold=0.9"])
    assert stage_fingerprints(r, ["curate"]) != stage_fingerprints(stricter, ["curate"])


def test_curate_failure_is_a_stage_error(tmp_path):
    r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["data.corpus=[{path: nowhere.jsonl}]"])
    with pytest.raises(StageFailed, match="nowhere.jsonl"):
        run_recipe(r, RunDir(tmp_path), only=["curate"], until="curate", echo=lambda s: None)


@pytest.mark.slow  # a second curate run of the sample: 9-15 s wall beside other work
def test_a_capped_audit_sample_is_the_first_records_per_reason(curated, tmp_path):
    # With max_dropped_per_reason the drops are cut per shard and folded as shards finish (so
    # the driver never holds them all); the result must be what cutting the full list gives.
    domain, full = curated
    over = (
        "stages.curate.max_dropped_per_reason=3",
        "stages.curate.executor=ray",
        "stages.curate.num_workers=2",
    )
    capped = curate(tmp_path, domain, overrides=over)
    read = lambda rec: pq.read_table(Path(rec["outputs"]["dropped"]) / "part-00000.parquet").to_pylist()  # noqa: E731
    expected, seen = [], Counter()
    for row in sorted(read(full), key=lambda r: (r["step"], r["reason"], r["id"])):
        seen[(row["step"], row["reason"])] += 1
        if seen[(row["step"], row["reason"])] <= 3:
            expected.append(row)
    assert read(capped) == expected
    assert {(r["step"], r["reason"]) for r in expected} >= {
        ("exact_dedup", "exact_duplicate"),
        ("near_dedup", "near_duplicate"),
    }
    assert "planted_noise" not in capped["metrics"]  # the noise check needs every drop
    assert capped["metrics"]["funnel"] == full["metrics"]["funnel"]
