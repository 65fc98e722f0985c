"""quantize: the quantized variants of `stages.export`, made before eval so they are measured.

The stage runs right after distill, so that eval, bench, cost and route measure each quantized
variant exactly like the other models (same items, same sweep, same prices): for every chosen
model (default: the final teacher and every student) and every scheme, llm-compressor writes a
compressed-tensors folder that vLLM loads as it is. llm-compressor runs in its own interpreter
(`quantize_job.py` says why). A variant is named `<model>-<scheme>` (e.g. `student-w8a8`) and
takes the role of its model.

Not every scheme is served by every vLLM backend. On CPU, vLLM 0.32 serves W8A8 INT8 through
`CPUInt8ScaledMMLinearKernel` (oneDNN; measured: SmolLM2-135M answers) and W4A16 (GPTQ,
pack-quantized) through `CPUWNA16LinearKernel` (measured on the tiny teacher: it loads and serves); for FP8_DYNAMIC it selects
`ChannelWiseTorchFP8ScaledMMLinearKernel` (torch._scaled_mm), which did not finish one request of
SmolLM2-135M in vLLM's 5-minute RPC timeout on this project's 2-core CPU (Sapphire Rapids; measured
2026-12-07 with a training run beside it). Such a variant is still made and exported, and the metrics say why it was not
measured here. The `export` stage (stages/export.py) writes the folders and their cards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from verticalft.recipe import ExportStage
from verticalft.rundir import atomic_write_json, atomic_write_text
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.run_models import RunModel, models_in_run, select_models

logger = logging.getLogger(__name__)

JOB = Path(__file__).resolve().parent.parent / "quantize_job.py"
# Schemes vLLM's CPU backend serves (see the module docstring); a GPU serves all three.
CPU_SERVES = {"W8A8", "W4A16"}
CPU_REFUSAL = (
    "vLLM's CPU backend runs FP8 linear layers through torch._scaled_mm, which did not finish one "
    "request in 5 minutes here; FP8 is measured on a GPU"
)


class QuantizeError(RuntimeError):
    """What stopped a quantization, with what to do about it."""


def export_section(ctx: StageContext) -> ExportStage:
    """`stages.export`, which both this stage and the export stage read."""
    found = ctx.recipe.stages.export
    if found is None:
        raise RuntimeError(f"{ctx.stage}: ran without stages.export")
    return found


def export_python(cfg: ExportStage) -> str:
    """The interpreter that has llm-compressor: the recipe's, $VERTICALFT_EXPORT_PYTHON, the
    `<venv>-export` beside this one (`make setup-export`), or this one if it has llm-compressor."""
    import importlib.util

    given = cfg.python or os.environ.get("VERTICALFT_EXPORT_PYTHON")
    if given:
        if not Path(given).is_file():
            raise QuantizeError(f"stages.export.python: {given} does not exist")
        return given
    sibling = Path(sys.prefix).with_name(Path(sys.prefix).name + "-export") / "bin" / "python"
    if sibling.is_file():
        return str(sibling)
    if importlib.util.find_spec("llmcompressor") is not None:
        return sys.executable
    raise QuantizeError(
        "stages.export: no interpreter with llm-compressor: run `make setup-export` (it creates "
        f"{sibling.parent.parent}), or set stages.export.python / VERTICALFT_EXPORT_PYTHON"
    )


def served_here(scheme: str) -> str | None:
    """Why this machine's vLLM cannot serve `scheme` (None: it can)."""
    import torch

    if torch.cuda.is_available() or scheme in CPU_SERVES:
        return None
    return CPU_REFUSAL


def variant_name(model: str, scheme: str) -> str:
    return f"{model}-{scheme.lower()}"


def chosen_models(ctx: StageContext, cfg: ExportStage) -> list[RunModel]:
    """The models `stages.export.models` names (default: the final teacher and every student)."""
    full = [m for m in models_in_run(ctx, include_base=True) if m.quantization is None]
    return select_models(cfg.models, full, "stages.export.models")


