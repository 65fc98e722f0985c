"""Bench-stage logic without a server: SLOs, operating point, LoRA servability, server grouping."""

import json
from pathlib import Path

import pytest

from verticalft.serving.benchmark import (
    MAX_PROMPT_GROWTH,
    PER_TOKEN,
    POOLED,
    Slo,
    benchmark_argv,
    combine_repeats,
    decode_tpot,
    operating_point,
    prompts_for,
    slo_attainment,
    summarise,
)
from verticalft.serving.server import lora_problem, lora_rank_arg, vllm_command
from verticalft.stages.bench import plan_units
from verticalft.stages.run_models import RunModel, final_teacher, select_models

ROOT = Path(__file__).resolve().parents[1]


def _point(c, tput, goodput=None, failed=0, req=10.0):
    return {"max_concurrency": c, "output_throughput": tput, "request_throughput": req, "request_goodput": goodput,
            "failed": failed, "completed": 32, "duration": 2.0, "total_input_tokens": 2048}  # fmt: skip


def test_slo_attainment_and_the_operating_point():
    slo = Slo(ttft_ms=500, tpot_ms=50, min_attainment=0.9)
    sweep = [
        summarise(_point(1, 100, 10.0), slo),
        summarise(_point(8, 600, 9.5), slo),
        summarise(_point(32, 900, 5.0), slo),
    ]
    assert [p["slo_attainment"] for p in sweep] == [1.0, 0.95, 0.5]
    assert [p["meets_slo"] for p in sweep] == [True, True, False]
    assert operating_point(sweep)["max_concurrency"] == 8  # 32 is faster but breaks the SLO
    assert sweep[0]["input_throughput"] == 1024
    failing = [summarise(_point(1, 100, 10.0, failed=3), slo)]
    assert operating_point(failing) is None
    assert slo_attainment(None, 5.0) is None  # no objectives: nothing to attain
    assert Slo(ttft_ms=None, tpot_ms=None).goodput_args() == []
    assert Slo(ttft_ms=250, tpot_ms=None, e2el_ms=2000).goodput_args() == [
        "--goodput",
        "ttft:250",
        "e2el:2000",
    ]


def test_benchmark_argv_is_what_vllm_bench_serve_parses(tmp_path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = benchmark_argv(
        "http://127.0.0.1:8000",
        "dpo",
        tokenizer="/m",
        concurrency=4,
        num_prompts=32,
        input_len=64,
        output_len=16,
        slo=Slo(ttft_ms=500, tpot_ms=50),
        result_dir=tmp_path,
        result_file="c4.json",
    )
    args = parser.parse_args(argv)
    assert (args.max_concurrency, args.num_prompts, args.random_input_len, args.random_output_len) == (
        4,
        32,
        64,
        16,
    )
    assert args.served_model_name == "dpo" and args.goodput == ["ttft:500", "tpot:50"]
    assert args.percentile_metrics == "ttft,tpot,itl,e2el" and args.save_result


def _adapter(path, **cfg):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, **cfg}))
    return str(path)


def test_which_adapters_vllm_can_serve(tmp_path):
    assert lora_problem(_adapter(tmp_path / "ok")) is None
    assert "modules_to_save" in lora_problem(_adapter(tmp_path / "mts", modules_to_save=["lm_head"]))
    assert "trainable_token_indices" in lora_problem(
        _adapter(tmp_path / "tt", trainable_token_indices=[1, 4])
    )
    assert "DoRA" in lora_problem(_adapter(tmp_path / "dora", use_dora=True))
    assert "not found" in lora_problem(tmp_path / "missing")
    assert lora_rank_arg([tmp_path / "ok", _adapter(tmp_path / "r40", r=40)]) == 64


def test_loras_on_one_base_share_a_server(tmp_path):
    ok = _adapter(tmp_path / "dpo-adapter")
    sft = RunModel(
        "sft",
        "teacher",
        "/run/sft/model",
        "/run/cpt/model",
        _adapter(tmp_path / "sft-a", modules_to_save=["x"]),
    )
    dpo = RunModel("dpo", "teacher", "/run/dpo/model", "/run/sft/model", ok)
    student = RunModel("student-s", "student", "/run/distill/student-s/model")
    units, merged = plan_units([sft, dpo, student], use_lora=True)
    by_base = {u.base_path: u for u in units}
    assert by_base["/run/sft/model"].base_name == "sft"  # the merged SFT model is the base of the DPO LoRA
    assert by_base["/run/sft/model"].loras == {"dpo": ok}
    assert by_base["/run/distill/student-s/model"].base_name == "student-s"
    assert "modules_to_save" in merged["sft"] and len(units) == 2
    units, _ = plan_units([dpo], use_lora=False)
    assert units[0].base_path == "/run/dpo/model" and not units[0].loras
    cmd = vllm_command("/run/sft/model", 8000, served_name="sft", lora_modules={"dpo": ok})
    assert cmd[cmd.index("--lora-modules") + 1] == f"dpo={ok}" and "--enable-lora" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_bench_models_default_and_unknown_names():
    models = [RunModel("base", "base", "/b"), RunModel("sft", "teacher", "/s"), RunModel("dpo", "teacher", "/d"),
              RunModel("student-s", "student", "/x")]  # fmt: skip
    key = "stages.bench.models"
    assert [m.name for m in select_models(None, models, key)] == ["dpo", "student-s"]
    assert [m.name for m in select_models(["teacher", "sft"], models, key)] == ["dpo", "sft"]
    with pytest.raises(
        ValueError,
        match="stages.bench.models: student-q not in this run; available: base, sft, dpo, student-s, teacher",
    ):
        select_models(["student-q"], models, key)


