"""report.md and its plots, from a trimmed real manifest (tiny finance run on CPU, every stage).

The fixture is `tests/data/report_manifest.json`: a real run's manifest with loss curves thinned,
eval examples dropped and paths made relative to the run directory.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from verticalft import metrics as mx
from verticalft.formatting import usd
from verticalft.report import render, write_report
from verticalft.rundir import RunDir, atomic_write_json

FIXTURE = Path(__file__).parent / "data" / "report_manifest.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SERVING_PLOTS = (
    "quality_vs_cost",
    "monthly_cost",
    "latency_vs_throughput",
    "routing_frontier",
    "calibration",
)


@pytest.fixture(scope="module")
def base_manifest() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def manifest(base_manifest: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(base_manifest)


def _cost(m: dict[str, Any]) -> dict[str, Any]:
    return m["stages"]["cost"]["metrics"]


def _row(text: str, name: str) -> str:
    """The Decision table's row for `name` (the first table in the report that starts with it)."""
    return next(line for line in text.splitlines() if line.startswith(f"| {name} |"))


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _run(tmp: Path, m: dict[str, Any], funnel: bool = False) -> tuple[Path, str]:
    atomic_write_json(tmp / "manifest.json", m)
    if funnel:  # the curation stage draws this next to its report (outputs.report)
        (tmp / "curate").mkdir(parents=True, exist_ok=True)
        (tmp / "curate" / "funnel.png").write_bytes(PNG_MAGIC)
    path = Path(write_report(RunDir(tmp), "finance (tiny)"))
    return path, path.read_text()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, base_manifest: dict[str, Any]) -> tuple[Path, str]:
    """One write_report on the whole fixture, shared: drawing the plots is the slow part."""
    return _run(tmp_path_factory.mktemp("run"), base_manifest, funnel=True)


def test_decision_comes_first_with_each_models_numbers(manifest: dict[str, Any]) -> None:
    text = render(manifest, "finance (tiny)")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Decision"
    ev = manifest["stages"]["eval"]["metrics"]["models"]
    priced = _cost(manifest)["models"]
    assert set(priced) <= set(ev)
    for name, e in ev.items():
        row = _row(text, name)
        assert f"| {e['domain']['score']:.3f} |" in row
        if name in priced:
            c = priced[name]
            assert f"| {usd(c['effective_usd_per_m'])} | {usd(c['saturated_usd_per_m'])} |" in row
            assert f"{c['p50_e2el_ms']:,.0f} / {c['p99_e2el_ms']:,.0f}" in row
            assert f"{c['output_tokens_per_s']:,.0f}" in row
            assert f"| {c['priced_at_concurrency']}" in row
    # The formatter keeps small prices readable: never rounded to $0.00 or written as 6.761e-03.
    assert "e-0" not in _section(text, "Decision") and "| $0.00 |" not in _section(text, "Decision")


def test_retention_and_sentences_come_from_the_numbers(manifest: dict[str, Any]) -> None:
    text = render(manifest, "t")
    ev = manifest["stages"]["eval"]["metrics"]
    teacher = ev["teacher"]
    assert "| 1.000 |" in _row(text, teacher)
    priced = _cost(manifest)["models"]
    for name in ("student-s", "student-m"):
        ret = ev["models"][name]["retention"]["overall"]
        assert f"| {ret:.3f} |" in _row(text, name)
        ratio = priced[name]["effective_usd_per_m"] / priced[teacher]["effective_usd_per_m"]
        assert f"**{name}** keeps {ret:.0%} of the teacher `{teacher}`'s domain score" in text
        assert f"at {ratio:.0%} of its effective cost per token" in text
    daily = _cost(manifest)["assumptions"]["daily_tokens"]
    s = priced["student-s"]
    sonnet = s["compare"]["claude-sonnet"]
    assert (
        f"At {daily:,.0f} tokens/day, **student-s** self-hosted costs {usd(s['self_hosted_monthly_usd'])}/month"
        in text
    )
    assert f"vs claude-sonnet {usd(sonnet['api_monthly_usd'])}/month" in text


