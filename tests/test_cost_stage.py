"""The cost stage on a measured run (tests/data/report_manifest.json): prices follow from the
bench sweep, the recipe's prices and volumes, and nothing else."""

import json
from pathlib import Path

import pytest

from verticalft.recipe import load_recipe
from verticalft.rundir import RunDir
from verticalft.stages import cost
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *overrides: str) -> dict:
    manifest = json.loads((ROOT / "tests/data/report_manifest.json").read_text())
    manifest["stages"].pop("cost")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for stage in manifest["stages"]:
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "DONE.json").write_text(json.dumps({"fingerprint": "x"}))
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", overrides)
    return cost.run(StageContext(recipe, RunDir(tmp_path), "cost")).metrics


def test_prices_come_from_the_operating_point_and_the_recipe(tmp_path):
    manifest = json.loads((ROOT / "tests/data/report_manifest.json").read_text())
    bench = manifest["stages"]["bench"]["metrics"]["models"]
    m = _run(tmp_path)
    assert m["assumptions"]["serve_gpu"] == "cpu" and "CPU figures" in m["assumptions"]["note"]
    for name, b in bench.items():
        c = m["models"][name]
        point = next(p for p in b["sweep"] if p["max_concurrency"] == b["operating_concurrency"])
        assert c["priced_at_concurrency"] == b["operating_concurrency"] and c["slo_met"]
        per_hour = 0.10  # the GPU table's cpu row
        assert c["output_usd_per_m"] == pytest.approx(
            per_hour / (point["output_throughput"] * 3600) * 1e6, rel=1e-4
        )
        blended = point["output_throughput"] + point["input_throughput"]
        assert c["blended_usd_per_m"] == pytest.approx(per_hour / (blended * 3600) * 1e6, rel=1e-4)
        # 5M tokens/day at 50% input: $3/$15 → $9/1M blended → $1,350/month, whoever serves it
        assert c["compare"]["claude-sonnet"]["api_monthly_usd"] == 1350.0
        assert c["self_hosted_monthly_usd"] == pytest.approx(per_hour * 720 * c["replicas"])
        assert c["decode_floor_ms"] == pytest.approx(b["weight_bytes"] / 0.05e12 * 1e3, rel=1e-4)
    training = m["training"]
    assert set(training) >= {"cpt", "sft", "dpo", "distill"}
    assert m["upfront_usd"] == pytest.approx(sum(t["usd"] for t in training.values()), abs=1e-3)


def test_repricing_follows_the_recipe(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = _run(tmp_path / "a")
    dearer = _run(
        tmp_path / "b",
        "cost.usd_per_gpu_hour=0.2",
        "cost.daily_tokens=1e9",
        "cost.compare={claude-sonnet: {}, my-api: {input_usd_per_m: 1.0, output_usd_per_m: 2.0}}",
    )
    for name, c in dearer["models"].items():
        assert c["blended_usd_per_m"] == pytest.approx(
            2 * base["models"][name]["blended_usd_per_m"], rel=1e-4
        )
        assert c["replicas"] > base["models"][name]["replicas"]  # 1B tokens/day needs more than one CPU
        assert c["compare"]["my-api"]["api_monthly_usd"] == pytest.approx(1e9 * 30 / 1e6 * 1.5)
