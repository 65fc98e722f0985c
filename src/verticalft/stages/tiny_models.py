"""tiny_models: build the tokenizer and tiny Llama teacher/students named `tiny://…` in the recipe.

Runs only when the recipe (usually through PROFILE=tiny) names a `tiny://` model. The tokenizer
is trained on the recipe's corpus and SFT prompts so the tiny models see the domain's words as
few tokens; the models are random-init Llama (head_dim 64) saved as normal HF folders.
"""

from __future__ import annotations

from verticalft.data import load_sets, load_texts
from verticalft.models import DEFAULT_TINY_SPECS, build_tiny_models, is_tiny, tiny_name
from verticalft.stages.base import StageContext, StageResult


def needed(recipe) -> bool:
    return any(is_tiny(ref) for ref in [recipe.models.teacher, *recipe.models.students])


def specs_for(recipe) -> dict[str, dict]:
    specs = {k: dict(v) for k, v in DEFAULT_TINY_SPECS.items()}
    specs.update({k: v.model_dump() for k, v in recipe.tiny.specs.items()})
    wanted = {tiny_name(r) for r in [recipe.models.teacher, *recipe.models.students] if is_tiny(r)}
    unknown = wanted - specs.keys()
    if unknown:
        raise ValueError(
            f"tiny model(s) {sorted(unknown)} have no spec; known: {sorted(specs)} "
            f"(add them under tiny.specs)"
        )
    return {name: specs[name] for name in sorted(wanted)}


def run(ctx: StageContext) -> StageResult:
    recipe = ctx.recipe
    texts = list(load_texts(recipe.data.corpus)["text"]) if recipe.data.corpus else []
    if recipe.data.sft is not None:
        for row in load_sets(recipe.data.sft, "sft", recipe.compute.seed)["messages"]:
            texts.extend(m["content"] for m in row if isinstance(m.get("content"), str))
    specs = specs_for(recipe)
    folders = build_tiny_models(ctx.dir, texts, specs, recipe.tiny.vocab_size, recipe.tiny.seed)
    metrics = {}
    from transformers import AutoConfig

    for name, folder in folders.items():
        cfg = AutoConfig.from_pretrained(folder)
        h, layers, inter, vocab = (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.intermediate_size,
            cfg.vocab_size,
        )
        metrics[f"{name}_parameters"] = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter + 2 * h) + h
    summary = ", ".join(f"{n} {metrics[f'{n}_parameters'] / 1e6:.2f}M params" for n in folders)
    return StageResult(
        outputs={**folders, "tokenizer": str(ctx.dir / "tokenizer")}, metrics=metrics, summary=summary
    )
