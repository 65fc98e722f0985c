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
    # held-out figures (eval loss, reward accuracy …) taken before and after training
    measure: Callable[[Any], dict[str, Any]] | None = None
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
    """Run one training job in `ctx.dir` (checkpoints/, adapter/, model/, tensorboard/)."""
    model = load_model(job.model_path, job.quantization, ctx.recipe.models.trust_remote_code)
    keep_4bit_trainable(model)  # else the quick eval leaves 4-bit weights in a layout with no backward
    before = quick_eval(ctx, model, job.tokenizer) if job.eval_before else None
    args = trainer_config(ctx, job.config_cls, defaults=job.defaults, managed=job.managed)
    trainer = job.make_trainer(model, args)
    if job.fit_dtype:
        fit_trainable_dtype(trainer.model)
    measured_before = job.measure(trainer) if job.measure and job.measure_before else None
    with PeakRss() as mem:
        metrics = train_and_measure(trainer, ctx)
    metrics["peak_rss_mb"] = mem.mb
    measured_after = job.measure(trainer) if job.measure else None
    after = quick_eval(ctx, trainer.model, job.tokenizer) if job.eval_after else None
    outputs = save_outputs(ctx, trainer, job.tokenizer, job.model_path, job.is_peft, job.merge)
    return Trained(trainer, outputs, metrics, before, after, measured_before, measured_after)


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