def test_payback_none_renders_never(manifest: dict[str, Any]) -> None:
    s = _cost(manifest)["models"]["student-s"]["compare"]
    s["gpt-4o-mini"]["payback_months"], s["gpt-4o-mini"]["break_even_daily_tokens"] = None, None
    s["claude-sonnet"]["payback_months"], s["claude-sonnet"]["break_even_daily_tokens"] = 3.25, 400_000
    text = render(manifest, "t")
    mini, sonnet = usd(s["gpt-4o-mini"]["api_monthly_usd"]), usd(s["claude-sonnet"]["api_monthly_usd"])
    assert f"vs gpt-4o-mini {mini}/month → payback never, the API is cheaper at any volume" in text
    assert f"vs claude-sonnet {sonnet}/month → payback 3.25 months, break-even at 400,000 tokens/day" in text
    assert "None" not in _section(text, "Decision")


def test_cpu_note_is_prominent_only_on_cpu(manifest: dict[str, Any]) -> None:
    note = _cost(manifest)["assumptions"]["note"]
    text = render(manifest, "t")
    decision = _section(text, "Decision")
    assert f"> **CPU figures. Note:** {note}" in decision
    assert decision.index(note) < decision.index("| model |")
    a = _cost(manifest)["assumptions"]
    a["serve_gpu"], a["note"] = "h100", "Prices at the measured operating point."
    text = render(manifest, "t")
    assert "CPU figures" not in text
    assert "> **Note:** Prices at the measured operating point." in text


def test_assumptions_and_training_cost(manifest: dict[str, Any]) -> None:
    text = render(manifest, "t")
    a = _section(text, "Assumptions")
    assert "5,000,000 tokens/day, 50% input / 50% output" in a
    # each API price with its versioned model id, date and source (the shipped table's rows)
    sonnet = _cost(manifest)["assumptions"]["api_prices"]["claude-sonnet"]
    assert (
        f"| claude-sonnet | `{sonnet['model']}` | $2.00 | $10.00 | {sonnet['as_of']} | {sonnet['source']} |"
        in a
    )
    assert "A month is 720 hours" in a and "Peak-to-average: 2 " in a
    assert "MFU behind the planned $" in a and "GPUs per replica (vLLM tensor parallelism): " in a
    assert "TB/s behind the decode floor" in a
    t = _section(text, "Spend so far")
    for stage, row in _cost(manifest)["spend"].items():
        assert f"| {stage} | {row['attempts']}" in t and f"| {usd(row['usd'])} |" in t
    assert usd(_cost(manifest)["upfront_usd"]) in t


def test_mbu_above_one_is_flagged(manifest: dict[str, Any]) -> None:
    assert "check the measurement" not in render(manifest, "t")
    _cost(manifest)["models"]["student-m"]["bandwidth_utilisation"] = 1.7
    phys = _section(render(manifest, "t"), "Physical limit")
    flagged = [line for line in phys.splitlines() if "check the measurement" in line]
    assert len(flagged) == 1 and flagged[0].startswith("| student-m |") and "170.0%" in flagged[0]
    wb = manifest["stages"]["bench"]["metrics"]["models"]["student-m"]["weight_bytes"]
    assert f"{wb:,}" in flagged[0]


def test_slo_miss_and_lora_parity_are_shown(manifest: dict[str, Any]) -> None:
    dpo = _cost(manifest)["models"]["dpo"]
    dpo["slo_met"] = False
    manifest["stages"]["bench"]["metrics"]["models"]["student-s"]["parity"] = {
        "prompts": 32,
        "identical": 31,
        "match_rate": 0.969,
        "mismatches": [],
    }
    text = render(manifest, "t")
    assert f"| {dpo['priced_at_concurrency']} (SLO not met) |" in _row(text, "dpo")
    assert _row(text, "student-s").endswith("| 31/32 |")
    assert _row(text, "student-m").endswith("| – |")


def test_plots_are_real_pngs_embedded_in_the_report(full_run: tuple[Path, str]) -> None:
    import matplotlib.image
    from PIL import Image

    path, text = full_run
    plots = path.parent / "plots"
    names = (*SERVING_PLOTS, "loss_curves")
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"{n}.png" for n in names)  # no temp files
    for name in names:
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        h, w, *_ = matplotlib.image.imread(png).shape
        assert h > 100 and w > 100
        assert f"](plots/{name}.png)" in text
        title = Image.open(png).text["Title"]
        assert ("(CPU figures)" in title) == (name in SERVING_PLOTS)
    assert "](curate/funnel.png)" in text
    assert text.index("](plots/quality_vs_cost.png)") < text.index("## Assumptions")


