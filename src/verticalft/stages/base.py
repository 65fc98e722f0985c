"""What every stage gets (`StageContext`) and returns (`StageResult`), plus shared trainer glue.

Stages never call each other: they ask the context for "the latest completed model before me",
which the context answers from the manifest.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from verticalft.formats import FormatName, Kind
from verticalft.gguf_source import is_gguf, resolve_gguf
from verticalft.launch import has_gpu, is_fsdp_run
from verticalft.models import is_tiny, tiny_name
from verticalft.recipe import Recipe, SetSource, Source
from verticalft.rundir import RunDir
from verticalft.stages.registry import model_stages

SectionT = TypeVar("SectionT", bound=BaseModel)  # a recipe section class (stages.<name>)

# Stages that produce a model, in pipeline order; the input of a stage is the newest of these.


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


class PartialFailure(RuntimeError):
    """A stage with several independent units (students) where some failed: the finished units'
    outputs and metrics are kept in the manifest; the stage is still marked failed."""

    def __init__(self, message: str, result: StageResult):
        super().__init__(message)
        self.result = result


@dataclass
class StageContext:
    recipe: Recipe
    run: RunDir
    stage: str
    resume: bool = False
    subdir: str | None = None  # one unit of a stage with several outputs (distill/<student>/)

    @property
    def dir(self) -> Path:
        root = self.run.stage_dir(self.stage)
        return root / self.subdir if self.subdir else root

    def sub(self, name: str) -> StageContext:
        """The same stage, working in `<stage>/<name>/` (its own checkpoints and outputs)."""
        return StageContext(self.recipe, self.run, self.stage, self.resume, name)

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def stage_section(self, kind: type[SectionT]) -> SectionT:
        """This stage's own recipe section `stages.<stage>`, typed and never None: the pipeline runs
        a stage only when its section is present, so inside its `run` an absent section is a caller
        bug (a stage run by hand on a recipe without it), said here rather than as an
        AttributeError on None further down."""
        found = getattr(self.recipe.stages, self.stage, None)
        if found is None:
            raise RuntimeError(f"stages.{self.stage}: the {self.stage} stage ran without its recipe section")
        if not isinstance(found, kind):
            raise TypeError(f"stages.{self.stage} is a {type(found).__name__}, not a {kind.__name__}")
        return found

    def resolve_model(self, ref: str) -> str:
        """An HF id/path as written in the recipe; `tiny://name` → the folder tiny_models built;
        a GGUF file (`*.gguf`, `pkg://…`) → its HF folder, converted once (gguf_source)."""
        if is_gguf(ref):
            return resolve_gguf(ref)
        if not is_tiny(ref):
            return ref
        path = self.run.output("tiny_models", tiny_name(ref))
        if path is None:
            raise RuntimeError(f"{ref}: the tiny_models stage has not completed in {self.run.root}")
        return path

    def input_model(self) -> str:
        """The newest completed model before this stage (else the recipe's teacher)."""
        models = model_stages()
        order = models[: models.index(self.stage)] if self.stage in models else models
        for prev in reversed(order):
            path = self.run.output(prev, "model")
            if path:
                return path
        return self.resolve_model(self.recipe.models.teacher)

    def curated(self, name: Kind) -> list[SetSource] | None:
        """A curated set's sources when a curate stage completed in this run, else None (the stage
        then reads the recipe's raw sources): a folder per recipe source (`<set>/<i>/`) with that
        source's weight, so `data.load_sets` weights curated rows as it weights raw ones."""
        path = self.run.output("curate", name)
        if not path:
            return None
        # curate writes canonical rows: read them as such, no format detection
        fmt: FormatName = "messages" if name == "sft" else "preference"
        raw = getattr(self.recipe.data, name) or []
        folders = [(Path(path) / str(i), s) for i, s in enumerate(raw)]
        # a source curation kept no row of has no folder
        return [
            SetSource(path=str(f), license="curated", format=fmt, weight=s.weight)
            for f, s in folders
            if f.is_dir()
        ]

    def set_sources(self, name: Kind) -> list[SetSource]:
        """What this stage trains on from `data.<name>`: the curated set when curate ran, else the
        recipe's raw sources; a recipe without that set is an error naming its key."""
        sources = self.curated(name) or getattr(self.recipe.data, name)
        if not sources:
            raise ValueError(f"stages.{self.stage}: needs data.{name}")
        return sources

    def curated_corpus(self) -> list[Source] | None:
        """The curated corpus (one folder of Parquet shards) when curate ran, else None."""
        path = self.run.output("curate", "corpus")
        return [Source(path=path, license="curated")] if path else None

    def eval_items(self) -> list[dict[str, Any]]:
        """The recipe's eval items (checked, as the eval stage reads them) for the quick eval."""
        from verticalft.scoring import load_items

        if self.recipe.data.eval is None:
            return []
        return load_items(self.recipe.data.eval, self.recipe.evaluation.max_items)


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


# --------------------------------------------------------------------------- distributed helpers
def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


# --------------------------------------------------------------------------- trainer glue
def trainer_config(
    ctx: StageContext, config_cls: type, defaults: dict[str, Any], managed: dict[str, Any]
) -> Any:
    """Build a TRL config: toolkit defaults < the recipe's `trainer:` block < managed keys.

    Managed keys (output dir, lengths, packing …) come from the stage's own recipe fields and
    are rejected in `trainer:` at validation time, so nothing is silently overridden.
    """
    block = getattr(ctx.recipe.stages, ctx.stage).trainer
    # transformers 5 reads the TensorBoard folder from the environment only; without it an
    # evaluate() before train() would log into ./runs/<date> in the working directory.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.dir / "tensorboard")
    kwargs = {
        "seed": ctx.recipe.compute.seed,
        "save_strategy": "steps",
        "save_steps": 50,
        "save_total_limit": 2,
        "logging_steps": 5,
        "report_to": ["tensorboard"],
        "include_num_input_tokens_seen": "non_padding",
        "use_cpu": not has_gpu(),
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
        "num_train_epochs": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,
        "eval_strategy": "no",
        # the process group's timeout (launch.init_process_state made it with the same value)
        "ddp_timeout": int(ctx.recipe.compute.timeout_minutes * 60),
        # TRL configs default to bf16=True; on a CPU without AVX-512-BF16/AMX that autocast makes
        # every step ~15-30x slower (models.fit_trainable_dtype), so it follows the hardware.
        "bf16": _bf16_ok(),
        **defaults,
        **block,
        **managed,
        "output_dir": str(ctx.checkpoints),
    }
    if is_fsdp_run():  # FSDP checkpoints activations itself (launch.resolve_accelerate_config)
        kwargs["gradient_checkpointing"] = False
    return config_cls(**kwargs)


def _bf16_ok() -> bool:
    import torch

    from verticalft.models import training_dtype

    return training_dtype() == torch.bfloat16


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest *complete* trainer checkpoint of a killed attempt (None on a fresh start).

    The HF Trainer writes `trainer_state.json` last, so a checkpoint folder without it was cut
    off mid-write: it is removed rather than resumed from.
    """
    import re
    import shutil

    if not ctx.resume or not ctx.checkpoints.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in ctx.checkpoints.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def train_and_measure(trainer: Any, ctx: StageContext) -> dict[str, Any]:
    """Run `trainer.train()` (resuming when a checkpoint exists) and return its metrics."""
    resume_from = last_checkpoint(ctx)
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=resume_from)
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": round(h["loss"], 5)} for h in history if "loss" in h]
    return {
        "resumed_from": Path(resume_from).name if resume_from else None,
        "train_loss": round(out.training_loss, 5),
        "loss_curve": losses,
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "train_seconds": round(time.time() - t0, 2),
        "train_steps_per_second": out.metrics.get("train_steps_per_second"),
    }


def perplexity(eval_loss: float | None) -> float | None:
    if eval_loss is None:
        return None
    return round(math.exp(min(eval_loss, 50.0)), 4)


def quick_eval(
    ctx: StageContext, model: Any, tokenizer: Any, every_rank: bool = False
) -> dict[str, Any] | None:
    """Domain eval score of `model` on the recipe's eval set, returned on rank 0 only.

    Rank 0 alone generates, unless `every_rank`: a model sharded by FSDP/ZeRO-3 gathers its
    weights in every forward, so every rank must generate the same batches (transformers then
    sets `synced_gpus`); rank 0 alone would wait for the others forever.
    """
    from verticalft.scoring import evaluate_model

    items = ctx.eval_items()
    if not items or not (is_main_process() or every_rank):
        return None
    ev = ctx.recipe.evaluation
    summary = evaluate_model(
        model, tokenizer, items, ev.max_new_tokens, ev.batch_size, ev.numeric_tolerance,
        ctx.recipe.models.chat_template_kwargs,
    )  # fmt: skip
    return summary if is_main_process() else None


def fmt_score(summary: dict[str, Any] | None) -> str:
    return f"{summary['score']:.3f}" if summary else "n/a"


def save_outputs(
    ctx: StageContext, trainer: Any, tokenizer: Any, base_model: str, is_peft: bool, merge: bool
) -> dict[str, str]:
    """Write the stage's HF/PEFT folders (rank 0) and return the manifest outputs."""
    outputs: dict[str, str] = {"base_model": base_model}
    if getattr(trainer, "is_fsdp_enabled", False):
        # Trainer.save_model writes nothing under FSDP unless the state dict is FULL; checkpoints
        # stay SHARDED (fast, resumable), the final save gathers (accelerate's intended override)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if is_peft:
        adapter = ctx.dir / "adapter"
        trainer.save_model(str(adapter))
        if is_main_process():
            tokenizer.save_pretrained(adapter)
        outputs["adapter"] = str(adapter)
        if merge and is_main_process():
            from verticalft.models import merge_adapter

            outputs["model"] = merge_adapter(
                base_model, str(adapter), ctx.dir / "model", ctx.recipe.models.trust_remote_code
            )
    else:
        trainer.save_model(str(ctx.dir / "model"))
        if is_main_process():
            tokenizer.save_pretrained(ctx.dir / "model")
        outputs["model"] = str(ctx.dir / "model")
    return outputs
