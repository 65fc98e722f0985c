"""Every stage, declared once, in run order: what `pipeline`, `recipe`, `plan`, `launch` and `report`
know about a stage comes from its `Stage` descriptor here, never from a branch on its name.

Why one light module rather than a `SPEC` inside each `stages/<name>.py`: the recipe schema,
`launch` and `plan` need these facts (trainer keys, which stages train) and are imported by the
stage modules themselves (through `stages.base`), and `recipe` must load without TRL or torch.
So the descriptors hold plain data and functions of the recipe object only (no `verticalft`
import at run time), and a stage's `run` is named by an entry point (`module:function`, as
packaging entry points and llm-foundry's registries name a plugin), imported when the stage runs.

Adding a stage: write `stages/<name>.py` with `run(ctx: StageContext) -> StageResult`, and add
its `Stage(...)` to `STAGES` at its place in the order (docs/ARCHITECTURE.md, "Adding a stage").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verticalft.recipe import Data, Recipe, SetSource, Source
    from verticalft.stages.base import StageContext, StageResult

# Trainer keys every training stage sets itself, and what controls each (see `Training.managed`).
EVERY_TRAINING_STAGE = {
    "output_dir": "the run directory (<run>/<stage>/checkpoints)",
    "resume_from_checkpoint": "the run itself (a rerun resumes a killed attempt)",
}
FIXED_TEXT = "fixed by the stage (packed plain text, loss on every token)"
FIXED_CHAT = "fixed by the stage (loss on assistant tokens, marked by models.chat_template)"


@dataclass(frozen=True)
class Training:
    """A stage that trains under `compute.launcher` (torchrun / accelerate): its recipe section has
    `trainer:` (passed to a TRL config class) and `accelerate_config`."""

    config: str  # the TRL config class (`trl.<config>`) its `trainer:` block is passed to
    # Trainer keys the stage sets itself (the stage passes them as `managed=` to
    # stages.training.trainer_config) → what controls each: a recipe setting one in `trainer:` would be
    # overridden silently, so validation rejects it and names the recipe key to use instead.
    managed: Mapping[str, str]
    method: Callable[[Any], str]  # full | lora | qlora, from the stage's section (plan, launch)
    # `kind` of the section (as written in the YAML) → another TRL config class for that kind
    kind_configs: Mapping[str, str] = field(default_factory=dict)
    # cpt/sft/dpo leave the next teacher (a model folder or an adapter); for `plan`, the data set
    # whose tokens it trains on and whether it trains on preference pairs (chosen + rejected, a
    # reference model's forward).
    leaves_model: bool = False
    trains_on: str | None = None  # corpus | sft | preferences
    pairs: bool = False

    def config_for(self, block: Mapping[str, Any]) -> str:
        """The TRL config class of a raw (unvalidated) section `block`."""
        kind = block.get("kind")
        return self.kind_configs.get(kind, self.config) if isinstance(kind, str) else self.config


@dataclass(frozen=True)
class Stage:
    """One stage: its name, what of the recipe it reads, when it runs and how it is run."""

    name: str
    # The data sources it reads (a set the recipe leaves out is None): their files' content enters
    # its fingerprint, and a missing file stops the run before any work.
    inputs: Callable[[Data], list[Source | None]]
    # When it runs; default: its section `stages.<name>` is in the recipe.
    enabled_when: Callable[[Recipe], bool] | None = None
    # The recipe it depends on (fingerprinted); default: its section `stages.<name>`.
    section_from: Callable[[Recipe], dict[str, Any]] | None = None
    extra_files: Callable[[Recipe], list[str]] = lambda recipe: []  # other input files (fingerprinted)
    source_keys_ignored: frozenset[str] = frozenset()  # Source keys that do not change its output
    requires: str | None = None  # a `data.<set>` without which it cannot run (preflight says so)
    checks_sets: tuple[str, ...] = ()  # sft / preferences sets whose first rows preflight reads
    training: Training | None = None
    serving: bool = False  # GPU time on the serving side (the GPU check, the cost stage's spend)
    derived: bool = False  # recomputed from what eval/bench measured by `verticalft report`
    report_notes: Callable[[dict[str, Any]], list[str]] = lambda metrics: []  # the report's notes cell
    entry: str = ""  # `module:function` of its run; default `verticalft.stages.<name>:run`
    # files of its outputs a tracking backend keeps as artifacts, each under its folder's name
    artifacts: Callable[[dict[str, str]], list[str]] = lambda outputs: []

    def enabled(self, recipe: Recipe) -> bool:
        if self.enabled_when is not None:
            return self.enabled_when(recipe)
        return getattr(recipe.stages, self.name, None) is not None

    def section(self, recipe: Recipe) -> dict[str, Any]:
        if self.section_from is not None:
            return self.section_from(recipe)
        return getattr(recipe.stages, self.name).model_dump()

    def runner(self) -> Callable[[StageContext], StageResult]:
        """Its `run`, imported only now: stage modules load TRL, vLLM, datatrove."""
        module, _, function = (self.entry or f"verticalft.stages.{self.name}:run").partition(":")
        found: Callable[[StageContext], StageResult] = getattr(importlib.import_module(module), function)
        return found

    def run(self, ctx: StageContext) -> StageResult:
        return self.runner()(ctx)


def _curate_section(recipe: Recipe) -> dict[str, Any]:
    """Its section less where it runs: the executor and worker count do not change what it writes."""
    cur = recipe.stages.curate
    assert cur is not None, "the section of a stage that is not enabled"
    return cur.model_dump(exclude={"executor", "num_workers"})


def _curate_seeds(recipe: Recipe) -> list[str]:
    """Seed documents of the embedding filter: inputs like the data files."""
    from verticalft.curation.filters import SemanticRelevanceFilter

    cur = recipe.stages.curate
    blocks = [f.config for f in (cur.filters if cur else [])]
    return [p for b in blocks if isinstance(b, SemanticRelevanceFilter) for p in b.seeds]


def _export_section(recipe: Recipe) -> dict[str, Any]:
    """stages.export less the interpreter that runs llm-compressor (it does not change the output)."""
    ex = recipe.stages.export
    assert ex is not None, "the section of a stage that is not enabled"
    return ex.model_dump(exclude={"python"})


def _or_absent(sources: list[SetSource] | None) -> list[Source | None]:
    """A set's sources, or [None] for a set the recipe leaves out (see `Stage.inputs`)."""
    return [*sources] if sources else [None]