def test_a_run_without_eval_bench_cost_still_renders(manifest: dict[str, Any], tmp_path: Path) -> None:
    for stage in ("eval", "bench", "cost", "route"):
        del manifest["stages"][stage]
    manifest["stage_order"] = [s for s in manifest["stage_order"] if s in manifest["stages"]]
    # A student trained without a recorded loss curve is simply left out of the loss plot.
    del manifest["stages"]["distill"]["metrics"]["students"]["student-m"]["train"]["loss_curve"]
    path, text = _run(tmp_path, manifest)
    for heading in ("Decision", "Assumptions", "Physical limit", "Spend so far"):
        assert f"## {heading}" not in text
    assert "## Stages" in text and "## Distillation" in text
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss_curves.png"]
    assert "](plots/loss_curves.png)" in text and "funnel" not in text


def test_an_empty_manifest_renders_without_plots(tmp_path: Path) -> None:
    path, text = _run(tmp_path, {"stages": {}})
    assert text.startswith("# finance (tiny)")
    assert not (tmp_path / "plots").exists()


def test_report_rebuild_overwrites_plots(full_run: tuple[Path, str], tmp_path: Path) -> None:
    """A second report (e.g. `verticalft report` after re-pricing) replaces the PNGs in place."""
    run = tmp_path / "again"
    shutil.copytree(full_run[0].parent, run)
    m = json.loads((run / "manifest.json").read_text())
    _cost(m)["models"]["student-s"]["self_hosted_monthly_usd"] = 7200.0
    before = (run / "plots" / "monthly_cost.png").read_bytes()
    _, text = _run(run, m)
    assert (run / "plots" / "monthly_cost.png").read_bytes() != before
    assert "**student-s** self-hosted costs $7,200/month" in text


def test_the_benchmark_device_is_named(manifest: dict[str, Any]) -> None:
    bench = manifest["stages"]["bench"]["metrics"]
    bench.pop("device", None)  # older manifests have none: nothing is shown
    assert "Benchmarked on" not in _section(render(manifest, "t"), "Assumptions")
    bench["device"] = {"kind": "gpu", "name": "NVIDIA H100 80GB HBM3", "count": 8, "memory_gb": 85.0}
    assert "- Benchmarked on: NVIDIA H100 80GB HBM3 × 8 GPU(s), 85 GB" in _section(
        render(manifest, "t"), "Assumptions"
    )


def test_serving_device_reads_this_machine() -> None:
    from verticalft.serving.device import serving_device

    dev = serving_device()
    assert dev["kind"] == "cpu" and dev["count"] >= 1 and dev["memory_gb"] > 1  # no GPU here
    assert dev["name"] and dev["name"] != "cpu"


def test_routing_section_says_the_chosen_point_in_words(manifest: dict[str, Any]) -> None:
    route = manifest["stages"]["route"]["metrics"]
    text = _section(
        render(manifest, "t"), "Routing: the student answers first, the teacher when it is unsure"
    )
    for name, cas in route["cascades"].items():
        assert f"- **{name}**: {cas['sentence']}." in text
        assert _row(text, name).count("|") == 8
    for name, cal in route["calibration"].items():
        assert f"| {name} | {cal['ece']:.3f} |" in text
    assert f"on the other {route['items']['report']}" in text


def test_unstable_repeats_are_flagged_not_priced_silently(manifest: dict[str, Any]) -> None:
    assert "repeats disagree" not in render(manifest, "t") or any(
        c.get("unstable_points") for c in _cost(manifest)["models"].values()
    )
    _cost(manifest)["models"]["student-s"]["unstable_points"] = [4]
    text = render(manifest, "t")
    assert "⚠ repeats disagree" in _row(text, "student-s")
    assert "`student-s` concurrency 4" in _section(text, "Decision")


# ---- the metrics contract: the stages' records in, every Decision cell out


