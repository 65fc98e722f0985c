"""dpo: preference alignment with TRL's DPOTrainer, starting from the SFT result.

A fresh LoRA adapter trains on the merged SFT model; with PEFT the reference model is the same
weights with the adapter disabled, so no second copy is loaded. Records reward accuracy and
margins on held-out pairs before and after, and the domain eval score.
"""

from __future__ import annotations

from typing import Any

from verticalft.chat_templates import with_template_kwargs
from verticalft.data import split_sets
from verticalft.metrics import DpoMetrics, score_of, to_dict, trained
from verticalft.models import load_tokenizer, lora_config
from verticalft.recipe import DpoStage
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.training import TrainingJob, fmt_score, train_model


def _rewards(evaluated: dict[str, float]) -> dict[str, Any]:
    """Held-out DPO figures (loss, rewards/accuracies, rewards/margins …) from TRL's evaluate()."""
    return {
        k.removeprefix("eval_"): round(v, 5)
        for k, v in evaluated.items()
        if k.startswith("eval_rewards/") or k == "eval_loss"
    }


def run(ctx: StageContext) -> StageResult:
    from trl import DPOConfig, DPOTrainer

    recipe, cfg = ctx.recipe, ctx.stage_section(DpoStage)
    base = ctx.input_model()
    # held-out pairs drawn before the sources' weights apply (data.split_sets)
    parts = split_sets(
        ctx.set_sources("preferences"), "preferences", recipe.compute.seed, lambda n: cfg.eval_fraction
    )
    kwargs = recipe.models.chat_template_kwargs  # TRL renders rows with them
    split = {
        name: with_template_kwargs(d.select_columns(["prompt", "chosen", "rejected"]), kwargs)
        for name, d in zip(("train", "test"), parts, strict=True)
    }
    tokenizer = load_tokenizer(base, recipe.models.chat_template)

    done = train_model(
        ctx,
        TrainingJob(
            model_path=base,
            tokenizer=tokenizer,
            quantization=cfg.quantization,
            config_cls=DPOConfig,
            defaults={"learning_rate": 5e-5},
            managed={"beta": cfg.beta, "max_length": cfg.max_length},
            make_trainer=lambda model, args: DPOTrainer(
                model=model,
                args=args,
                train_dataset=split["train"],
                eval_dataset=split["test"],
                processing_class=tokenizer,
                peft_config=lora_config(cfg.lora, tokenizer),
            ),
            merge=cfg.merge,
            measure=_rewards,
        ),
    )
    rewards_before, rewards_after = done.measured_before or {}, done.measured_after or {}
    record = DpoMetrics(
        **trained(done.metrics, "dpo"),
        preference_eval_before=rewards_before,
        preference_eval_after=rewards_after,
        reward_accuracy=rewards_after.get("rewards/accuracies"),
        reward_margin=rewards_after.get("rewards/margins"),
        eval_before=score_of(done.eval_before),
        eval_after=score_of(done.eval_after),
    )
    summary = (
        f"reward accuracy {record.reward_accuracy}, margin {record.reward_margin}, "
        f"eval score {fmt_score(done.eval_before)} → {fmt_score(done.eval_after)}"
    )
    return StageResult(outputs=done.outputs, metrics=to_dict(record), summary=summary)
