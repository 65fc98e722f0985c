"""Every recipe in recipes/ end to end with PROFILE=tiny, through the CLI as a user runs it.

Slow (minutes on two CPU cores) and the point of CI: a recipe or stage that breaks fails here.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verticalft.formatting import usd
from verticalft.serving.benchmark import PER_TOKEN, POOLED

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
pytestmark = pytest.mark.slow


def vft(*args, check=True, **kw):
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"verticalft {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def manifest(runs: Path, recipe: str) -> dict:
    return json.loads((runs / recipe / "tiny" / "manifest.json").read_text())["stages"]


@pytest.fixture(scope="module", params=RECIPES)
def tiny_run(request, tmp_path_factory):
    """The recipe through tiny_models → dpo, once per module: the tests below read it, and those
    that run more stages work on their own copy (`copy_runs`), so no test depends on another's order."""
    runs = tmp_path_factory.mktemp("runs")
    vft(
        "run", f"recipes/{request.param}.yaml", "--profile", "tiny", "--until", "dpo", "--runs-dir", str(runs)
    )
    return request.param, runs


def copy_runs(runs: Path, dest: Path) -> Path:
    """A copy of a runs folder that a test may change: the manifest's output paths (absolute, under
    `runs`) are pointed at the copy, so later stages read and write the copy only."""
    shutil.copytree(runs, dest)
    for m in dest.glob("*/tiny/manifest.json"):
        m.write_text(m.read_text().replace(str(runs), str(dest)))
    return dest


def test_recipe_end_to_end(tiny_run):
    recipe, runs = tiny_run
    m = manifest(runs, recipe)
    assert {s for s in m if m[s]["status"] == "done"} == {"tiny_models", "curate", "cpt", "sft", "dpo"}
    for stage in ("tiny_models", "curate", "cpt", "sft", "dpo"):
        assert (runs / recipe / "tiny" / stage / "DONE.json").is_file()
    # Training reads what curation kept, not the raw sample (which holds duplicates and PII).
    curated = m["curate"]["metrics"]
    assert m["cpt"]["metrics"]["domain_docs"] == curated["kept"] < curated["read"]
    assert m["sft"]["metrics"]["train_examples"] < curated["records"]["sft"]["kept"]
    cpt, sft, dpo = m["cpt"]["metrics"], m["sft"]["metrics"], m["dpo"]["metrics"]
    # The tiny profile checks mechanics, not quality (its scores flip with float rounding across
    # CPUs; PROFILE=small carries the quality figures): CPT lowers held-out perplexity, losses fall
    # in every stage, no stage collapses the model to the untrained base's score.
    assert cpt["heldout_perplexity_after"] < cpt["heldout_perplexity_before"]
    for metrics in (cpt, sft, dpo):
        assert metrics["last_loss"] < metrics["first_loss"]
        assert metrics["tokens_seen"] > 0 and metrics["steps"] > 0
    base = cpt["eval_before"]["score"]
    assert sft["eval_after"]["score"] > base
    assert dpo["eval_after"]["score"] > base
    assert dpo["reward_accuracy"] > 0.5
    # Outputs are normal HF / PEFT folders.
    assert (Path(m["sft"]["outputs"]["adapter"]) / "adapter_config.json").is_file()
    assert (Path(m["dpo"]["outputs"]["model"]) / "config.json").is_file()
    assert m["sft"]["metrics"]["quantization"] == "nf4"
    # TensorBoard events land in the stage folder (report_to), not in the working directory.
    for stage in ("cpt", "sft", "dpo"):
        assert list((runs / recipe / "tiny" / stage / "tensorboard").glob("events.out.tfevents.*"))


def test_second_run_skips_every_done_stage(tiny_run):
    recipe, runs = tiny_run
    before = (runs / recipe / "tiny" / "manifest.json").read_text()
    proc = vft(
        "run", f"recipes/{recipe}.yaml", "--profile", "tiny", "--until", "dpo", "--runs-dir", str(runs)
    )
    assert proc.stdout.count("(skipped)") == 5 and "0 stage(s) ran" in proc.stdout
    assert json.loads(before)["stages"] == manifest(runs, recipe)
    status = vft("status", f"recipes/{recipe}.yaml", "--profile", "tiny", "--runs-dir", str(runs)).stdout
    assert status.count("done") >= 5


def _fast(*extra):
    return ["--set", "stages.cpt.trainer.max_steps=3", "--set", "evaluation.max_items=8", *extra]


