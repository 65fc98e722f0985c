"""cpt: continued pretraining (causal LM) of the teacher on the domain corpus.

TRL's SFTTrainer on a plain-text dataset *is* causal-LM training; we use it with "wrapped"
packing (documents concatenated and cut into max_length blocks, the classic CPT layout) and
mix in general text (`data.replay`) at a set ratio against forgetting. Full-parameter or LoRA.
Records held-out domain perplexity before and after.
"""

from __future__ import annotations

from typing import Any

from verticalft.data import load_texts, mix_replay
from verticalft.metrics import CptMetrics, score_of, to_dict, trained
from verticalft.models import load_tokenizer, lora_config
from verticalft.recipe import CptStage
from verticalft.stages.base import StageContext, StageResult
from verticalft.stages.training import TrainingJob, perplexity, train_model


def run(ctx: StageContext) -> StageResult:
    recipe, cfg = ctx.recipe, ctx.stage_section(CptStage)
    base = ctx.input_model()
    train, n_domain = _train_texts(ctx)
    heldout = load_texts([recipe.data.heldout]) if recipe.data.heldout else None
    tokenizer = load_tokenizer(base, recipe.models.chat_template)  # saved with the model for later stages
    done = train_model(ctx, _job(cfg, base=base, tokenizer=tokenizer, train=train, heldout=heldout))
    loss_before = (done.measured_before or {}).get("eval_loss")  # None without data.heldout
    loss_after = (done.measured_after or {}).get("eval_loss")
    ppl_before, ppl_after = perplexity(loss_before), perplexity(loss_after)
    record = CptMetrics(
        **trained(done.metrics, "cpt"),
        domain_docs=n_domain,
        replay_docs=len(train) - n_domain,
        eval_loss_before=loss_before,
        eval_loss=loss_after,
        heldout_perplexity_before=ppl_before,
        heldout_perplexity_after=ppl_after,
        eval_before=score_of(done.eval_before),
    )
    summary = f"held-out perplexity {ppl_before} → {ppl_after}, {record.tokens_seen:,} tokens"
    return StageResult(outputs=done.outputs, metrics=to_dict(record), summary=summary)


def _train_texts(ctx: StageContext) -> tuple[Any, int]:
    """The domain corpus (curated when curate ran) with `data.replay` mixed in at its ratio, and
    how many of its documents are domain ones."""
    recipe = ctx.recipe
    train = load_texts(ctx.curated_corpus() or recipe.data.corpus)
    n_domain = len(train)
    if recipe.data.replay is not None:
        train = mix_replay(
            train, load_texts([recipe.data.replay]), recipe.data.replay.ratio, recipe.compute.seed
        )
    return train, n_domain


def _job(cfg: CptStage, *, base: str, tokenizer: Any, train: Any, heldout: Any) -> TrainingJob:
    """Causal-LM training as TRL's SFTTrainer on plain text, documents packed "wrapped" into
    max_length blocks; full-parameter or LoRA, the held-out loss measured before and after."""
    from trl import SFTConfig, SFTTrainer

    lora = cfg.method == "lora"

    def held_out_loss(evaluated: dict[str, float]) -> dict[str, Any]:
        return {"eval_loss": evaluated.get("eval_loss")}

    return TrainingJob(
        model_path=base,
        tokenizer=tokenizer,
        quantization="none",
        config_cls=SFTConfig,
        defaults={"learning_rate": 2e-4 if lora else 5e-5},
        managed={
            "max_length": cfg.max_length,
            "packing": True,
            "packing_strategy": "wrapped",
            "dataset_text_field": "text",
            "completion_only_loss": False,
        },
        make_trainer=lambda model, args: SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=heldout,
            processing_class=tokenizer,
            peft_config=lora_config(cfg.lora, tokenizer) if lora else None,
        ),
        is_peft=lora,
        merge=True,
        measure=held_out_loss,
        eval_after=False,  # the eval stage scores every model; the base score is the reference
        fit_dtype=False,
    )
