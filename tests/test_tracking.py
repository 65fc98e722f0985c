"""Experiment tracking: what a stage's metrics become, and a real run logged into a real local
MLflow store, read back with MLflow's own client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verticalft.tracking import flat_metrics, flat_params

ROOT = Path(__file__).resolve().parents[1]


def test_a_stage_section_becomes_flat_params_and_its_metrics_flat_series():
    section = {"max_length": 256, "lora": {"r": 8, "targets": ["q", "v"]}, "trainer": {}, "kind": "logits"}
    assert flat_params(section) == {
        "max_length": "256",
        "lora.r": "8",
        "lora.targets": '["q", "v"]',
        "trainer": "{}",
        "kind": "logits",
    }
    metrics = {
        "read": 1160,
        "ok": True,
        "note": "text is not a metric",
        "models": {
            "student-s": {"sweep": [{"max_concurrency": 1, "tps": 10.5}, {"max_concurrency": 8, "tps": 40.0}]}
        },
        "losses": [2.5, float("nan"), 1.5],
    }
    assert sorted(flat_metrics(metrics)) == sorted(
        [
            ("read", 1160.0, 0),
            ("ok", 1.0, 0),
            ("models/student-s/sweep/tps", 10.5, 1),  # a sweep: one series, the concurrency its step
            ("models/student-s/sweep/tps", 40.0, 8),
            ("losses/0", 2.5, 0),
            ("losses/2", 1.5, 0),  # NaN is not logged
        ]
    )


@pytest.mark.slow
def test_a_run_logs_one_pipeline_run_with_a_nested_run_per_stage_into_a_local_mlflow_store(tmp_path):
    runs = tmp_path / "runs"
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--until", "cpt", "--runs-dir", str(runs),
            "--set", "tracking.backend=mlflow", "--set", "stages.cpt.trainer.max_steps=3",
            "--set", "stages.cpt.trainer.logging_steps=1", "--set", "evaluation.max_items=4"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = runs / "finance" / "tiny"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["tracking"]["backend"] == "mlflow" and "uri" not in manifest["tracking"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("finance/tiny")
    assert exp is not None and exp.artifact_location == (root / "mlflow-artifacts").resolve().as_uri()
    parent = client.get_run(manifest["tracking"]["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    # the report and its plots on the pipeline's run
    assert "report.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    stages = {
        r.data.tags["verticalft.stage"]: r
        for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert set(stages) == {"tiny_models", "curate", "cpt"}
    curate = stages["curate"]
    m = manifest["stages"]["curate"]["metrics"]
    assert curate.info.status == "FINISHED"
    assert curate.data.metrics["kept"] == m["kept"] and curate.data.metrics["read"] == m["read"]
    assert curate.data.params["shard_size"] == "300"  # the tiny profile's curate section
    cpt = stages["cpt"]
    c = manifest["stages"]["cpt"]["metrics"]
    assert cpt.data.metrics["heldout_perplexity_after"] == pytest.approx(c["heldout_perplexity_after"])
    assert cpt.data.params["trainer.max_steps"] == "3"
    # the trainer's own loss curve: transformers' MLflowCallback, a run nested under cpt's
    trainers = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{cpt.info.run_id}'")
    assert len(trainers) == 1
    history = client.get_metric_history(trainers[0].info.run_id, "loss")
    assert [h.step for h in history] == [1, 2, 3] and all(h.value > 0 for h in history)

    # a rerun continues the same pipeline run; skipped stages log nothing new
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert json.loads((root / "manifest.json").read_text())["tracking"]["mlflow_run_id"] == parent.info.run_id
    again = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(again) == 3

    # MLflow's own CLI lists them
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("mlflow")), "runs", "list", "--experiment-id", exp.experiment_id],
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"},
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0 and "curate" in listed.stdout, listed.stderr[-2000:]


def _wandb_records(path: Path):
    """The records of a W&B offline run's transaction log (`run-<id>.wandb`: a ':W&B' header, then
    LevelDB-log framed chunks in 32 KiB blocks, each record a wandb_internal_pb2.Record) — read
    with W&B's own protobuf classes, since wandb ships no reader for offline runs."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL / FIRST start a record
        if kind in (1, 4):  # FULL / LAST end it
            record = Record()
            record.ParseFromString(buf)
            yield record


def _wandb_run(folder: Path) -> dict:
    """One offline run: its group, job type, name, config, history rows by step, exit code."""
    out: dict = {"history": {}, "config": {}, "artifacts": []}
    for r in _wandb_records(next(folder.glob("run-*.wandb"))):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(group=r.run.run_group, job_type=r.run.job_type, name=r.run.display_name)
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            out["history"].setdefault(r.history.step.num, {}).update(row)
        elif kind == "artifact":
            out["artifacts"].append((r.artifact.name, r.artifact.type))
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.mark.slow
def test_a_run_logs_a_wandb_run_per_stage_offline_with_the_trainers_in_its_group(tmp_path):
    runs = tmp_path / "runs"
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--until", "cpt", "--runs-dir", str(runs),
            "--set", "tracking.backend=wandb", "--set", "stages.cpt.trainer.max_steps=3",
            "--set", "stages.cpt.trainer.logging_steps=1", "--set", "evaluation.max_items=4"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = runs / "finance" / "tiny"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["tracking"] == {"backend": "wandb", "project": "finance", "group": "finance/tiny"}
    found = [_wandb_run(f) for f in sorted((root / "wandb").glob("offline-run-*"))]
    assert {r["group"] for r in found} == {"finance/tiny"}
    by_job = {r["job_type"]: r for r in found}
    assert {"tiny_models", "curate", "cpt", "cpt/trainer", "artifacts"} <= set(by_job)
    curate, m = by_job["curate"], manifest["stages"]["curate"]["metrics"]
    assert curate["exit_code"] == 0 and curate["config"]["shard_size"] == "300"
    assert curate["history"][0]["kept"] == m["kept"] and curate["history"][0]["read"] == m["read"]
    cpt = by_job["cpt"]
    assert cpt["config"]["trainer.max_steps"] == "3"
    c = manifest["stages"]["cpt"]["metrics"]
    assert cpt["history"][0]["heldout_perplexity_after"] == pytest.approx(c["heldout_perplexity_after"])
    # the trainer's own loss curve: transformers' WandbCallback, in the pipeline's group
    trainer = by_job["cpt/trainer"]
    losses = {
        row["train/global_step"]: row["train/loss"]
        for row in trainer["history"].values()
        if "train/loss" in row
    }
    assert sorted(losses) == [1, 2, 3] and all(v > 0 for v in losses.values())
    assert ("finance-tiny-report", "report") in by_job["artifacts"]["artifacts"]
    # wandb's service process stopped with the run
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(root) not in ps
