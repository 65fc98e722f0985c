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
    return found


def final_teacher(models: list[RunModel]) -> RunModel | None:
    """The last trained teacher stage (else the base model)."""
    teachers = [m for m in models if m.role == "teacher"] or [m for m in models if m.role == "base"]
    return teachers[-1] if teachers else None
