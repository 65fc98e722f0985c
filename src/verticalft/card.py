"""The model card of an exported model: `README.md` in the Hub's model-card format.

YAML metadata first (what the Hub indexes: base model, datasets, library, tags and a
`model-index` with the measured results), then what a team deciding whether to ship the model
needs, every number read from the run's manifest (nothing is re-measured here): domain score
and retention against the teacher, general retention, $/1M tokens effective and saturated with
the volume and the device the throughput was measured on, the quantization, the data and its
licences with the curation funnel, the training spend, the chat template and the resolved recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from verticalft.formatting import num, usd

if TYPE_CHECKING:
    from verticalft.stages.base import StageContext
    from verticalft.stages.run_models import RunModel


def _metrics(ctx: StageContext, stage: str) -> dict[str, Any]:
    return ctx.run.record(stage).metrics if ctx.run.is_done(stage) else {}


def card_metadata(ctx: StageContext, m: RunModel) -> dict[str, Any]:
    """The YAML header: Hub model-card metadata (huggingface_hub's ModelCardData keys)."""
    r = ctx.recipe
    ev = (_metrics(ctx, "eval").get("models") or {}).get(m.name) or {}
    sources = [*r.data.corpus, *(r.data.sft or []), *(r.data.preferences or [])]
    tags = ["verticalft", r.name, m.role]
    if m.quantization:
        tags += ["compressed-tensors", m.quantization.lower()]
    meta: dict[str, Any] = {
        "base_model": r.models.teacher,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": tags,
        "datasets": sorted({s.path for s in sources}),
    }
    results = []
    if ev.get("domain"):
        results.append({"type": "accuracy", "name": "domain score", "value": ev["domain"]["score"]})
    if (ev.get("retention") or {}).get("overall") is not None:
        results.append(
            {"type": "retention", "name": "retention vs teacher", "value": ev["retention"]["overall"]}
        )
    if ev.get("general_retention") is not None:
        results.append(
            {"type": "retention", "name": "general retention vs base", "value": ev["general_retention"]}
        )
    if results and r.data.eval is not None:
        meta["model-index"] = [
            {
                "name": m.name,
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"name": f"{r.name} eval ({r.data.eval.path})", "type": f"{r.name}-eval"},
                        "metrics": results,
                    }
                ],
            }
        ]
    return meta