def test_quantized_variants_follow_their_model_and_never_become_the_teacher():
    models = [RunModel("base", "base", "/b"), RunModel("sft", "teacher", "/s"), RunModel("dpo", "teacher", "/d"),
              RunModel("student-s", "student", "/x"),
              RunModel("sft-w8a8", "teacher", "/q0", quantization="W8A8", quantized_from="sft"),
              RunModel("dpo-w8a8", "teacher", "/q1", quantization="W8A8", quantized_from="dpo"),
              RunModel("student-s-w8a8", "student", "/q2", quantization="W8A8", quantized_from="student-s")]  # fmt: skip
    assert final_teacher(models).name == "dpo"  # the last teacher that is not a variant
    # default: the final teacher and the students, each with its variants; sft's variant is left out
    assert [m.name for m in select_models(None, models, "k")] == [
        "dpo",
        "student-s",
        "dpo-w8a8",
        "student-s-w8a8",
    ]


def test_a_point_without_goodput_is_not_checked_never_met():
    slo = Slo(ttft_ms=500, tpot_ms=50)
    unchecked = [summarise(_point(1, 100, goodput=None), slo), summarise(_point(8, 600, goodput=None), slo)]
    assert [p["meets_slo"] for p in unchecked] == [None, None]
    assert operating_point(unchecked) is None  # before: both counted as met, 8 priced
    free = [
        summarise(_point(1, 100), Slo(ttft_ms=None, tpot_ms=None)),
        summarise(_point(8, 600), Slo(ttft_ms=None, tpot_ms=None)),
    ]
    assert [p["meets_slo"] for p in free] == [True, True]  # no objective set: nothing to miss
    assert operating_point(free)["max_concurrency"] == 8


def test_benchmark_requests_ignore_eos(tmp_path):
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        benchmark_argv(
            "http://127.0.0.1:1",
            "m",
            tokenizer="/m",
            concurrency=1,
            num_prompts=4,
            input_len=8,
            output_len=8,
            slo=Slo(),
            result_dir=tmp_path,
            result_file="x.json",
        )
    )
    assert args.ignore_eos is True  # output length no longer depends on the model or the vLLM version
    assert args.num_warmups == 1  # one warm-up request per concurrent slot, not measured


def test_repeats_combine_to_the_slower_one_and_flag_a_wide_spread():

    slo = Slo(ttft_ms=500, tpot_ms=50)
    a, b = summarise(_point(8, 600, 10.0), slo), summarise(_point(8, 500, 10.0), slo)
    p = combine_repeats([a, b], max_spread=0.2)
    # (600 − 500) / 500 = 0.2: at the limit, not over it; the 500 tok/s repeat is the one priced
    assert p["output_throughput"] == 500 and p["spread"] == pytest.approx(0.2) and p["unstable"] is False
    assert [r["output_throughput"] for r in p["repeats"]] == [600, 500]
    assert [r["total_input_tokens"] for r in p["repeats"]] == [2048, 2048]  # what the cost fit reads
    # two `make demo` runs of one point once gave 357 vs 1,654 tok/s → spread 3.63, flagged
    p = combine_repeats([summarise(_point(16, 357, 10.0), slo), summarise(_point(16, 1654, 10.0), slo)], 0.2)
    assert p["spread"] == pytest.approx(3.6331, abs=1e-4) and p["unstable"] is True
    # the SLO holds only if every repeat met it; an unchecked repeat makes the point unchecked
    missed = summarise(_point(8, 600, goodput=0.1), slo)
    assert combine_repeats([a, missed])["meets_slo"] is False
    assert combine_repeats([a, summarise(_point(8, 600, goodput=None), slo)])["meets_slo"] is None
    assert combine_repeats([a, b])["meets_slo"] is True
    assert combine_repeats([a])["unstable"] is False
    # same throughput, but the decode TPOT of one repeat is 1/600 of the other's → flagged too
    fast = {**_point(1, 450, 10.0), "decode_tpot_ms": 1.85}
    slow = {**_point(1, 450, 10.0), "decode_tpot_ms": 0.003}
    p = combine_repeats([{**summarise(fast, slo), **fast}, {**summarise(slow, slo), **slow}])
    assert p["spread"] == 0 and p["tpot_spread"] == pytest.approx(615.6667, abs=1e-3) and p["unstable"]


