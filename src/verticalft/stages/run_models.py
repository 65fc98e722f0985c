"""The models a run has produced so far, read from its manifest: what eval and bench compare.

The base model, the teacher after each completed model stage (with its LoRA base and adapter when
it has one), then each distilled student; `final_teacher` is the one a student is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from verticalft.stages.base import StageContext
from verticalft.stages.registry import model_stages


@dataclass(frozen=True)
class RunModel:
    """A model the run produced (or started from), as the eval and bench stages see it."""

    name: str  # base | cpt | sft | dpo | <student>
    role: str  # base | teacher | student
    path: str  # a full HF folder (merged weights)
    base_model: str | None = None  # what a LoRA stage trained on …
    adapter: str | None = None  # … and its PEFT adapter (served with --enable-lora)
    quantization: str | None = None  # a quantized variant (stages.export.schemes) …
    quantized_from: str | None = None  # … of this model of the run


def models_in_run(ctx: StageContext, include_base: bool = True) -> list[RunModel]:
    """Base, the teacher after each model stage, then each distilled student, from the manifest."""
    found = []
    if include_base:
        found.append(RunModel("base", "base", ctx.resolve_model(ctx.recipe.models.teacher)))
    for stage in model_stages():
        out = ctx.run.record(stage).outputs if ctx.run.is_done(stage) else {}
        if out.get("model"):
            found.append(RunModel(stage, "teacher", out["model"], out.get("base_model"), out.get("adapter")))
    if ctx.run.is_done("distill"):
        rec = ctx.run.record("distill")
        for name in rec.metrics.get("students", {}):
            if rec.outputs.get(name):
                found.append(RunModel(name, "student", rec.outputs[name]))
    return found + quantized_variants(ctx, found)


def quantized_variants(ctx: StageContext, models: list[RunModel], served_only: bool = True) -> list[RunModel]:
    """The quantize stage's variants of `models`, each with the role of the model it was made
    from: those this machine's vLLM serves (what eval and bench measure; the others are listed in
    its metrics with the reason), or all of them (`served_only=False`: what export writes)."""
    if not ctx.run.is_done("quantize"):
        return []
    roles = {m.name: m.role for m in models}
    out = []
    for v in ctx.run.record("quantize").metrics.get("variants", []):
        if (v.get("served_here") or not served_only) and v["model"] in roles:
            out.append(
                RunModel(
                    v["name"],
                    roles[v["model"]],
                    v["path"],
                    quantization=v["scheme"],
                    quantized_from=v["model"],
                )
            )
    return out


def final_teacher(models: list[RunModel]) -> RunModel | None:
    """The last trained teacher stage (else the base model); never a quantized variant."""
    full = [m for m in models if m.quantization is None]
    teachers = [m for m in full if m.role == "teacher"] or [m for m in full if m.role == "base"]
    return teachers[-1] if teachers else None


def select_models(requested: list[str] | None, models: list[RunModel], key: str) -> list[RunModel]:
    """The models a section names (`key`, e.g. `stages.bench.models`; `teacher` = the final
    teacher), default: the final teacher and every student, with their quantized variants.
    Unknown names list the available ones."""
    by_name = {m.name: m for m in models}
    teacher = final_teacher(models)
    if teacher:
        by_name.setdefault("teacher", teacher)
    if requested is None:
        keep = {teacher.name} if teacher else set()
        keep |= {m.name for m in models if m.role == "student" and m.quantization is None}
        return [m for m in models if m.name in keep or m.quantized_from in keep]
    unknown = [n for n in requested if n not in by_name]
    if unknown:
        raise ValueError(f"{key}: {', '.join(unknown)} not in this run; available: {', '.join(by_name)}")
    return list({by_name[n].name: by_name[n] for n in requested}.values())