def _score(x: float) -> mx.Score:
    return mx.Score(score=x, n=20, by_task={"extract": x}, by_difficulty={"1": x})


def _point(c: int, out_tps: float, p50: float, p99: float) -> mx.BenchPoint:
    return mx.BenchPoint(
        max_concurrency=c,
        duration=4.0,
        output_throughput=out_tps,
        input_throughput=2 * out_tps,
        median_e2el_ms=p50,
        p99_e2el_ms=p99,
        median_ttft_ms=10.0,
        p99_ttft_ms=20.0,
        meets_slo=True,
        decode_tpot_ms=2.0,
        tpot_method="per-token chunks",
    )


def _bench_model(name: str, sweep: list[mx.BenchPoint]) -> mx.BenchModel:
    return mx.BenchModel(
        served_as="base + LoRA (--enable-lora)",
        model=f"/{name}",
        base_model="/sft",
        adapter=f"/{name}/a",
        weight_bytes=1_000_000,
        gpus=1,
        sweep=sweep,
        operating_concurrency=4,
        fit_point=None,
        fit_runs=[],
        parity=mx.Parity(prompts=16, identical=15, match_rate=0.9375),
    )


def _cost_model(
    conc: int, effective: float, saturated: float, p50: float, p99: float, tps: float
) -> mx.CostModel:
    sonnet = mx.ApiComparison(
        api_usd_per_m=6.0,
        api_monthly_usd=900.0,
        monthly_savings_usd=828.0,
        payback_months=0.01,
        break_even_daily_tokens=400_000,
        effective_ratio=12.5,
        saturated_ratio=40.0,
    )
    return mx.CostModel(
        priced_at_concurrency=conc,
        slo_met=True,
        gpus=1,
        token_seconds=None,
        priced_mix=0.5,
        mix_note=None,
        input_usd_per_m=None,
        output_usd_per_m=None,
        capacity_tokens_per_s=400.0,
        saturated_usd_per_m=saturated,
        effective_usd_per_m=effective,
        replicas=1,
        replica_monthly_usd=72.0,
        self_hosted_monthly_usd=72.0,
        unstable_points=[],
        output_tokens_per_s=tps,
        p50_e2el_ms=p50,
        p99_e2el_ms=p99,
        p50_ttft_ms=10.0,
        p99_ttft_ms=20.0,
        compare={"claude-sonnet": sonnet},
        decode_floor_ms=0.02,
        measured_tpot_ms_at_1=2.0,
        bandwidth_utilisation=0.01,
        tpot_method_at_1="per-token chunks",
    )


def _records_manifest() -> dict[str, Any]:
    """A manifest as the eval, bench and cost stages write it: their records through `to_dict`."""
    ev = mx.EvalMetrics(
        backend="vllm",
        max_new_tokens=16,
        items={"domain": 20},
        teacher="dpo",
        models={
            "base": mx.EvalModel(role="base", path="/base", domain=_score(0.2)),
            "dpo": mx.EvalModel(role="teacher", path="/dpo", domain=_score(0.6)),
            "student-s": mx.EvalModel(
                role="student",
                path="/s",
                domain=_score(0.45),
                retention=mx.Retention(overall=0.75, by_task={"extract": 0.75}),
            ),
        },
    )
    bench = mx.BenchMetrics(
        device=mx.BenchDevice(kind="cpu", name="test cpu", count=2),
        concurrency=[1, 4],
        input_len=64,
        output_len=32,
        fit_shape=mx.FitShape(input_len=16, output_len=32),
        slo={"e2el_ms": 5000.0},
        models={
            "dpo": _bench_model("dpo", [_point(1, 100.0, 800.0, 900.0), _point(4, 300.2, 900.4, 1_800.2)]),
            "student-s": _bench_model(
                "s", [_point(1, 50.0, 1_000.0, 2_000.0), _point(4, 150.7, 1_234.4, 2_345.6)]
            ),
        },
    )
    assumptions = mx.CostAssumptions(
        serve_gpu="cpu",
        serve_usd_per_gpu_hour=0.1,
        serve_gpu_bandwidth_tb_per_s=0.05,
        serve_gpu_peak_tflops=1.0,
        gpus_per_replica={"dpo": 1, "student-s": 1},
        bench_device=bench.device,
        throughput_scale=None,
        train_gpu="cpu",
        train_usd_per_gpu_hour=0.1,
        training_gpus=1,
        mfu={"sft": 0.3},
        daily_tokens=5_000_000,
        input_fraction=0.5,
        peak_to_average=2.0,
        hours_per_month=720,
        other_upfront_usd=0.0,
        api_prices={},
        note="CPU run.",
    )
    cost = mx.CostMetrics(
        assumptions=assumptions,
        spend={},
        upfront_usd=1.0,
        models={
            "dpo": _cost_model(4, 0.96, 0.076389, 900.4, 1_800.2, 300.2),
            "student-s": _cost_model(4, 0.48, 0.152778, 1_234.4, 2_345.6, 150.7),
        },
    )
    records = {"eval": ev, "bench": bench, "cost": cost}
    return {
        "stage_order": list(records),
        "stages": {n: {"status": "done", "metrics": mx.to_dict(r)} for n, r in records.items()},
    }


