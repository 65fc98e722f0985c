"""sft: QLoRA instruction tuning with TRL's SFTTrainer.

The base loads in 4-bit NF4 through bitsandbytes (also on CPU), PEFT LoRA adapters train on top;
the run's chat template (its training variant, chat_templates.py) marks assistant turns with
`{% generation %}` so the loss covers assistant tokens only; sequences are packed (best-fit
decreasing, padding-free). The adapter is saved as a PEFT folder and, with `merge: true`, merged
into the full-precision base for later stages.
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


def run(ctx: StageContext) -> StageResult:
    from trl import SFTConfig, SFTTrainer

    recipe, cfg = ctx.recipe, ctx.recipe.stages.sft
    base = ctx.input_model()
    data = load_source(ctx.curated("sft") or recipe.data.sft, ("messages",)).select_columns(["messages"])
    split = data.train_test_split(test_size=min(0.05, 200 / max(len(data), 1)), seed=recipe.compute.seed)

    # the run's template with {% generation %} markers, so TRL masks with it and swaps nothing in
    tokenizer = load_tokenizer(base, recipe.models.chat_template, require_mask=True)
    model = load_model(base, cfg.quantization, recipe.models.trust_remote_code)
    before = quick_eval(ctx, model, tokenizer)
    args = trainer_config(
        ctx,
        SFTConfig,
        defaults={
            "learning_rate": 2e-4,
        },
        managed={"max_length": cfg.max_length, "packing": cfg.packing, "assistant_only_loss": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora, tokenizer),
    )
    fit_trainable_dtype(trainer.model)
    metrics = train_and_measure(trainer, ctx)
    metrics["eval_loss"] = trainer.evaluate().get("eval_loss")
    after = quick_eval(ctx, trainer.model, tokenizer)
    outputs = save_outputs(ctx, trainer, tokenizer, base, is_peft=True, merge=cfg.merge)
    metrics.update(
        {
            "eval_before": before,
            "eval_after": after,
            "quantization": cfg.quantization,
            "train_examples": len(split["train"]),
        }
    )
    summary = f"eval score {fmt_score(before)} → {fmt_score(after)}, eval loss {metrics['eval_loss']:.4f}"
    return StageResult(outputs=outputs, metrics=metrics, summary=summary)
