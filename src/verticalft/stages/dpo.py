"""dpo: preference alignment with TRL's DPOTrainer, starting from the SFT result.

A fresh LoRA adapter trains on the merged SFT model; with PEFT the reference model is the same
weights with the adapter disabled, so no second copy is loaded. Records reward accuracy and
margins on held-out pairs before and after, and the domain eval score.
"""

from __future__ import annotations

from verticalft.data import load_source
from verticalft.models import fit_trainable_dtype, load_model, load_tokenizer, lora_config
from verticalft.stages.base import (
    StageContext,
    StageResult,
    fmt_score,
    quick_eval,
    save_outputs,
    train_and_measure,
    trainer_config,
)


def _rewards(metrics: dict) -> dict:
    return {
        k.removeprefix("eval_"): round(v, 5)
        for k, v in metrics.items()
        if k.startswith("eval_rewards/") or k == "eval_loss"
    }


def run(ctx: StageContext) -> StageResult:
    from trl import DPOConfig, DPOTrainer

    recipe, cfg = ctx.recipe, ctx.recipe.stages.dpo
    base = ctx.input_model()
    data = load_source(
        ctx.curated("preferences") or recipe.data.preferences, ("prompt", "chosen", "rejected")
    )
    data = data.select_columns(["prompt", "chosen", "rejected"])
    split = data.train_test_split(test_size=cfg.eval_fraction, seed=recipe.compute.seed)

    tokenizer = load_tokenizer(base, recipe.models.chat_template)
    model = load_model(base, cfg.quantization, recipe.models.trust_remote_code)
    before = quick_eval(ctx, model, tokenizer)
    args = trainer_config(
        ctx,
        DPOConfig,
        defaults={
            "learning_rate": 5e-5,
        },
        managed={"beta": cfg.beta, "max_length": cfg.max_length},
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora, tokenizer),
    )
    fit_trainable_dtype(trainer.model)
    rewards_before = _rewards(trainer.evaluate())
    metrics = train_and_measure(trainer, ctx)
    rewards_after = _rewards(trainer.evaluate())
    after = quick_eval(ctx, trainer.model, tokenizer)
    outputs = save_outputs(ctx, trainer, tokenizer, base, is_peft=True, merge=cfg.merge)
    metrics.update(
        {
            "preference_eval_before": rewards_before,
            "preference_eval_after": rewards_after,
            "reward_accuracy": rewards_after.get("rewards/accuracies"),
            "reward_margin": rewards_after.get("rewards/margins"),
            "eval_before": before,
            "eval_after": after,
        }
    )
    summary = (
        f"reward accuracy {metrics['reward_accuracy']}, margin {metrics['reward_margin']}, "
        f"eval score {fmt_score(before)} → {fmt_score(after)}"
    )
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)