def test_every_decision_cell_of_a_priced_model_comes_from_the_stages_records() -> None:
    m = json.loads(json.dumps(_records_manifest()))  # as written to and read from manifest.json
    text = render(m, "t")
    # By hand: usd() gives 4 significant digits below $1 ($0.076389 → $0.07639, $0.48 → $0.48);
    # latency and tok/s are rounded to whole numbers; parity is identical/prompts.
    assert _row(text, "dpo") == (
        "| dpo | teacher (final) | 0.600 | 1.000 | $0.96 | $0.07639 | 900 / 1,800 | 300 | 4 | 15/16 |"
    )
    assert _row(text, "student-s") == (
        "| student-s | student | 0.450 | 0.750 | $0.48 | $0.1528 | 1,234 / 2,346 | 151 | 4 | 15/16 |"
    )
    # the unpriced base has no price cells to fill: "–" there is the truth, not a lost key
    assert _row(text, "base") == "| base | base | 0.200 | – | – | – | – / – | – | – | – |"
    assert (
        "**student-s** keeps 75% of the teacher `dpo`'s domain score (0.450 vs 0.600) at 50% of its" in text
    )


def test_a_key_renamed_in_a_stage_fails_loudly_instead_of_rendering_a_dash(manifest: dict[str, Any]) -> None:
    """Before the contract the report read `.get("effective_usd_per_m")` and showed "–"."""
    priced = _cost(manifest)["models"]["student-s"]
    priced["effective_usd_per_million"] = priced.pop("effective_usd_per_m")
    with pytest.raises(
        mx.MetricsError, match=r"stages\.cost\.metrics\.models\.student-s: no 'effective_usd_per_m'"
    ):
        render(manifest, "t")
    # the writing side: a figure a stage adds without naming it in its record is refused too
    figures = {
        "loss_curve": [],
        "first_loss": 1.0,
        "last_loss": 0.5,
        "tokens_seen": 10,
        "steps": 1,
        "train_seconds": 1.0,
    }
    assert mx.trained(figures, "sft")["tokens_seen"] == 10
    with pytest.raises(mx.MetricsError, match=r"stages\.sft\.metrics: tokens_per_s not in TrainingMetrics"):
        mx.trained({**figures, "tokens_per_s": 3.0}, "sft")


def test_a_report_on_a_manifest_off_the_contract_names_the_file(
    manifest: dict[str, Any], tmp_path: Path
) -> None:
    del _cost(manifest)["models"]["dpo"]["saturated_usd_per_m"]
    with pytest.raises(
        mx.MetricsError, match=r"manifest\.json: stages\.cost\.metrics\.models\.dpo: no 'saturated_usd_per_m'"
    ):
        _run(tmp_path, manifest)
    assert not (tmp_path / "report.md").exists()


def test_cpt_score_before_reads_eval_before_and_the_old_eval_base(manifest: dict[str, Any]) -> None:
    cpt = manifest["stages"]["cpt"]["metrics"]
    cpt["eval_base"]["score"] = 0.125  # a manifest written before the rename
    assert "| 0.125 → – |" in _row(_section(render(manifest, "t"), "Stages"), "cpt")
    cpt["eval_before"] = {**cpt.pop("eval_base"), "score": 0.25}  # as cpt writes it now
    assert "| 0.250 → – |" in _row(_section(render(manifest, "t"), "Stages"), "cpt")


