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