def test_kill_during_sft_resumes_from_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "run",
        "recipes/finance.yaml",
        "-p",
        "tiny",
        "--until",
        "sft",
        "--runs-dir",
        str(runs),
        *_fast("--set", "stages.sft.trainer.max_steps=40", "--set", "stages.sft.trainer.save_steps=5"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = runs / "finance/tiny/sft/checkpoints/checkpoint-10/trainer_state.json"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert ckpt.exists(), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    m = manifest(runs, "finance")
    assert m["sft"]["status"] == "running"
    assert not (runs / "finance/tiny/sft/DONE.json").exists()

    out = vft(*args).stdout
    assert "resuming a killed attempt" in out
    m = manifest(runs, "finance")
    sft = m["sft"]["metrics"]
    assert m["sft"]["status"] == "done" and (runs / "finance/tiny/sft/DONE.json").exists()
    assert sft["resumed_from"] is not None and int(sft["resumed_from"].split("-")[1]) >= 10
    assert sft["steps"] == 40


def test_sft_runs_as_two_process_ddp_with_torchrun(tmp_path):
    runs = tmp_path / "runs"
    vft(
        "run",
        "recipes/finance.yaml",
        "-p",
        "tiny",
        "--until",
        "sft",
        "--runs-dir",
        str(runs),
        *_fast(
            "--set",
            "stages.sft.trainer.max_steps=6",
            "--set",
            "compute.launcher=torchrun",
            "--set",
            "compute.gpus_per_node=2",
        ),
    )
    sft = manifest(runs, "finance")["sft"]
    assert sft["status"] == "done" and sft["metrics"]["world_size"] == 2
    assert sft["metrics"]["steps"] == 6
    assert (Path(sft["outputs"]["adapter"]) / "adapter_model.safetensors").is_file()


def _distill(runs, *sets, check=True):
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--until", "distill", "--runs-dir", str(runs)]
    fast = ["stages.distill.max_examples=120", "stages.distill.trainer.max_steps=15", *sets]
    return vft(*args, *[x for s in fast for x in ("--set", s)], check=check)


PHASES = (
    "stages.distill.phases=[{name: heal, data: [corpus, replay], max_tokens: 3000}, "
    "{name: task, data: sft, max_steps: 4}]"
)


def test_distill_phases_heal_on_documents_then_train_on_sft_and_resume(tiny_run, tmp_path):
    """A pruned student through two phases: documents packed as CPT packs them (every token a
    target) up to a token budget, then the SFT conversations from the model the first phase saved;
    each phase scored and cached once; a run killed after the first phase keeps it."""
    recipe, shared = tiny_run
    if recipe != "finance":
        pytest.skip("the phases run on one recipe (CI time); the stage is recipe-agnostic")
    runs = copy_runs(shared, tmp_path / "runs")
    root = runs / recipe / "tiny" / "distill"
    student = "pruned-1L-influence"
    sets = [
        PHASES,
        'stages.distill.students=["prune://teacher?layers=1"]',
        "stages.distill.trainer.save_steps=2",
        # (not evaluation.*: every stage's fingerprint holds it, and cpt → dpo would run again)
        "data.eval_rephrased={path: data_pipelines/finance/sample/eval_rephrased.jsonl, license: cc-by-4.0}",
    ]
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--until", "distill", "--runs-dir", str(runs)]
    args += [x for s in ["stages.distill.max_examples=40", *sets] for x in ("--set", s)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    heal_done = root / student / "heal" / "PHASE_DONE.json"
    deadline = time.time() + 600
    while not heal_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert heal_done.exists(), "the first phase did not finish"
    os.killpg(proc.pid, signal.SIGKILL)  # killed in (or right before) the second phase
    proc.wait()

    out = vft(*args).stdout
    assert out.count("(skipped)") == 5  # tiny_models → dpo: the phases change none of their inputs
    assert f"student {student}, phase heal: done in an earlier attempt (kept)" in out
    d = manifest(runs, recipe)["distill"]
    m, heal_saved = d["metrics"], json.loads(heal_done.read_text())["record"]
    heal, task = m["students"][student]["phases"]
    assert (heal["name"], heal["data"], task["name"], task["data"]) == (
        "heal",
        "corpus+replay",
        "task",
        "sft",
    )
    # the budget: rows in order until their tokens reach 3,000 (the last row whole, rows ≤ 256 tokens)
    assert 3000 <= heal["tokens"] < 3000 + 256
    assert (
        heal["target_tokens"] == heal["tokens"] - heal["examples"]
    )  # each row's first token predicts nothing
    assert task["train"]["steps"] == 4 and task["examples"] == 40
    # the second phase trained from the first one's model; the student is the second one's
    task_done = json.loads((root / student / "task" / "PHASE_DONE.json").read_text())["record"]
    assert task_done["outputs"]["base_model"] == heal_saved["outputs"]["model"]
    assert d["outputs"][student] == task_done["outputs"]["model"]
    # one cache per phase input: the documents' holds every target token of the distinct rows
    caches = m["caches"]
    assert set(caches) == {"corpus+replay (3e+03 tokens)", "sft"}
    assert caches["corpus+replay (3e+03 tokens)"]["tokens"] == heal["target_tokens"]
    teacher = m["teacher_eval"]
    for p in (heal, task):
        assert p["score"] == p["eval"]["score"]
        assert p["retention_by_task"] == {
            t: (round(p["eval"]["by_task"][t] / s, 4) if s else None) for t, s in teacher["by_task"].items()
        }
    assert m["students"][student]["score"] == task["score"]
    # the final student and the teacher on the rephrased items too (as many as the eval's)
    s, t = m["students"][student], m["teacher_eval_rephrased"]
    assert t["n"] == s["eval_rephrased"]["n"] == teacher["n"] == 100  # tiny: evaluation.max_items
    assert s["retention_rephrased"] == (
        round(s["eval_rephrased"]["score"] / t["score"], 4) if t["score"] else None
    )


def test_distill_every_kind_after_the_teacher(tiny_run, tmp_path):
    recipe, shared = tiny_run
    if recipe != "finance":
        pytest.skip("the distill kinds run on one recipe (CI time); the stage is recipe-agnostic")
    runs = copy_runs(shared, tmp_path / "runs")
    root = runs / recipe / "tiny"
    # A student folder that passes the vocab preflight (config + tokenizer) but has no weights:
    # its failure must not lose the other student, and a rerun must redo only it.
    broken = tmp_path / "student-x"
    broken.mkdir()
    for f in (root / "tiny_models" / "student-s").iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, broken / f.name)
    students = f"stages.distill.students=[tiny://student-s, {broken}]"
    proc = _distill(runs, students, check=False)
    assert proc.returncode == 1 and "1 of 2 students failed" in proc.stdout + proc.stderr
    d = manifest(runs, recipe)["distill"]
    assert d["status"] == "failed" and list(d["metrics"]["students"]) == ["student-s"]
    assert (Path(d["outputs"]["student-s"]) / "model.safetensors").is_file()

    shutil.copy(root / "tiny_models" / "student-s" / "model.safetensors", broken)
    proc = _distill(runs, students)
    assert "student student-s: done in an earlier attempt" in proc.stdout
    d = manifest(runs, recipe)["distill"]
    m = d["metrics"]
    assert d["status"] == "done" and set(m["students"]) == {"student-s", "student-x"}
    teacher = m["teacher_eval"]["score"]
    for name, s in m["students"].items():
        assert (Path(d["outputs"][name]) / "config.json").is_file()
        assert s["retention"] == (round(s["score"] / teacher, 4) if teacher else None)
        assert s["train"]["distill_loss_last"] < s["train"]["distill_loss_first"]
        assert s["teacher_in_memory"] is False
    assert m["caches"]["sft"]["k"] == 64 and m["caches"]["sft"]["bytes_per_token"] < 1024
    assert m["vocab_preflight"]["student-s"]["verdict"] == "identical"

    for kind in ("sequence", "on_policy"):
        _distill(runs, f"stages.distill.kind={kind}", "stages.distill.students=[tiny://student-s]")
        d = manifest(runs, recipe)["distill"]
        m = d["metrics"]
        assert d["status"] == "done" and m["kind"] == kind
        s = m["students"]["student-s"]
        assert s["train"]["steps"] > 0 and s["score"] is not None
        assert (Path(d["outputs"]["student-s"]) / "config.json").is_file()
        if kind == "sequence":  # the teacher's answers, filtered like curated SFT records
            g = m["generations"]
            assert g["backend"] == "hf" and 0 < g["kept"] <= g["prompts"] == 120
            assert (root / "distill" / "teacher_generations.json").is_file()


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (process group, command line) of every live process."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            except (OSError, IndexError, ValueError):
                continue
            out[int(proc.name)] = (pgid, cmdline)
    return out


def _api_servers(runs: Path) -> list[int]:
    """vLLM API server processes of this run (not their `verticalft.procs` guard)."""
    return [
        p
        for p, (_, cmd) in _processes().items()
        if "vllm.entrypoints" in cmd and str(runs) in cmd and "verticalft.procs" not in cmd
    ]


def _group(pgid: int) -> list[int]:
    return [p for p, (g, cmd) in _processes().items() if g == pgid and cmd]


def test_eval_bench_cost_report_with_real_vllm_servers(tiny_run, tmp_path):
    """The teacher (base + DPO LoRA on one server) and the student behind real vLLM servers; the
    first attempt has its server killed mid-benchmark, the rerun completes."""
    recipe, shared = tiny_run
    if recipe != "finance":
        pytest.skip("serving runs on one recipe (CI time); the stages are recipe-agnostic")
    runs = copy_runs(shared, tmp_path / "runs")
    root = runs / recipe / "tiny"
    _distill(runs, "stages.distill.students=[tiny://student-s]")
    # --only: the shortened distill settings of the line above stay in place.
    args = ["run", f"recipes/{recipe}.yaml", "-p", "tiny", "--runs-dir", str(runs), "--only", "eval",
            "--only", "bench", "--only", "cost", "--only", "route",
            "--set", "stages.bench.concurrency=[1, 4]", "--set", "stages.bench.num_prompts=8"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 900
    while not list((root / "bench").glob("*/concurrency-1-r1.json")):  # first sweep point written
        assert proc.poll() is None, proc.stdout.read()[-5000:]
        assert time.time() < deadline, "the benchmark never started"
        time.sleep(0.5)
    victims = _api_servers(runs)
    assert len(victims) == 1, "expected one vLLM API server"
    server = victims[0]
    group = _processes()[server][0]  # the guard's process group: guard, API server, engine
    assert len(_group(group)) > 2
    os.kill(server, signal.SIGKILL)  # the server dies mid-benchmark
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "server exited with code -9 during the benchmark" in out and "last lines of" in out
    m = manifest(runs, recipe)
    assert m["eval"]["status"] == "done" and m["bench"]["status"] == "failed"
    time.sleep(1)
    assert _group(group) == [] and _api_servers(runs) == []  # engine processes went too: no orphans

    proc = vft(*args)  # the rerun works
    m = manifest(runs, recipe)
    assert all(m[s]["status"] == "done" for s in ("eval", "bench", "cost", "route"))
    ev = m["eval"]["metrics"]
    assert ev["backend"] == "vllm" and ev["teacher"] == "dpo"
    scores = ev["models"]
    assert set(scores) == {"base", "cpt", "sft", "dpo", "student-s"}
    # vLLM's greedy answers score what transformers' did during training (same weights, fp32).
    assert scores["dpo"]["domain"]["score"] == m["dpo"]["metrics"]["eval_after"]["score"]
    assert scores["student-s"]["retention"]["overall"] == round(
        scores["student-s"]["domain"]["score"] / scores["dpo"]["domain"]["score"], 4
    )
    rows = [json.loads(line) for line in (root / "eval" / "student-s.jsonl").read_text().splitlines()]
    assert len(rows) == ev["items"]["domain"] and {"prediction", "correct"} <= set(rows[0])
    # vLLM's logprobs give each answer a confidence: a mean token probability, in (0, 1]
    assert all(0.0 < r["confidence"] <= 1.0 and r["mean_logprob"] <= 0.0 for r in rows)
    # General ability: lm-eval's CLI per model (the tiny profile's first 24 questions); its own
    # results file holds each figure, and retention vs the base is the ratio of its accuracies.
    general = ev["general_eval"]
    assert general["backend"] == "hf" and general["samples"] == {"verticalft_general_mc": 24}
    acc = {}
    for name, s in scores.items():
        (found,) = (root / "eval" / "general" / name / "lm_eval").rglob("results_*.json")
        acc[name] = json.loads(found.read_text())["results"]["verticalft_general_mc"]["acc,none"]
        assert s["lm_eval"] == {"verticalft_general_mc": round(acc[name], 4)}
        command = general["commands"][name]
        assert command.split()[1:4] == ["-m", "lm_eval", "run"] and "--limit 24" in command
    assert acc["base"] > 0, "a 4-way choice on 24 questions: chance is 6 right"
    for name, s in scores.items():
        assert s["general_retention"] == round(acc[name] / acc["base"], 4)

    bench = m["bench"]["metrics"]["models"]
    assert set(bench) == {"dpo", "student-s"}
    teacher = bench["dpo"]
    assert teacher["served_as"].startswith("base + LoRA") and teacher["base_model"].endswith("sft/model")
    # Train/serve parity: base + adapter through --enable-lora answers exactly as the merged model.
    assert teacher["parity"]["prompts"] == 16 and teacher["parity"]["identical"] == 16, teacher["parity"]
    for b in bench.values():
        assert [p["max_concurrency"] for p in b["sweep"]] == [1, 4]
        for p in [*b["sweep"], b["fit_point"]]:
            # 8 requests, or more when a run of 8 lasted under the profile's min_seconds (sized)
            assert p["completed"] == p["num_prompts"] and p["failed"] == 0 and p["output_throughput"] > 0
            sizing = p["sizing"]
            assert (
                (p["num_prompts"] == 8) if sizing is None else (p["num_prompts"] == sizing["resized_to"] > 8)
            )
            assert (
                p["median_ttft_ms"] > 0
                and p["decode_tpot_ms"] > 0
                and p["tpot_method"] in (PER_TOKEN, POOLED)
                and p["p99_e2el_ms"] >= p["median_e2el_ms"]
            )
            assert len(p["repeats"]) == 2 and p["spread"] >= 0  # every point measured twice
        # the cost fit's runs: 2 repeats of the priced point (64 in / 32 out) + 2 of the second shape (16 / 32)
        assert (
            sorted((r["input_len"], r["output_len"]) for r in b["fit_runs"])
            == [(16, 32)] * 2 + [(64, 32)] * 2
        )
    cost = m["cost"]["metrics"]
    assert cost["assumptions"]["serve_gpu"] == "cpu" and "CPU figures" in cost["assumptions"]["note"]
    for c in cost["models"].values():
        t = c["token_seconds"]
        assert t["output_s"] > 0 and t["input_s"] >= 0
        # half input, half output, at the cpu row's $0.10/h
        per_token = 0.5 * t["input_s"] + 0.5 * t["output_s"]
        assert c["saturated_usd_per_m"] == pytest.approx(per_token * 0.10 / 3600 * 1e6, rel=1e-3)
        assert c["effective_usd_per_m"] == pytest.approx(c["replicas"] * 72.0 / 150, rel=1e-4)
        # claude-sonnet (shipped row: $2 / $10) at half input is $6/1M → $900/month at 5M/day
        assert c["compare"]["claude-sonnet"]["api_monthly_usd"] == 900.0
    routed = m["route"]["metrics"]["cascades"]["student-s → dpo"]
    assert 0.0 <= routed["chosen"]["quality"] <= 1.0 and sum(routed["chosen"]["shares"]) == pytest.approx(1.0)
    report = (root / "report.md").read_text()
    for name in ("dpo", "student-s"):
        assert name in report
    assert "## General ability (lm-evaluation-harness)" in report and general["commands"]["base"] in report
    # Every priced model's Decision row is filled: a key renamed between a stage and the report
    # would show "–" (the last cell, LoRA parity, is "–" for a model served as merged weights).
    decision = report[report.index("## Decision") : report.index("\n## ", report.index("## Decision"))]
    for name in cost["models"]:
        row = next(line for line in decision.splitlines() if line.startswith(f"| {name} |"))
        assert not [cell for cell in row.split("|")[1:-2] if "–" in cell], row
    assert _api_servers(runs) == []

    # `verticalft report` re-prices from what was measured, without serving anything.
    before = cost["models"]["student-s"]["effective_usd_per_m"]
    vft(
        "report",
        f"recipes/{recipe}.yaml",
        "-p",
        "tiny",
        "--runs-dir",
        str(runs),
        "--set",
        "cost.usd_per_gpu_hour=0.2",
    )
    after = manifest(runs, recipe)["cost"]["metrics"]["models"]["student-s"]["effective_usd_per_m"]
    assert after == pytest.approx(2 * before, rel=1e-3)
    # `verticalft route` re-decides the cascade for another target, without serving anything.
    vft("route", f"recipes/{recipe}.yaml", "-p", "tiny", "--runs-dir", str(runs),
        "--set", "route.target={max_usd_per_m: 1000}")  # fmt: skip
    routed = manifest(runs, recipe)["route"]["metrics"]["cascades"]["student-s → dpo"]
    assert routed["target"] == {"max_usd_per_m": 1000.0} and routed["target_met_on_pick_half"] is True


def test_quantized_student_is_measured_like_the_others_then_exported_with_a_card(tiny_run, tmp_path):
    """stages.export end to end: the student quantized (W8A8 with llm-compressor, FP8 made but not
    served on CPU), the W8A8 variant scored, benchmarked and priced beside the others, then every
    chosen model in export/<name>/ with a Hub model card; push's dry run lists the files."""
    recipe, shared = tiny_run
    if recipe != "finance":
        pytest.skip("one recipe (CI time); the stages are recipe-agnostic")
    runs = copy_runs(shared, tmp_path / "runs")
    root = runs / recipe / "tiny"
    _distill(runs, "stages.distill.students=[tiny://student-s]")
    vft("export", f"recipes/{recipe}.yaml", "-p", "tiny", "--runs-dir", str(runs),
        "--set", "stages.eval.general=null",  # lm-eval: test_eval_bench_cost_report_… (CI time)
        "--set", "stages.bench.concurrency=[1]", "--set", "stages.bench.num_prompts=8",
        "--set", "stages.bench.repeats=1", "--set", "stages.bench.fit_shape=null")  # fmt: skip
    m = manifest(runs, recipe)
    assert all(m[s]["status"] == "done" for s in ("quantize", "eval", "bench", "cost", "route", "export"))
    variants = {v["name"]: v for v in m["quantize"]["metrics"]["variants"]}
    assert set(variants) == {"student-s-w8a8", "student-s-fp8_dynamic"}
    w8 = variants["student-s-w8a8"]
    assert w8["served_here"] and not variants["student-s-fp8_dynamic"]["served_here"]
    # int8 linear layers, bf16 embeddings: smaller than the fp32 student folder
    assert w8["bytes"] < w8["source_bytes"]

    scores = m["eval"]["metrics"]["models"]
    assert "student-s-w8a8" in scores and "student-s-fp8_dynamic" not in scores
    q = scores["student-s-w8a8"]
    assert q["role"] == "student" and q["quantization"] == "W8A8" and q["quantized_from"] == "student-s"
    teacher = m["eval"]["metrics"]["teacher"]
    assert teacher == "dpo"  # a variant never becomes the teacher
    assert q["retention"]["overall"] == round(q["domain"]["score"] / scores["dpo"]["domain"]["score"], 4)
    rows = [json.loads(x) for x in (root / "eval" / "student-s-w8a8.jsonl").read_text().splitlines()]
    assert len(rows) == m["eval"]["metrics"]["items"]["domain"]
    bench = m["bench"]["metrics"]["models"]
    assert set(bench) == {"dpo", "student-s", "student-s-w8a8"}
    assert bench["student-s-w8a8"]["weight_bytes"] == w8["bytes"]
    point = bench["student-s-w8a8"]["sweep"][0]  # 8 requests, or more when resized (min_seconds)
    assert point["completed"] == point["num_prompts"] >= 8 and point["failed"] == 0
    assert "student-s-w8a8" in m["cost"]["metrics"]["models"]

    # export/: the student, its two variants (FP8 too: made, to be measured on a GPU); not the teacher
    folders = m["export"]["outputs"]
    assert set(folders) == {"student-s", "student-s-w8a8", "student-s-fp8_dynamic"}
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(folders["student-s-w8a8"]) / "README.md")
    assert card.data.base_model == "tiny://teacher" and "compressed-tensors" in card.data.tags
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["domain score"] == q["domain"]["score"]
    assert results["retention vs teacher"] == q["retention"]["overall"]
    text = card.text
    assert "W8A8" in text and "llm-compressor 0.14.0.1" in text and "## Recipe (resolved)" in text
    effective = m["cost"]["metrics"]["models"]["student-s-w8a8"]["effective_usd_per_m"]
    assert usd(effective) in text and "## Chat template" in text
    fp8 = (Path(folders["student-s-fp8_dynamic"]) / "README.md").read_text()
    assert "torch._scaled_mm" in fp8  # says why it was not measured here
    # the weights are the quantize stage's files (hard links), loadable where they are
    assert (Path(folders["student-s-w8a8"]) / "model.safetensors").stat().st_size == w8["bytes"]

    out = vft("push", f"recipes/{recipe}.yaml", "-p", "tiny", "--runs-dir", str(runs), "--model",
              "student-s-w8a8", "--repo", "acme/finance-student", "--dry-run").stdout  # fmt: skip
    assert "would upload" in out and "acme/finance-student" in out and "README.md" in out
    assert "model.safetensors" in out and "HF_TOKEN is NOT set" in out
    report = (root / "report.md").read_text()
    assert "student, W8A8 of student-s" in report
