import json

import pytest

from verticalft.pipeline import stage_fingerprints
from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir, atomic_write_text, hash_file, write_jsonl


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "x" * 10)
    assert path.read_text() == "x" * 10
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_jsonl_keeps_text_readable_unless_asked_for_sorted_ascii(tmp_path):
    rows = [{"z": "café", "a": 1}, {"b": None}]
    assert write_jsonl(tmp_path / "plain.jsonl", iter(rows)) == 2
    assert (tmp_path / "plain.jsonl").read_bytes() == b'{"z": "caf\xc3\xa9", "a": 1}\n{"b": null}\n'
    assert write_jsonl(tmp_path / "canon.jsonl", rows, sort_keys=True, ensure_ascii=True) == 2
    assert (tmp_path / "canon.jsonl").read_bytes() == b'{"a": 1, "z": "caf\\u00e9"}\n{"b": null}\n'
    # a lone surrogate (what json.loads makes of "\\ud800") cannot be UTF-8: escaped it can
    write_jsonl(tmp_path / "s.jsonl", [{"t": "\ud800"}], ensure_ascii=True)
    assert (tmp_path / "s.jsonl").read_text() == '{"t": "\\ud800"}\n'
    with pytest.raises(UnicodeEncodeError):
        write_jsonl(tmp_path / "bad.jsonl", [{"t": "\ud800"}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canon.jsonl", "plain.jsonl", "s.jsonl"]


def test_stage_is_done_only_with_marker_and_matching_fingerprint(tmp_path):
    run = RunDir(tmp_path)
    record, resumable = run.begin("sft", "fp1", {})
    assert not resumable and not run.is_done("sft", "fp1")
    assert run.record("sft").status == "running"
    record.outputs = {"model": "m"}
    run.finish("sft", record)
    assert run.is_done("sft", "fp1") and not run.is_done("sft", "fp2")
    assert json.loads((tmp_path / "sft" / "DONE.json").read_text())["fingerprint"] == "fp1"
    assert run.output("sft", "model") == "m"


def test_killed_attempt_is_resumable_only_with_the_same_fingerprint(tmp_path):
    run = RunDir(tmp_path)
    run.begin("sft", "fp1", {})
    (tmp_path / "sft" / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    # "killed": no finish. Same fingerprint → the folder (and checkpoint) survives.
    _, resumable = run.begin("sft", "fp1", {})
    assert resumable and (tmp_path / "sft" / "checkpoints" / "checkpoint-10").exists()
    assert not run.is_done("sft")
    # Changed inputs → start clean.
    _, resumable = run.begin("sft", "fp2", {})
    assert not resumable and not (tmp_path / "sft" / "checkpoints").exists()


def test_manifest_without_marker_is_not_done(tmp_path):
    run = RunDir(tmp_path)
    record, _ = run.begin("cpt", "fp", {})
    record.status = "done"
    run.update("cpt", record)  # killed between the manifest write and the marker
    assert not run.is_done("cpt", "fp")


def test_fingerprints_follow_data_and_config_and_chain(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    root = Path.cwd()
    for d in ("finance", "general"):
        shutil.copytree(root / "data_pipelines" / d / "sample", tmp_path / "data_pipelines" / d / "sample")
    shutil.copytree(root / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    stages = ["tiny_models", "cpt", "sft", "dpo"]
    r = load_recipe("recipes/finance.yaml", "tiny")
    base = stage_fingerprints(r, stages)
    assert base == stage_fingerprints(r, stages)
    lora = stage_fingerprints(load_recipe("recipes/finance.yaml", "tiny", ["stages.sft.lora.r=4"]), stages)
    assert lora["cpt"] == base["cpt"] and lora["sft"] != base["sft"] and lora["dpo"] != base["dpo"]
    prefs = tmp_path / "data_pipelines/finance/sample/preferences.jsonl"
    prefs.write_text(prefs.read_text() + prefs.read_text().splitlines()[0] + "\n")
    hash_file.__defaults__[0].clear()
    changed = stage_fingerprints(r, stages)
    assert changed["sft"] == base["sft"] and changed["dpo"] != base["dpo"]


def test_every_attempt_is_logged_a_killed_one_by_the_next(tmp_path):
    import os

    run = RunDir(tmp_path)
    record, _ = run.begin("sft", "fp1", {})
    # the attempt is SIGKILLed: its RUNNING marker names a dead process; it started 100 s before
    # the newest file it wrote
    marker = json.loads((tmp_path / "sft" / "RUNNING.json").read_text())
    (tmp_path / "sft" / "RUNNING.json").write_text(json.dumps({**marker, "pid": 2**22 + 12345, "t0": 1000.0}))
    ckpt = tmp_path / "sft" / "checkpoint.bin"
    ckpt.write_text("x")
    os.utime(tmp_path / "sft" / "RUNNING.json", (1000.0, 1000.0))
    os.utime(ckpt, (1100.0, 1100.0))
    assert run.interrupted("sft")
    record, resumable = run.begin("sft", "fp1", {})  # the rerun logs what the killed one spent
    assert resumable
    run.finish("sft", record)
    run.log_attempt("sft", "done", 42.0, "fp1")
    assert [(a["status"], a["seconds"]) for a in run.attempts("sft")] == [("killed", 100.0), ("done", 42.0)]
    assert run.attempts("cpt") == []
