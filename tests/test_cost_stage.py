"""The cost and route stages on a run directory written by hand: every expected figure below is
computed in the comments from the inputs, not by the code under test."""

import json
from pathlib import Path

import pytest

from verticalft.recipe import load_recipe
from verticalft.routing import split_halves
from verticalft.rundir import RunDir, atomic_write_json
from verticalft.stages import cost, route
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]


def _point(c, out_tps, in_tps, meets=True, tpot=10.0):
    return {"max_concurrency": c, "output_throughput": out_tps, "input_throughput": in_tps, "meets_slo": meets,
            "median_tpot_ms": tpot, "decode_tpot_ms": tpot, "tpot_method": "per-token chunks",
            "failed": 0}  # fmt: skip


def _bench_model(gpus=1):
    # shape A 100 in / 50 out took 0.6 s, shape B 25 in / 50 out 0.525 s
    # → 0.001 s per input token, 0.01 s per output token (solved by hand in tests/test_pricing.py)
    return {"gpus": gpus, "weight_bytes": 1_000_000, "operating_concurrency": 4,
            "sweep": [_point(1, 50, 100), _point(4, 150, 300)],
            "fit_runs": [{"duration": 0.6, "total_input_tokens": 100, "total_output_tokens": 50},
                         {"duration": 0.525, "total_input_tokens": 25, "total_output_tokens": 50}]}  # fmt: skip


def _stage(run: RunDir, name: str, metrics: dict, outputs: dict | None = None) -> None:
    data = run.manifest()
    data["stages"][name] = {
        "status": "done",
        "metrics": metrics,
        "outputs": outputs or {},
        "wall_time_s": 0.0,
    }
    atomic_write_json(run.manifest_path, data)
    atomic_write_json(run.stage_dir(name) / "DONE.json", {"fingerprint": "x"})


def _run_dir(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path)
    device = {"kind": "cpu", "name": "test cpu", "count": 2}
    _stage(run, "bench", {"device": device, "models": {"student-s": _bench_model(), "dpo": _bench_model(2)}})
    run.log_attempt("sft", "failed", 100.0)
    run.log_attempt("sft", "done", 200.0)
    return run


def _cost(tmp_path: Path, *overrides: str) -> dict:
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", list(overrides))
    return cost.run(StageContext(recipe, RunDir(tmp_path), "cost")).metrics


def test_cost_prices_the_recipes_mix_at_the_stated_volume(tmp_path):
    _run_dir(tmp_path)
    m = _cost(tmp_path, "cost.compare={claude-sonnet-4: {}, gpt-4o-mini: {}}")
    s = m["models"]["student-s"]
    # mix 50% input: 0.5 × 0.001 + 0.5 × 0.01 = 0.0055 s/token → 181.82 tokens/s per replica
    assert s["capacity_tokens_per_s"] == pytest.approx(181.818, abs=1e-3)
    # the cpu row: $0.10/h → 0.0055 × 0.10 / 3600 × 1e6 = $0.15278 per 1M, busy all month
    assert s["saturated_usd_per_m"] == pytest.approx(0.152778, abs=1e-6)
    assert s["input_usd_per_m"] == pytest.approx(0.027778, abs=1e-6)  # 0.001 × 0.10 / 3600 × 1e6
    assert s["output_usd_per_m"] == pytest.approx(0.277778, abs=1e-6)
    # 5M tokens/day: 57.9 tokens/s, peak 115.7 < 181.8 → one replica, $0.10 × 720 = $72/month;
    # 150M tokens a month → $0.48 per 1M actually served
    assert (s["replicas"], s["self_hosted_monthly_usd"], s["effective_usd_per_m"]) == (1, 72.0, 0.48)
    # dpo on 2 GPUs: twice the price per replica-hour
    assert m["models"]["dpo"]["self_hosted_monthly_usd"] == 144.0
    sonnet, mini = s["compare"]["claude-sonnet-4"], s["compare"]["gpt-4o-mini"]
    # $3/$15 at half input = $9/1M → $1,350/month; break-even: $72 = V × 30 × 9 / 1e6 → 266,667/day
    assert (sonnet["api_usd_per_m"], sonnet["api_monthly_usd"]) == (9.0, 1350.0)
    assert sonnet["break_even_daily_tokens"] == 266_667
    assert sonnet["payback_months"] == pytest.approx(m["upfront_usd"] / (1350 - 72), abs=1e-3)
    # $0.375/1M → V = 72e6 / (30 × 0.375) = 6.4M/day, and one replica carries 181.82 × 86,400 / 2 = 7.85M
    assert mini["break_even_daily_tokens"] == 6_400_000
    assert mini["monthly_savings_usd"] == pytest.approx(56.25 - 72)
    # every attempt counts: sft failed after 100 s and finished in 200 s → 300 s × $0.10/h
    assert m["spend"]["sft"]["wall_time_s"] == 300.0 and m["spend"]["sft"]["attempts"] == 2
    assert m["spend"]["sft"]["usd"] == pytest.approx(300 / 3600 * 0.10, abs=1e-6)
    assert m["spend"]["sft"]["failed_or_killed"] == 1