def _curate_notes(m: dict[str, Any]) -> list[str]:
    if "read" not in m:
        return []
    return [
        f"{m['read']:,} docs → {m['kept']:,} kept, {m['dropped']:,} dropped, "
        f"{m['quarantined']} quarantined ([curation report](curate/report.md))"
    ]


def _quantize_notes(m: dict[str, Any]) -> list[str]:
    return [
        f"{v['name']}: {v['bytes'] / max(v['source_bytes'], 1):.2f}× the unquantized weights, {v['seconds']:.0f} s"
        + ("" if v["served_here"] else " — not measured here: " + str(v["not_served_because"]))
        for v in m.get("variants", [])
    ]


def _tiny_notes(m: dict[str, Any]) -> list[str]:
    return [", ".join(f"{k.removesuffix('_parameters')} {v / 1e6:.2f}M" for k, v in m.items())]


def _adapter_method(section: Any) -> str:
    """sft/dpo train an adapter: QLoRA on a quantized base, else LoRA."""
    return "qlora" if section.quantization != "none" else "lora"


STAGES: tuple[Stage, ...] = (
    Stage(
        name="tiny_models",
        inputs=lambda d: [*d.corpus, *_or_absent(d.sft)],
        enabled_when=lambda r: bool(r.models.tiny_refs()),
        section_from=lambda r: r.tiny.model_dump(),
        report_notes=_tiny_notes,
    ),
    Stage(
        name="curate",
        inputs=lambda d: [*d.corpus, *_or_absent(d.sft), *_or_absent(d.preferences), d.eval],
        section_from=_curate_section,
        extra_files=_curate_seeds,
        source_keys_ignored=frozenset({"weight"}),  # it writes each row once; the readers apply it
        checks_sets=("sft", "preferences"),
        report_notes=_curate_notes,
    ),
    Stage(
        name="cpt",
        inputs=lambda d: [*d.corpus, d.replay, d.heldout, d.eval],
        training=Training(
            config="SFTConfig",
            managed={
                **EVERY_TRAINING_STAGE,
                "max_length": "stages.cpt.max_length",
                **dict.fromkeys(
                    ("packing", "packing_strategy", "dataset_text_field", "completion_only_loss"), FIXED_TEXT
                ),
            },
            method=lambda s: s.method,
            leaves_model=True,
            trains_on="corpus",
        ),
    ),
    Stage(
        name="sft",
        inputs=lambda d: [*_or_absent(d.sft), d.eval],
        requires="sft",
        checks_sets=("sft",),
        training=Training(
            config="SFTConfig",
            managed={
                **EVERY_TRAINING_STAGE,
                "max_length": "stages.sft.max_length",
                "packing": "stages.sft.packing",
                "assistant_only_loss": FIXED_CHAT,
            },
            method=_adapter_method,
            leaves_model=True,
            trains_on="sft",
        ),
    ),
    Stage(
        name="dpo",
        inputs=lambda d: [*_or_absent(d.preferences), d.eval],
        requires="preferences",
        checks_sets=("preferences",),
        training=Training(
            config="DPOConfig",
            managed={
                **EVERY_TRAINING_STAGE,
                "max_length": "stages.dpo.max_length",
                "beta": "stages.dpo.beta",
            },
            method=_adapter_method,
            leaves_model=True,
            trains_on="preferences",
            pairs=True,
        ),
    ),
    Stage(
        name="distill",
        # the phases read replay too (the corpus reaches distill through cpt's fingerprint)
        inputs=lambda d: [*_or_absent(d.sft), d.eval, d.replay, d.eval_rephrased],
        checks_sets=("sft",),
        training=Training(
            config="SFTConfig",
            kind_configs={"on_policy": "DistillationConfig"},  # TRL's generalized-JSD trainer
            managed={
                **EVERY_TRAINING_STAGE,
                "max_length": "stages.distill.max_length",
                "packing": FIXED_CHAT,
                "assistant_only_loss": FIXED_CHAT,
                "beta": "stages.distill.beta",
                "temperature": "stages.distill.temperature",
                "remove_unused_columns": "fixed by the stage (the logit trainer keeps each example's index)",
                "teacher_model_init_kwargs": "stages.distill.teacher.quantization",
                "chat_template_kwargs": "models.chat_template_kwargs",
            },
            method=lambda s: s.method,
        ),
    ),
    Stage(
        name="quantize",  # before eval: the variants are measured like every other model
        inputs=lambda d: [*_or_absent(d.sft)],  # GPTQ/SmoothQuant calibrate on the SFT conversations
        enabled_when=lambda r: r.stages.export is not None and bool(r.stages.export.schemes),
        section_from=_export_section,
        serving=True,  # one GPU's time, charged like eval's
        report_notes=_quantize_notes,
    ),
    Stage(name="eval", inputs=lambda d: [d.eval, d.general_eval], serving=True),
    Stage(name="bench", inputs=lambda d: [d.eval], serving=True),
    Stage(
        name="cost",  # prices whatever eval/bench measured; it has no section of its own
        inputs=lambda d: [],
        enabled_when=lambda r: r.stages.eval is not None or r.stages.bench is not None,
        # re-prices when prices, volumes or the hardware change
        section_from=lambda r: {"cost": r.cost.model_dump(), "compute": r.compute.model_dump()},
        derived=True,
    ),
    Stage(
        name="route",  # needs every model's answers (eval) and prices (bench → cost)
        inputs=lambda d: [d.eval],
        enabled_when=lambda r: r.stages.eval is not None and r.stages.bench is not None,
        section_from=lambda r: {"route": r.route.model_dump()},
        # an API tier's answers are an input like the data files
        extra_files=lambda r: [a.answers for a in r.route.apis.values()],
        derived=True,
    ),
    Stage(
        name="export",  # last: the model cards quote eval, bench, cost and route
        inputs=lambda d: [],
        section_from=_export_section,
        report_notes=lambda m: [
            f"{len(m.get('folders', {}))} model folders with their cards (export/<model>/README.md)"
        ],
    ),
)


def stage(name: str) -> Stage:
    """The descriptor of `name` (KeyError for a name that is not a stage)."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


def training_of(name: str) -> Training:
    """How training stage `name` trains (an error for a stage that trains nothing: the caller
    meant one of `training_stages()`)."""
    found = stage(name).training
    if found is None:
        raise ValueError(f"{name} is not a training stage; those are {', '.join(training_stages())}")
    return found


def stage_order() -> list[str]:
    """Every stage's name, in run order."""
    return [s.name for s in STAGES]


def training_stages() -> list[str]:
    """GPU training, launched with torchrun/accelerate."""
    return [s.name for s in STAGES if s.training is not None]


def model_stages() -> list[str]:
    """The training stages that each leave the next teacher, in order."""
    return [s.name for s in STAGES if s.training is not None and s.training.leaves_model]


def serving_stages() -> list[str]:
    """GPU time on the serving side."""
    return [s.name for s in STAGES if s.serving]