def _requests(chunks_per_request, tokens=5, ttft=0.1, decode=0.004):
    """vLLM's detailed result for requests of `tokens` tokens whose decode took `decode` s/token."""
    n = len(chunks_per_request)
    return {
        "output_lens": [tokens] * n,
        "ttfts": [ttft] * n,
        "latencies": [ttft + decode * (tokens - 1)] * n,
        "itls": [[decode * (tokens - 1) / max(k, 1)] * k for k in chunks_per_request],
        "errors": [""] * n,
    }


def test_decode_tpot_reads_only_requests_that_streamed_a_token_per_chunk():
    # Three requests streamed token by token (4 gaps for 5 tokens), decode 4 ms/token each.
    tpot, how, n = decode_tpot(_requests([4, 4, 4]))
    assert (tpot, how, n) == (pytest.approx(4.0), PER_TOKEN, 3)
    # As in a `make demo` run where most answers arrived in one chunk: vLLM's TPOT for such a request is
    # (e2e − TTFT) / (tokens − 1) with the whole answer inside "TTFT" → ≈ 0, and the median follows.
    burst = _requests([4, 0, 0, 0, 0])
    burst["latencies"][1:] = [burst["ttfts"][0] + 1e-5] * 4  # the answer came with its first chunk
    tpot, how, n = decode_tpot(burst)
    assert (tpot, how, n) == (pytest.approx(4.0), PER_TOKEN, 1)  # not 1e-5 / 4 s = 0.0025 ms
    # No request streamed per token: pooled Σ(e2e − TTFT) / Σ(tokens − 1), and said so.
    # Two requests: decodes of 16 ms and 8 ms over 4 tokens each → 24 ms / 8 tokens = 3 ms.
    two = _requests([2, 1])
    two["latencies"] = [0.1 + 0.016, 0.1 + 0.008]
    tpot, how, n = decode_tpot(two)
    assert (tpot, how, n) == (pytest.approx(3.0), POOLED, 0)
    # Failed and one-token requests are left out; nothing left → no figure.
    one_token = {**_requests([0, 0], tokens=1), "errors": ["", ""]}
    assert decode_tpot(one_token) == (None, None, 0)
    failed = {**_requests([4]), "errors": ["timeout"]}
    assert decode_tpot(failed) == (None, None, 0)
    # summarise carries it beside vLLM's own median
    s = summarise({**_point(1, 100, 10.0), **_requests([4, 4])}, Slo())
    assert s["decode_tpot_ms"] == pytest.approx(4.0) and s["tpot_method"] == PER_TOKEN


def test_a_short_point_is_resized_to_last_the_minimum():
    # 32 requests in 2 s, 10 s wanted: 32 × 10 / 2 × 1.1 = 176
    assert prompts_for(32, 2.0, 10.0, configured=32) == 176
    # long enough already, or a minimum of 0: unchanged
    assert prompts_for(32, 12.0, 10.0, configured=32) == 32
    assert prompts_for(32, 2.0, 0.0, configured=32) == 32
    # never more than 16 × the configured count: 32 requests in 0.01 s would want 35,200
    assert prompts_for(32, 0.01, 10.0, configured=32) == 32 * MAX_PROMPT_GROWTH == 512
    assert "--save-detailed" in benchmark_argv(
        "http://127.0.0.1:1",
        "m",
        tokenizer="t",
        concurrency=1,
        num_prompts=8,
        input_len=4,
        output_len=4,
        slo=Slo(),
        result_dir=Path("."),
        result_file="r.json",
    )


def test_every_repeat_of_a_point_runs_the_count_its_first_run_sized(tmp_path):
    """min_seconds 2, 32 requests configured. First run 2.5 s: long enough, no resize. Second run
    1.5 s: a repeat, not a sizing run — it is kept as it is, so both repeats ran 32 requests (a
    resize after the first repeat gave repeats of 32 and 107 requests, compared as one point)."""
    from types import SimpleNamespace

    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir
    from verticalft.stages.base import StageContext
    from verticalft.stages.bench import measure

    recipe = load_recipe(
        ROOT / "recipes/finance.yaml",
        "tiny",
        ["stages.bench.num_prompts=32", "stages.bench.min_seconds=2", "stages.bench.repeats=2"],
    )
    durations, asked = iter([2.5, 1.5]), []

    class Client:
        def run_point(self, server, argv, log):
            n = int(argv[argv.index("--num-prompts") + 1])
            asked.append(n)
            return {"completed": n, "failed": 0, "duration": next(durations), "output_throughput": 10.0 * n,
                    "request_throughput": 1.0, "max_concurrency": 1, "median_ttft_ms": 5.0}  # fmt: skip

    server = SimpleNamespace(base_url="http://127.0.0.1:1", log_path=tmp_path / "server.log")
    ctx = StageContext(recipe, RunDir(tmp_path), "bench")
    point = measure(ctx, Client(), server, name="m", tokenizer="t", c=1, shape=(8, 8), tag="concurrency")
    assert asked == [32, 32]
    assert [r["num_prompts"] for r in point["repeats"]] == [32, 32] and point["sizing"] is None