def test_the_physical_limit_reads_the_decode_tpot_not_vllms_median(tmp_path):
    run = _run_dir(tmp_path)
    data = run.manifest()
    one = data["stages"]["bench"]["metrics"]["models"]["student-s"]["sweep"][0]
    # answers that mostly arrived in one chunk: vLLM's median 0.004 ms, the per-token requests 2 ms
    one.update(median_tpot_ms=0.004, decode_tpot_ms=2.0)
    atomic_write_json(run.manifest_path, data)
    s = _cost(tmp_path)["models"]["student-s"]
    # cpu row: 0.05 TB/s; 1e6 bytes / 0.05e12 B/s = 0.02 ms floor; MBU = 0.02 / 2.0 = 1% (not 500%)
    assert s["decode_floor_ms"] == pytest.approx(0.02)
    assert s["measured_tpot_ms_at_1"] == 2.0 and s["bandwidth_utilisation"] == pytest.approx(0.01)
    assert s["tpot_method_at_1"] == "per-token chunks"


def test_a_mix_the_recipe_changes_is_repriced(tmp_path):
    _run_dir(tmp_path)
    s = _cost(tmp_path, "cost.input_fraction=0.8")["models"]["student-s"]
    # 0.8 × 0.001 + 0.2 × 0.01 = 0.0028 s/token → 357.14 tokens/s → $0.07778 per 1M saturated
    assert s["capacity_tokens_per_s"] == pytest.approx(357.143, abs=1e-3)
    assert s["saturated_usd_per_m"] == pytest.approx(0.077778, abs=1e-6)


def test_throughput_from_another_device_needs_a_stated_scale(tmp_path):
    _run_dir(tmp_path)
    with pytest.raises(ValueError, match="cost.throughput_scale"):
        _cost(tmp_path, "cost.serve_gpu=h100-sxm")
    s = _cost(tmp_path, "cost.serve_gpu=h100-sxm", "cost.throughput_scale=10")
    assert s["assumptions"]["throughput_scale"] == 10
    assert s["models"]["student-s"]["capacity_tokens_per_s"] == pytest.approx(1818.18, abs=0.01)


def _eval_rows(path: Path, rows: list[tuple[str, bool, float]]) -> str:
    lines = [{"set": "domain", "prompt": p, "answer": "x", "kind": "label", "prediction": "x" if ok else "y",
              "correct": ok, "confidence": conf} for p, ok, conf in rows]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return str(path)


def _student_answers(tmp_path: Path) -> tuple[RunDir, list[str], set[str], str]:
    """40 eval items, every 4th hard: the student is sure (0.9) and right on easy items, unsure
    (0.2) and wrong on hard ones."""
    run = _run_dir(tmp_path)
    prompts = [f"question {i}" for i in range(40)]
    hard = {p for i, p in enumerate(prompts) if i % 4 == 0}
    (tmp_path / "eval").mkdir(exist_ok=True)
    rows = [(p, p not in hard, 0.2 if p in hard else 0.9) for p in prompts]
    return run, prompts, hard, _eval_rows(tmp_path / "eval/student-s.jsonl", rows)