def test_distillation_shows_retention_after_each_phase_per_task(manifest: dict[str, Any]) -> None:
    d = manifest["stages"]["distill"]["metrics"]
    student = d["students"]["student-s"]
    # the teacher's per-task scores in the fixture: change 0.7391, extract 0.0, operating_income
    # 0.0294, txn_category 0.2794 (score 0.27)
    heal = {"name": "heal", "data": "corpus+replay", "examples": 10, "tokens": 2560, "target_tokens": 2550,
            "loss": "forward_kl", "temperature": 1.0, "ce_weight": 0.5, "train": student["train"],
            "eval": {"score": 0.135, "n": 200, "by_task": {"change": 0.3696}}, "score": 0.135, "retention": 0.5,
            "retention_by_task": {"change": 0.5, "extract": None, "operating_income": 0.0, "txn_category": 0.0}}  # fmt: skip
    task = {**heal, "name": "task", "data": "sft", "tokens": 4000, "eval": {"score": 0.27}, "score": 0.27, "retention": 1.0,
            "retention_by_task": {"change": 1.0, "extract": None, "operating_income": 1.0, "txn_category": 1.0}}  # fmt: skip
    student["phases"] = [heal, task]
    d["caches"] = {"corpus+replay (2.56e+03 tokens)": d.pop("cache")}
    d["teacher_eval_rephrased"] = {"score": 0.2, "n": 40}
    student["eval_rephrased"], student["retention_rephrased"] = {"score": 0.1, "n": 40}, 0.5
    text = render(manifest, "t")
    assert "| student | phase | data | student tokens | score | retention | change | extract | " in text
    assert "| student-s | heal | corpus+replay | 2,560 | 0.135 | 0.500 | 0.500 | – | 0.000 | 0.000 | " in text
    assert "| student-s | task | sft | 4,000 | 0.270 | 1.000 | 1.000 | – | 1.000 | 1.000 | " in text
    assert "Teacher cache (corpus+replay (2.56e+03 tokens)): top-64 of 7,699 target tokens" in text
    assert "teacher 0.200; student-m – (retention –), student-s 0.100 (retention 0.500)." in text
    # the student's train time is the sum over its phases
    section = _section(text, "Distillation (logits, teacher top-k cache)")
    assert f"| {2 * student['train']['train_seconds']:.0f}s |" in _row(section, "student-s")


def test_general_ability_table_and_decision_column_from_lm_eval(manifest: dict[str, Any]) -> None:
    ev = manifest["stages"]["eval"]["metrics"]
    accs = {"base": (0.5, 0.25), "dpo": (0.4, 0.25), "student-s": (0.3, 0.15)}  # two tasks each
    for name, (a, b) in accs.items():
        ev["models"][name]["lm_eval"] = {"arc_easy": a, "verticalft_general_mc": b}
        ev["models"][name]["general_retention"] = round((a + b) / 2 / 0.375, 4)
    ev["general_eval"] = {
        "backend": "hf",
        "tasks": ["arc_easy", "verticalft_general_mc"],
        "metric": "acc",
        "limit": None,
        "samples": {"arc_easy": 2376, "verticalft_general_mc": 300},
        "commands": {"base": "python -m lm_eval run --model hf --model_args pretrained=base"},
        "seconds": {"base": 12.0},
    }
    text = render(manifest, "t")
    table = _section(text, "General ability (lm-evaluation-harness)")
    assert "arc_easy: 2376 items" in table and "python -m lm_eval run --model hf" in table
    # mean of the two tasks, and its ratio to the base's mean (0.375): by hand
    assert "| base | 0.500 | 0.250 | 0.375 | 1.000 |" in table
    assert "| dpo | 0.400 | 0.250 | 0.325 | 0.867 |" in table
    assert "| student-s | 0.300 | 0.150 | 0.225 | 0.600 |" in table
    assert "| cpt |" not in table  # not scored on lm-eval: no row
    assert "general retention vs base" in _section(text, "Decision")
    assert "| 0.867 |" in _row(text, "dpo")
