"""The one training skeleton: load → quick eval → trainer config → trainer → train → eval → save.

cpt, sft, dpo and every distilled student train through `train_model`; a stage says only what
differs (the TRL config and trainer, its defaults and managed keys, what it measures on held-out
data), so the order of work, checkpoint resume, dtype handling and the saved folders are the same
everywhere and live here once. The glue it is made of (`trainer_config`, `train_and_measure`,
`quick_eval`, `save_outputs`) lives below it; the distill stage scores students with the same
`quick_eval`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verticalft.launch import agree_or_raise, has_gpu, is_fsdp_run, is_main_process, is_sharded_run
from verticalft.models import fit_trainable_dtype, keep_4bit_trainable, load_model
from verticalft.stages.base import StageContext
from verticalft.tracking import report_to


@dataclass
class TrainingJob:
    """What one training run is made of (the rest is `train_model`)."""

    model_path: str  # what training starts from (an HF folder)
    tokenizer: Any  # models.load_tokenizer: the run's chat template, saved with the outputs
    quantization: str  # models.load_model: none | nf4 | fp4
    config_cls: type  # a TRL config class (SFTConfig, DPOConfig, …)
    # (model, args) → trainer: the stage's TRL trainer with its datasets and PEFT config
    make_trainer: Callable[[Any, Any], Any]
    defaults: dict[str, Any] = field(default_factory=dict)  # toolkit defaults (the recipe overrides)
    # keys over the recipe's block for this job alone (a distill phase's own schedule and budget)
    overrides: dict[str, Any] = field(default_factory=dict)
    managed: dict[str, Any] = field(default_factory=dict)  # set by the stage (validate rejects them)
    is_peft: bool = True  # save a PEFT adapter (else the full model)
    merge: bool = True  # merge the adapter into a full folder for later stages
    # held-out figures (eval loss, reward accuracy …) from the trainer's `evaluate()` metrics,
    # taken before and after training (`train_model` skips them when the trainer has no eval set)
    measure: Callable[[dict[str, float]], dict[str, Any]] | None = None
    measure_before: bool = True
    eval_before: bool = True  # the domain quick eval (`quick_eval`) before training …
    eval_after: bool = True  # … and after it
    # PEFT/TRL leave trainable weights in bf16 on a CPU without bf16 support (fit_trainable_dtype)
    fit_dtype: bool = True


@dataclass
class Trained:
    trainer: Any
    outputs: dict[str, str]
    metrics: dict[str, Any]  # train_and_measure's (losses, steps, tokens, seconds …) + peak_rss_mb
    eval_before: dict[str, Any] | None
    eval_after: dict[str, Any] | None
    measured_before: dict[str, Any] | None
    measured_after: dict[str, Any] | None


def train_model(ctx: StageContext, job: TrainingJob) -> Trained:
    """Run one training job in `ctx.dir` (checkpoints/, adapter/, model/, tensorboard/).

    The order matters under a launcher:
    - the trainer config (TrainingArguments: accelerate's process state, DeepSpeed's ZeRO-3 config)
      exists before `from_pretrained`, so ZeRO-3 partitions at load and FSDP's
      `cpu_ram_efficient_loading` applies (`launch.init_process_state` made the group already);
    - a load or trainer build that fails on one rank fails it on every rank (`agree_or_raise`);
    - under FSDP2 nothing evaluates an unprepared model (accelerate wants model and optimizer
      prepared together): the held-out figures before training come from `eval_on_start`, the
      domain quick eval before training is left to the eval stage, and the one after training
      runs on every rank (generate on a sharded module needs all of them: `synced_gpus`).
    """
    sharded = is_sharded_run()
    measure_before = job.measure is not None and job.measure_before
    args = trainer_config(
        ctx, job.config_cls, defaults=job.defaults, managed=job.managed, overrides=job.overrides
    )
    model = _on_every_rank(
        lambda: load_model(
            job.model_path, job.quantization, ctx.recipe.models.trust_remote_code, full=not job.is_peft
        ),
        f"loading {job.model_path}",
    )
    keep_4bit_trainable(model)  # else the quick eval leaves 4-bit weights in a layout with no backward
    # before the trainer wraps it: TRL casts the adapters to bf16 (undone by fit_trainable_dtype)
    before = quick_eval(ctx, model, job.tokenizer) if job.eval_before and not sharded else None
    trainer = _on_every_rank(lambda: job.make_trainer(model, args), "building the trainer")
    if job.fit_dtype:
        fit_trainable_dtype(trainer.model)
    has_eval = getattr(trainer, "eval_dataset", None) is not None
    in_train = sharded and measure_before and has_eval
    if in_train:
        trainer.args.eval_on_start = True  # evaluated inside train(), after accelerate's prepare
    measured_before = _measure(job, trainer) if measure_before and has_eval and not in_train else None
    with PeakRss() as mem:
        metrics = train_and_measure(trainer, ctx)
    metrics["peak_rss_mb"] = mem.mb
    if in_train:
        first = next((h for h in trainer.state.log_history if "eval_loss" in h), None)
        measured_before = job.measure(first) if job.measure and first else None
    measured_after = _measure(job, trainer) if job.measure and has_eval else None
    after = quick_eval(ctx, trainer.model, job.tokenizer, every_rank=sharded) if job.eval_after else None
    outputs = save_outputs(ctx, trainer, job.tokenizer, job.model_path, job.is_peft, job.merge)
    return Trained(trainer, outputs, metrics, before, after, measured_before, measured_after)


def _on_every_rank(work: Callable[[], Any], what: str) -> Any:
    """`work()`, or an error on every rank when it failed on any (an OOM on one GPU)."""
    result, error = None, None
    try:
        result = work()
    except Exception as exc:  # noqa: BLE001 — re-raised on every rank by agree_or_raise
        error = exc
    agree_or_raise(error, what)
    return result


def _measure(job: TrainingJob, trainer: Any) -> dict[str, Any]:
    return job.measure(trainer.evaluate()) if job.measure else {}


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> PeakRss:
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


# --------------------------------------------------------------------------- trainer glue
def trainer_config(
    ctx: StageContext,
    config_cls: type,
    defaults: dict[str, Any],
    managed: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Build a TRL config: toolkit defaults < the recipe's `trainer:` block < the job's overrides
    (a distill phase's keys, also from the recipe) < managed keys.

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
        "report_to": report_to(ctx.recipe),  # TensorBoard + the tracking backend's integration
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
        **(overrides or {}),
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
    ctx: StageContext, model: Any, tokenizer: Any, every_rank: bool = False, rephrased: bool = False
) -> dict[str, Any] | None:
    """Domain eval score of `model` on the recipe's eval set (`rephrased`: on data.eval_rephrased),
    returned on rank 0 only.

    Rank 0 alone generates, unless `every_rank`: a model sharded by FSDP/ZeRO-3 gathers its
    weights in every forward, so every rank must generate the same batches (transformers then
    sets `synced_gpus`); rank 0 alone would wait for the others forever.
    """
    from verticalft.scoring import evaluate_model

    items = ctx.eval_items(rephrased)
    if not items or not (is_main_process() or every_rank):
        return None
    ev = ctx.recipe.evaluation
    summary = evaluate_model(
        model,
        tokenizer,
        items,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        tolerance=ev.numeric_tolerance,
        chat_template_kwargs=ctx.recipe.models.chat_template_kwargs,
    )
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