def test_route_chooses_on_one_half_and_reports_on_the_other(tmp_path):
    run, prompts, hard, student = _student_answers(tmp_path)  # the teacher is right everywhere
    teacher = _eval_rows(tmp_path / "eval/dpo.jsonl", [(p, True, 0.5) for p in prompts])
    _stage(run, "eval", {"teacher": "dpo", "models": {"student-s": {"role": "student"}, "dpo": {"role": "teacher"}}},
           {"student-s": student, "dpo": teacher})  # fmt: skip
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [])
    ctx = StageContext(recipe, run, "cost")
    _stage(run, "cost", cost.run(ctx).metrics)
    m = route.run(StageContext(recipe, run, "route")).metrics
    cas = m["cascades"]["student-s → dpo"]
    pick, report = split_halves(prompts)
    share_hard = sum(prompts[i] in hard for i in report) / len(report)
    # target: 95% of the teacher's 1.0 → the threshold 0.9 keeps every easy item with the student
    assert cas["chosen"]["thresholds"] == [0.9] and cas["chosen"]["quality"] == 1.0
    assert cas["chosen"]["shares"] == [
        pytest.approx(1 - share_hard, abs=1e-4),
        pytest.approx(share_hard, abs=1e-4),
    ]
    # at 5M tokens/day the student needs its replica ($72) and the escalated share still needs one
    # whole teacher replica on 2 GPUs ($144): (72 + 144) / 150M tokens = $1.44 per 1M; the teacher
    # alone is $144 / 150 = $0.96 — at this volume routing costs more, and the report says so
    assert cas["chosen"]["usd_per_m"] == pytest.approx(1.44) and cas["last_tier_alone"]["usd_per_m"] == 0.96
    assert cas["sentence"].endswith("1.00 of dpo's quality at 150% of its cost")
    # calibration: the student's 0.9 bin is 100% right (|1 − 0.9|), its 0.2 bin 0% (|0 − 0.2|)
    share_all = len(hard) / len(prompts)
    assert m["calibration"]["student-s"]["ece"] == pytest.approx(
        (1 - share_all) * 0.1 + share_all * 0.2, abs=1e-4
    )
    assert m["items"] == {"pick": len(pick), "report": len(report)}


def test_an_api_tier_is_scored_from_its_answers_and_billed_per_token(tmp_path):
    run, prompts, hard, student = _student_answers(tmp_path)
    _stage(
        run, "eval", {"teacher": "dpo", "models": {"student-s": {"role": "student"}}}, {"student-s": student}
    )
    answers = tmp_path / "gpt4o.jsonl"
    answers.write_text("".join(json.dumps({"prompt": p, "prediction": "x"}) + "\n" for p in prompts))
    eval_file = tmp_path / "eval_items.jsonl"  # the recipe's eval set: the answer to every prompt is "x"
    eval_file.write_text(
        "".join(json.dumps({"prompt": p, "answer": "x", "kind": "label"}) + "\n" for p in prompts)
    )
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [
        f"data.eval.path={eval_file}",
        f"route.apis={{gpt-4o: {{answers: {answers}}}}}",
        "route.cascades=[[student-s, api:gpt-4o]]",
        "route.target={min_quality: 1.0}",
    ])  # fmt: skip
    _stage(run, "cost", cost.run(StageContext(recipe, run, "cost")).metrics)
    m = route.run(StageContext(recipe, run, "route")).metrics
    cas = m["cascades"]["student-s → api:gpt-4o"]
    _, report = split_halves(prompts)
    h = sum(prompts[i] in hard for i in report) / len(report)
    # gpt-4o: $2.50 in / $10 out at half input = $6.25 per 1M, paid per token on the escalated share;
    # the student's replica ($72 / 150M tokens = $0.48 per 1M) serves everything
    assert cas["chosen"]["quality"] == 1.0 and cas["chosen"]["thresholds"] == [0.9]
    assert cas["chosen"]["usd_per_m"] == pytest.approx(0.48 + h * 6.25, abs=1e-6)
    assert m["singles"]["api:gpt-4o"] == {
        "thresholds": [],
        "quality": 1.0,
        "shares": [1.0],
        "usd_per_m": 6.25,
    }


def test_route_without_a_scored_teacher_says_which_key_to_set(tmp_path):
    # eval scored students only (include_base: false, no trained teacher stage): the default
    # cascade "<student> → teacher" has no teacher to escalate to. Before: AttributeError on None.
    run, _, _, student = _student_answers(tmp_path)
    _stage(
        run, "eval", {"teacher": None, "models": {"student-s": {"role": "student"}}}, {"student-s": student}
    )
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [])
    _stage(run, "cost", cost.run(StageContext(recipe, run, "cost")).metrics)
    with pytest.raises(ValueError, match=r"scored no teacher .*name the tiers in route\.cascades"):
        route.run(StageContext(recipe, run, "route"))
