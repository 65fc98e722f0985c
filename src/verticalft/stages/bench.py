"""bench: each model behind a real vLLM OpenAI-compatible server, measured with `vllm bench serve`.

For each served model (default: the final teacher and every distilled student) a server starts on
127.0.0.1 (`serving.server.ManagedServer`: health-checked, always stopped, no orphans), the
concurrency sweep runs (`serving.benchmark`), and the server stops before the next one starts.
A model trained with LoRA whose adapter vLLM can load is served as base + adapter
(`--enable-lora`); several adapters on one base share one server. For those, a parity check
asks the server for greedy answers to the first eval prompts and compares them with the merged
weights' answers (the eval stage's vLLM predictions, or an offline run here) — train/serve parity.

Every point is measured `repeats` times (spread recorded, disagreement flagged), after warm-up
requests. At the priced concurrency a second request shape runs too, so the cost stage can fit
what an input and an output token each cost and price the recipe's own mix. A model gets
`gpus_per_model` GPUs as vLLM tensor parallelism.

Per model `bench/<model>/`: `server.log`, one vLLM result file per point and repeat,
`result.json` (written last: a killed run reuses finished models on rerun). The benchmark client
runs in one child process for the stage (`bench/client.log`: serving.benchmark.BenchClient).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verticalft.chat_templates import chosen_template_path
from verticalft.metrics import BenchModel, BenchPoint, FitRun, Parity, from_dict, to_dict
from verticalft.recipe import BenchStage
from verticalft.rundir import atomic_write_json
from verticalft.serving.benchmark import (
    BenchClient,
    assert_no_failures,
    benchmark_argv,
    combine_repeats,
    operating_point,
    prompts_for,
    summarise,
)
from verticalft.serving.server import ManagedServer, free_port, lora_problem, lora_rank_arg, vllm_command
from verticalft.serving.sizing import quantized_cpu_dtype
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.run_models import RunModel, final_teacher, models_in_run, select_models

logger = logging.getLogger(__name__)


@dataclass
class Unit:
    """One server: a base folder, the name it is served under, and LoRA adapters on top."""

    base_path: str
    base_name: str | None = None  # benchmarked when a selected model *is* the base
    loras: dict[str, str] = field(default_factory=dict)


def plan_units(models: list[RunModel], use_lora: bool) -> tuple[list[Unit], dict[str, str]]:
    """Group models into servers; also return why any adapter is served merged instead."""
    units: dict[str, Unit] = {}
    merged_because: dict[str, str] = {}
    for m in models:
        problem = lora_problem(m.adapter) if (use_lora and m.adapter and m.base_model) else "no adapter"
        if problem is not None:
            if m.adapter and use_lora:
                merged_because[m.name] = problem
            units.setdefault(m.path, Unit(m.path)).base_name = m.name
        elif m.base_model and m.adapter:  # both are set whenever problem is None
            units.setdefault(m.base_model, Unit(m.base_model)).loras[m.name] = m.adapter
    return list(units.values()), merged_because


def weight_bytes(*folders: str | None) -> int:
    """Bytes of the weights a server reads per decoded token (safetensors as stored)."""
    return sum(p.stat().st_size for f in folders if f for p in Path(f).glob("*.safetensors"))


def reference_answers(
    ctx: StageContext, name: str, path: str, items: list[dict[str, Any]], max_new: int
) -> list[str]:
    """The merged model's greedy answers to `items`: the eval stage's vLLM predictions when they
    match (by `scoring.item_key`), else an offline vLLM run of the merged folder here."""
    from verticalft.scoring import item_key, item_messages

    ev = ctx.run.record("eval") if ctx.run.is_done("eval") else None
    out = (ev.outputs.get(name) if ev else None) if ev and ev.metrics.get("backend") == "vllm" else None
    keys = [item_key(it) for it in items]
    if out and ev and ev.metrics.get("max_new_tokens") == max_new:
        rows = [json.loads(line) for line in Path(out).read_text().splitlines() if line.strip()]
        by_key = {item_key(r): r["prediction"] for r in rows if r["set"] == "domain"}
        if all(k in by_key for k in keys):
            return [by_key[k] for k in keys]
    from verticalft.chat_templates import chosen_template
    from verticalft.serving.offline import Job, generate

    cfg = ctx.recipe.stages.eval
    outs = generate(
        [
            Job(
                name,
                path,
                [item_messages(it) for it in items],
                max_new,
                chat_template=chosen_template(ctx.recipe.models.chat_template),
                chat_template_kwargs=ctx.recipe.models.chat_template_kwargs,
            )
        ],
        ctx.dir / name / "parity",
        cfg.engine_args if cfg else {},
        cfg.env if cfg else {},
    )
    return outs[name].texts


def parity_check(ctx: StageContext, server: ManagedServer, m: RunModel, n: int) -> Parity:
    """Greedy answers of base + LoRA on the server vs the merged weights, on the first n eval items
    (each sent as its chat: `scoring.item_messages`)."""
    from verticalft.distill.generate import generate_openai
    from verticalft.scoring import item_messages, item_text, load_items

    items = load_items(ctx.recipe.data.eval, n) if ctx.recipe.data.eval else []
    chats = [item_messages(it) for it in items]
    max_new = (
        ctx.recipe.stages.eval.max_new_tokens if ctx.recipe.stages.eval else None
    ) or ctx.recipe.evaluation.max_new_tokens
    served = [
        g.text
        for g in generate_openai(
            server.base_url + "/v1", m.name, chats, max_new_tokens=max_new, temperature=0.0
        )
    ]
    merged = reference_answers(ctx, m.name, m.path, items, max_new)
    same = [a == b for a, b in zip(served, merged, strict=True)]
    return Parity(
        prompts=len(items),
        identical=sum(same),
        match_rate=round(sum(same) / len(same), 4) if same else None,
        mismatches=[
            {"prompt": item_text(it)[-80:], "lora": a, "merged": b}
            for it, a, b, ok in zip(items, served, merged, same, strict=True)
            if not ok
        ][:5],
    )


def measure(
    ctx: StageContext,
    client: BenchClient,
    server: ManagedServer,
    *,
    name: str,
    tokenizer: str,
    c: int,
    shape: tuple[int, int],
    tag: str,
) -> dict[str, Any]:
    """One point of the sweep at concurrency `c`, measured `repeats` times (vLLM result file and
    printed table per repeat), combined into one point that carries its spread."""
    cfg = ctx.stage_section(BenchStage)
    slo = cfg.slo
    configured = n = cfg.num_prompts or max(16, 4 * c)
    repeats: list[dict[str, Any]] = []
    sizing = None
    while len(repeats) < cfg.repeats:
        r = len(repeats)
        stem = f"{tag}-{c}-r{r + 1}"
        argv = benchmark_argv(
            server.base_url,
            name,
            tokenizer=tokenizer,
            concurrency=c,
            num_prompts=n,
            input_len=shape[0],
            output_len=shape[1],
            slo=slo,
            result_dir=ctx.dir / name,
            result_file=f"{stem}.json",
            seed=ctx.recipe.compute.seed + r,
        )
        point = summarise(client.run_point(server, argv, ctx.dir / name / f"{stem}.log"), slo)
        assert_no_failures(point, name, server)
        point["num_prompts"] = n
        # only the first run sizes the point: every repeat then runs the same number of requests
        first = sizing is None and not repeats
        more = prompts_for(n, point["duration"] or 0.0, cfg.min_seconds, configured) if first else n
        if more > n:  # too short to repeat well: this run sized the point, the repeats start over
            sizing = {"num_prompts": n, "duration": point["duration"], "resized_to": more}
            for suffix in (".json", ".log"):  # kept beside the real repeats as `<stem>-sizing`
                done = ctx.dir / name / f"{stem}{suffix}"
                if done.exists():
                    done.replace(done.with_name(f"{stem}-sizing{suffix}"))
            n = more
            continue
        repeats.append(point)
    point = combine_repeats(repeats, cfg.max_spread)
    point["sizing"] = sizing
    each = ", ".join(f"{p['output_throughput']:.1f}" for p in repeats)
    tpot = point.get("decode_tpot_ms")
    logger.info(
        f"    {name} @ concurrency {c} ({shape[0]} in / {shape[1]} out, {n} requests, "
        f"{point['duration']:.1f} s): {point['output_throughput']:.1f} output tok/s (repeats {each}), "
        f"p50 TTFT {point['median_ttft_ms']:.1f} ms, TPOT "
        + (f"{tpot:.2f} ms ({point['tpot_method']})" if tpot is not None else "–")
        + ("  [repeats disagree]" if point["unstable"] else "")
    )
    return point


def fit_runs(
    point: dict[str, Any], fit_point: dict[str, Any], shapes: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """The runs the cost stage fits input and output token costs on: every repeat of the priced
    point and of the second shape at the same concurrency (duration and token totals)."""
    out = []
    for p, shape in zip((point, fit_point), shapes, strict=True):
        for r in p["repeats"]:
            out.append(
                {
                    "input_len": shape[0],
                    "output_len": shape[1],
                    "duration": r["duration"],
                    "total_input_tokens": r.get("total_input_tokens"),
                    "total_output_tokens": r.get("total_output_tokens"),
                }
            )
    return out


def server_command(ctx: StageContext, unit: Unit, *, label: str, port: int, gpus: int) -> list[str]:
    """The `vllm serve` command of one unit: tensor parallelism, its LoRA adapters, the run's
    chat template, and a context long enough for both request shapes."""
    cfg = ctx.stage_section(BenchStage)
    extra = list(cfg.server_args)
    if dtype := quantized_cpu_dtype(ctx.recipe, unit.base_path):
        extra += ["--dtype", dtype]  # a quantized variant on CPU computes in bf16 (its docstring)
    if gpus > 1:
        extra += ["--tensor-parallel-size", str(gpus)]
    if unit.loras:
        extra += [
            "--max-lora-rank",
            str(lora_rank_arg(list(unit.loras.values()))),
            "--max-loras",
            str(len(unit.loras)),
        ]
    # The base folder carries its own template: a template the recipe chose is passed explicitly.
    template = chosen_template_path(ctx.recipe.models.chat_template)
    fit = cfg.fit()
    return vllm_command(
        unit.base_path,
        port,
        served_name=unit.base_name or label,
        lora_modules=unit.loras,
        max_model_len=cfg.max_model_len
        or max(cfg.input_len, fit.input_len) + max(cfg.output_len, fit.output_len) + 64,
        extra_args=extra,
        chat_template=template,
        chat_template_kwargs=ctx.recipe.models.chat_template_kwargs,
    )


def bench_model(
    ctx: StageContext,
    client: BenchClient,
    server: ManagedServer,
    unit: Unit,
    *,
    m: RunModel,
    gpus: int,
    served: list[str],
) -> BenchModel:
    """One served model: the concurrency sweep, the second request shape at the priced
    concurrency (for the token-cost fit) and, for an adapter, the train/serve parity check."""
    cfg = ctx.stage_section(BenchStage)
    shape, fit = (cfg.input_len, cfg.output_len), cfg.fit()
    sweep = [
        measure(
            ctx, client, server, name=m.name, tokenizer=unit.base_path, c=c, shape=shape, tag="concurrency"
        )
        for c in cfg.concurrency
    ]
    op = operating_point(sweep)
    # the second shape at the concurrency prices are quoted at (best throughput if no SLO point)
    priced = op or max(sweep, key=lambda p: p["output_throughput"] or 0)
    second = (fit.input_len, fit.output_len)
    fit_point = measure(
        ctx,
        client,
        server,
        name=m.name,
        tokenizer=unit.base_path,
        c=priced["max_concurrency"],
        shape=second,
        tag="fit",
    )
    lora = m.name in unit.loras
    return BenchModel(
        served_as="base + LoRA (--enable-lora)" if lora else "merged weights",
        model=m.path,
        base_model=unit.base_path if lora else None,
        adapter=unit.loras.get(m.name),
        weight_bytes=weight_bytes(unit.base_path, unit.loras.get(m.name)),
        gpus=gpus,
        sweep=[from_dict(BenchPoint, p, f"bench.{m.name}.sweep") for p in sweep],
        operating_concurrency=op["max_concurrency"] if op else None,
        fit_point=from_dict(BenchPoint, fit_point, f"bench.{m.name}.fit_point"),
        fit_runs=[FitRun(**r) for r in fit_runs(priced, fit_point, [shape, second])],
        shared_server_with=[s for s in served if s != m.name],
        parity=parity_check(ctx, server, m, cfg.parity_prompts) if lora and cfg.parity_prompts else None,
    )


def bench_unit(
    ctx: StageContext, client: BenchClient, unit: Unit, *, by_name: dict[str, RunModel], teacher: str | None
) -> dict[str, BenchModel]:
    """Start one server for the unit, benchmark every model it serves, stop it."""
    cfg = ctx.stage_section(BenchStage)
    served = ([unit.base_name] if unit.base_name else []) + list(unit.loras)
    label = served[0] if unit.base_name else f"{served[0]}-base"
    gpus = max(cfg.gpus_for(n, n == teacher) for n in served)
    port = free_port()
    cmd = server_command(ctx, unit, label=label, port=port, gpus=gpus)
    log = ctx.dir / (served[0]) / "server.log"
    logger.info(f"  server for {', '.join(served)} on 127.0.0.1:{port} (log: {log})")
    results = {}
    with ManagedServer(cmd, port, log, env=cfg.env, startup_timeout=cfg.startup_timeout_s) as server:
        for name in served:
            results[name] = bench_model(ctx, client, server, unit, m=by_name[name], gpus=gpus, served=served)
        server.check_alive()
    return results


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.stage_section(BenchStage)
    models = models_in_run(ctx, include_base=True)
    selected = select_models(cfg.models, models, "stages.bench.models")
    units, merged_because = plan_units(selected, cfg.lora)
    by_name = {m.name: m for m in selected}
    teacher = final_teacher(models)
    results: dict[str, BenchModel] = {}
    todo = []
    for unit in units:
        names = ([unit.base_name] if unit.base_name else []) + list(unit.loras)
        done = ctx.dir / names[0] / "result.json"
        if ctx.resume and done.is_file():
            logger.info(f"  {', '.join(names)}: benchmarked in an earlier attempt (reused)")
            reused = json.loads(done.read_text())
            results |= {n: from_dict(BenchModel, r, f"{done}: {n}") for n, r in reused.items()}
        else:
            todo.append((unit, done))
    if todo:
        with BenchClient(ctx.dir / "client.log") as client:
            for unit, done in todo:
                unit_results = bench_unit(
                    ctx, client, unit, by_name=by_name, teacher=teacher.name if teacher else None
                )
                atomic_write_json(done, to_dict(unit_results))  # last: this unit is complete
                results |= unit_results
    from verticalft.serving.device import serving_device

    metrics = {
        "device": serving_device(),  # what the throughput was measured on
        "concurrency": cfg.concurrency,
        "input_len": cfg.input_len,
        "output_len": cfg.output_len,
        "fit_shape": cfg.fit().model_dump(),
        "repeats": cfg.repeats,
        "min_seconds": cfg.min_seconds,
        "slo": cfg.slo.model_dump(),
        "served_merged_because": merged_because,
        "models": to_dict(results),
    }
    outputs = {name: str(ctx.dir / name) for name in results}
    summary = "; ".join(
        f"{n}: {max(p.output_throughput or 0.0 for p in r.sweep):.0f} tok/s peak"
        + (f", LoRA parity {r.parity.identical}/{r.parity.prompts}" if r.parity else "")
        for n, r in results.items()
    )
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)
