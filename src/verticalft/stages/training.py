"""The one training skeleton: load → quick eval → trainer config → trainer → train → eval → save.

cpt, sft, dpo and every distilled student train through `train_model`; a stage says only what
differs (the TRL config and trainer, its defaults and managed keys, what it measures on held-out
data), so the order of work, checkpoint resume, dtype handling and the saved folders are the same
everywhere and live here once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from verticalft.launch import agree_or_raise, is_sharded_run
from verticalft.models import fit_trainable_dtype, keep_4bit_trainable, load_model
from verticalft.stages.base import StageContext, quick_eval, save_outputs, train_and_measure, trainer_config


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
    managed: dict[str, Any] = field(default_factory=dict)  # set by the stage (validate rejects them)
    is_peft: bool = True  # save a PEFT adapter (else the full model)
    merge: bool = True  # merge the adapter into a full folder for later stages
    # held-out figures (eval loss, reward accuracy …) from the trainer's `evaluate()` metrics,
    # taken before and after training (`train_model` skips them when the trainer has no eval set)
    measure: Callable[[dict[str, float]], dict[str, Any]] | None = None
    measure_before: bool = True
    eval_before: bool = True  # the domain quick eval (stages.base.quick_eval) before training …
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
    args = trainer_config(ctx, job.config_cls, defaults=job.defaults, managed=job.managed)
    model = _on_every_rank(
        lambda: load_model(job.model_path, job.quantization, ctx.recipe.models.trust_remote_code),
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