def model_card(ctx: StageContext, m: RunModel) -> str:
    """The whole README.md of `m`'s exported folder."""
    r = ctx.recipe
    ev_all = _metrics(ctx, "eval")
    ev = (ev_all.get("models") or {}).get(m.name) or {}
    cost = _metrics(ctx, "cost")
    priced = (cost.get("models") or {}).get(m.name) or {}
    bench = (_metrics(ctx, "bench").get("models") or {}).get(m.name) or {}
    device = _metrics(ctx, "bench").get("device") or {}
    curate = _metrics(ctx, "curate")
    variants = {v["name"]: v for v in _metrics(ctx, "quantize").get("variants", [])}
    what = (
        f"a {m.quantization} quantization of `{m.quantized_from}`"
        if m.quantization
        else f"the run's `{m.name}`"
    )
    lines = [
        "---",
        yaml.safe_dump(card_metadata(ctx, m), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {r.name} / {m.name}",
        "",
        f"{r.description.strip().rstrip('.') or r.name}: {what} ({m.role}), made by verticalft from `{r.models.teacher}`.",
        "",
        "## Results",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    dom = ev.get("domain") or {}
    lines.append(
        f"| domain eval score | {num(dom.get('score'), '{:.3f}')} on {ev_all.get('items', {}).get('domain', '–')} items |"
    )
    ret = (ev.get("retention") or {}).get("overall")
    teacher = ev_all.get("teacher")
    lines.append(
        f"| retention vs the teacher (`{teacher}`) | {num(ret, '{:.3f}') if ret is not None else '– (this is the teacher)' if m.name == teacher else '–'} |"
    )
    gen = ev.get("general_retention")
    lines.append(
        f"| general retention vs the base model | {num(gen, '{:.3f}') if gen is not None else '– (no general set in the recipe)'} |"
    )
    general = ev_all.get("general_eval") or {}
    for task, value in (ev.get("lm_eval") or {}).items():  # lm-evaluation-harness (stages.eval.general)
        items = general.get("samples", {}).get(task, "–")
        lines.append(f"| lm-eval `{task}` {general.get('metric', 'acc')} | {value:.3f} on {items} items |")
    if priced:
        volume = cost.get("assumptions", {}).get("daily_tokens")
        lines.append(
            f"| $/1M tokens, effective at {num(volume, '{:,.0f}')} tokens/day | {usd(priced.get('effective_usd_per_m'))} |"
        )
        lines.append(f"| $/1M tokens, saturated | {usd(priced.get('saturated_usd_per_m'))} |")
        gpu = cost.get("assumptions", {}).get("serve_gpu")
        lines.append(
            f"| priced on | {priced.get('gpus')} × {gpu} at concurrency {priced.get('priced_at_concurrency')} |"
        )
    if device:
        lines.append(
            f"| throughput measured on | {device.get('count')} × {device.get('name')} ({device.get('kind')}) |"
        )
    if bench.get("operating_concurrency") is not None:
        lines.append(f"| highest concurrency meeting the SLO | {bench['operating_concurrency']} |")
    if not ev:
        lines.append("| not measured | this machine's vLLM does not serve it (see Quantization) |")
    v = variants.get(m.name)
    if v:
        lines += [
            "",
            "## Quantization",
            "",
            f"- Scheme: {v['scheme']} (compressed-tensors format; vLLM loads the folder as it is), made with "
            f"llm-compressor {v['llmcompressor']}"
            + (
                f", calibrated on {v['calibration_samples']} of the run's SFT conversations."
                if v["calibration_samples"]
                else ", data-free."
            ),
            f"- Weights: {v['bytes'] / 1e6:,.1f} MB ({v['bytes'] / max(v['source_bytes'], 1):.2f}× the unquantized folder).",
        ]
        if r.compute.gpu == "cpu" and v.get("served_here"):
            lines.append(
                "- Measured on CPU in bfloat16 (vLLM's CPU INT8 kernel takes bf16 activations only)."
            )
        if v.get("not_served_because"):
            lines.append(f"- Not measured on the export machine: {v['not_served_because']}.")
    lines += ["", "## Data", "", "| set | source | licence |", "|---|---|---|"]
    for name in ("corpus", "sft", "preferences", "eval"):
        got = getattr(r.data, name)
        for s in got if isinstance(got, list) else [got] if got else []:
            lines.append(f"| {name} | `{s.path}` | {s.license} |")
    if curate.get("read"):
        lines.append(
            f"\nCuration: {curate['read']:,} documents read, {curate['kept']:,} kept, {curate['dropped']:,} dropped "
            f"(filters, deduplication, decontamination against the eval set)."
        )
    spend = cost.get("spend") or {}
    if spend:
        lines += ["", "## Training spend", "", "| stage | wall time | GPUs | USD |", "|---|---|---|---|"]
        for stage, s in spend.items():
            lines.append(f"| {stage} | {s['wall_time_s']:,.0f} s | {s['gpus']} | {usd(s['usd'])} |")
        lines.append(f"| **all** | | | **{usd(cost.get('upfront_usd'))}** |")
    template = _chat_template(m.path)
    if template:
        lines += ["", "## Chat template", "", "```jinja", template.strip(), "```"]
    lines += [
        "",
        "## Serve it",
        "",
        "```bash",
        "vllm serve . --host 127.0.0.1" + (" --dtype bfloat16" if not m.quantization else ""),
        "```",
    ]
    resolved = ctx.run.root / "recipe.resolved.yaml"
    if resolved.is_file():
        lines += [
            "",
            "## Recipe (resolved)",
            "",
            "<details><summary>recipe.resolved.yaml</summary>",
            "",
            "```yaml",
            resolved.read_text(encoding="utf-8").strip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def _chat_template(folder: str) -> str | None:
    """The template the folder's tokenizer renders with (chat_template.jinja, else its config)."""
    import json
    from pathlib import Path

    jinja = Path(folder) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = Path(folder) / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        return t if isinstance(t, str) else None
    return None
