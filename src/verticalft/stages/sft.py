"""sft: QLoRA instruction tuning with TRL's SFTTrainer.

The base loads in 4-bit NF4 through bitsandbytes (also on CPU), PEFT LoRA adapters train on top;
the run's chat template (its training variant, chat_templates.py) marks assistant turns with
`{% generation %}` so the loss covers assistant tokens only (a template without a training variant:
the rows go to TRL tokenized, with the `assistant_masks` found by rendering prefixes); sequences are packed (best-fit
decreasing, padding-free). The adapter is saved as a PEFT folder and, with `merge: true`, merged
into the full-precision base for later stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verticalft.chat_templates import assistant_masks, has_generation_markers, with_template_kwargs
from verticalft.data import split_sets
from verticalft.metrics import SftMetrics, score_of, to_dict, trained
from verticalft.models import load_tokenizer, lora_config
from verticalft.recipe import SftStage
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.training import TrainingJob, fmt_score, train_model


def run(ctx: StageContext) -> StageResult:
    recipe, cfg = ctx.recipe, ctx.stage_section(SftStage)
    base = ctx.input_model()
    # the run's template with {% generation %} markers, so TRL masks with it and swaps nothing in;
    # a template without a training variant stays as it is and the rows are masked by prefix rendering
    tokenizer = load_tokenizer(base, recipe.models.chat_template, require_mask=True, prefix_masks=True)
    marked = has_generation_markers(tokenizer.chat_template)
    split = _split(ctx, tokenizer, marked=marked)
    done = train_model(ctx, _job(cfg, base=base, tokenizer=tokenizer, split=split, marked=marked))
    if done.measured_after is None:  # never: the trainer always gets the held-out split
        raise RuntimeError("sft: the trainer was given no held-out split to measure")
    record = SftMetrics(
        **trained(done.metrics, "sft"),
        eval_loss=done.measured_after["eval_loss"],
        eval_before=score_of(done.eval_before),
        eval_after=score_of(done.eval_after),
        quantization=cfg.quantization,
        train_examples=len(split["train"]),
    )
    summary = (
        f"eval score {fmt_score(done.eval_before)} → {fmt_score(done.eval_after)}, "
        f"eval loss {record.eval_loss:.4f}"
    )
    return StageResult(outputs=done.outputs, metrics=to_dict(record), summary=summary)


def _split(ctx: StageContext, tokenizer: Any, *, marked: bool) -> dict[str, Any]:
    """The train and held-out sets as the trainer takes them: held-out rows drawn before the
    sources' weights apply (data.split_sets); rows rendered by TRL with the template variables
    when the template is `marked`, else tokenized here with their prefix-rendered masks."""
    recipe = ctx.recipe
    parts = split_sets(
        ctx.set_sources("sft"), "sft", recipe.compute.seed, lambda n: min(0.05, 200 / max(n, 1))
    )
    # `tools` stays when the set has it: TRL's SFTTrainer renders each row with its tool schemas
    keep = [c for c in ("messages", "tools") if c in parts[0].column_names]
    kwargs = recipe.models.chat_template_kwargs
    return {
        name: with_template_kwargs(d.select_columns(keep), kwargs)
        if marked
        else prefix_masked(d.select_columns(keep), tokenizer, kwargs)
        for name, d in zip(("train", "test"), parts, strict=True)
    }


def _job(cfg: SftStage, *, base: str, tokenizer: Any, split: dict[str, Any], marked: bool) -> TrainingJob:
    """The QLoRA SFT job: TRL's SFTTrainer on `split`, its held-out eval loss measured after."""
    from trl import SFTConfig, SFTTrainer

    def eval_loss(evaluated: dict[str, float]) -> dict[str, Any]:
        return {"eval_loss": evaluated.get("eval_loss")}

    return TrainingJob(
        model_path=base,
        tokenizer=tokenizer,
        quantization=cfg.quantization,
        config_cls=SFTConfig,
        defaults={"learning_rate": 2e-4},
        # pre-tokenized rows are not conversational: TRL builds the labels from their assistant_masks
        managed={"max_length": cfg.max_length, "packing": cfg.packing, "assistant_only_loss": marked},
        make_trainer=lambda model, args: SFTTrainer(
            model=model,
            args=args,
            train_dataset=split["train"],
            eval_dataset=split["test"],
            processing_class=tokenizer,
            peft_config=lora_config(cfg.lora, tokenizer),
        ),
        merge=cfg.merge,
        measure=eval_loss,
        measure_before=False,
    )


def prefix_masked(data: Any, tokenizer: Any, kwargs: Mapping[str, Any] | None) -> Any:
    """Rows tokenized with the assistant turns found by rendering prefixes (`input_ids`,
    `assistant_masks`): TRL's SFTTrainer takes such a dataset as already processed and turns the
    mask into labels (-100 elsewhere), then truncates and packs it as it would its own."""
    import json

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        tools = row.get("tools")
        tools = (json.loads(tools) or None) if isinstance(tools, str) else tools
        return assistant_masks(tokenizer, row["messages"], tools, kwargs)

    return data.map(encode, remove_columns=data.column_names, desc="Masking assistant turns by prefix")