def write_calibration(ctx: StageContext, cfg: ExportStage, model: RunModel, path: Path) -> int:
    """The first `calibration_samples` SFT conversations rendered with the model's chat template
    (the text it will be asked), one {"text"} per line; returns how many."""
    from verticalft.data import load_sets
    from verticalft.models import load_tokenizer

    rows = load_sets(ctx.set_sources("sft"), "sft", ctx.recipe.compute.seed)
    tokenizer = load_tokenizer(model.path, ctx.recipe.models.chat_template)
    kwargs = ctx.recipe.models.chat_template_kwargs
    n = min(cfg.calibration_samples, len(rows))
    texts = [tokenizer.apply_chat_template(rows[i]["messages"], tokenize=False, **kwargs) for i in range(n)]
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return n


def run_job(python: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """One llm-compressor run in its own process group (killed with the run); its log in `work`."""
    from verticalft.procs import die_with_parent, guarded
    from verticalft.serving.server import log_tail

    work.mkdir(parents=True, exist_ok=True)
    spec_file, log_file = work / "spec.json", work / "quantize.log"
    atomic_write_json(spec_file, spec)
    with log_file.open("wb") as log:
        proc = subprocess.run(
            guarded([python, str(JOB), str(spec_file)]),
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            preexec_fn=die_with_parent(),
        )
    done = Path(spec["out"]) / "quantize.json"
    if proc.returncode != 0 or not done.is_file():
        raise QuantizeError(
            f"llm-compressor ({spec['scheme']} of {spec['model']}) exited with code {proc.returncode}; "
            f"last lines of {log_file}:\n{log_tail(log_file)}"
        )
    result: dict[str, Any] = json.loads(done.read_text())
    return result


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def run(ctx: StageContext) -> StageResult:
    cfg = export_section(ctx)
    models = chosen_models(ctx, cfg)
    python = export_python(cfg) if cfg.schemes else ""
    variants, outputs = [], {}
    for m in models:
        calibration: Path | None = None
        for scheme in cfg.schemes:
            name = variant_name(m.name, scheme)
            out = ctx.dir / name
            if (out / "quantize.json").is_file():  # a rerun keeps what a killed run finished
                job = json.loads((out / "quantize.json").read_text())
                logger.info(f"  {name}: kept from an earlier attempt")
            else:
                if calibration is None and scheme != "FP8_DYNAMIC":
                    calibration = ctx.dir / "calibration" / f"{m.name}.jsonl"
                    write_calibration(ctx, cfg, m, calibration)
                shutil.rmtree(out, ignore_errors=True)
                logger.info(
                    f"  {name}: {scheme} of {m.path} with llm-compressor (log: {ctx.dir / 'jobs' / name})"
                )
                spec = {
                    "model": m.path,
                    "out": str(out),
                    "scheme": scheme,
                    "calibration": str(calibration) if calibration else None,
                    "samples": cfg.calibration_samples,
                    "max_length": cfg.calibration_max_length,
                    "smoothing": cfg.smoothing,
                    "ignore": ["lm_head"],
                }
                job = run_job(python, spec, ctx.dir / "jobs" / name)
            why_not = served_here(scheme)
            variants.append(
                {
                    "name": name,
                    "model": m.name,
                    "scheme": scheme,
                    "path": str(out),
                    "bytes": folder_bytes(out),
                    "source_bytes": folder_bytes(m.path),
                    "seconds": job["seconds"],
                    "calibration_samples": job["calibration_samples"],
                    "llmcompressor": job["llmcompressor"],
                    "served_here": why_not is None,
                    "not_served_because": why_not,
                }
            )
            outputs[name] = str(out)
    summary = ", ".join(
        f"{v['name']} {v['bytes'] / max(v['source_bytes'], 1):.2f}× size"
        + ("" if v["served_here"] else " (not served here)")
        for v in variants
    )
    return StageResult(outputs=outputs, metrics={"variants": variants}, summary=summary or "no scheme")
