"""The rows each phase of a student's logit distillation trains on (`stages.distill.phases`;
which phases a student gets, their loss settings and trainer keys: `recipe.DistillStage`).

Why phases: a student pruned from the teacher has lost what the removed layers did, and the SFT
conversations alone do not bring it back (on the small profile the pruned students lost the
extraction task the base model could do). Minitron (arXiv 2408.11796) heals a pruned model by
distilling on pretraining-like text first, then on the task; so does the default here for a
`prune://` student: corpus (+ replay) documents, packed as CPT packs them (TRL's
`pack_dataset`, "wrapped"), every token a distillation target; then the SFT conversations, the
assistant tokens the targets. Each phase's rows get their own teacher cache (distill/cache.py
keys it by the rows), built once and shared by every student whose phase reads the same data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verticalft.recipe import DistillStage, Source

if TYPE_CHECKING:
    from verticalft.recipe import DistillPhase
    from verticalft.stages.base import StageContext

Example = dict[str, list[int]]


def phase_examples(
    ctx: StageContext, phase: DistillPhase, *, tokenizer: Any, convs: list[list[dict[str, str]]]
) -> list[Example]:
    """The distinct rows of a phase: the conversations through the run's chat template with their
    assistant-token masks, or the documents packed into `max_length` rows, every token a target
    (read only up to the phase's token budget: a 2T-token corpus is not tokenized for a 1B budget)."""
    from verticalft.distill.batching import chat_example

    cfg = ctx.stage_section(DistillStage)
    if phase.reads_conversations:
        kwargs = ctx.recipe.models.chat_template_kwargs
        return [chat_example(tokenizer, m, cfg.max_length, kwargs) for m in convs]
    return packed_documents(_texts(ctx, phase), tokenizer, cfg.max_length, limit=phase.max_tokens)


def tokens_of(examples: list[Example], rows: list[int]) -> tuple[int, int]:
    """(student input tokens, distillation targets) of `rows`: what a phase's budget counts, and
    the positions its loss reads (a target is predicted from the token before it)."""
    inputs = sum(len(examples[i]["input_ids"]) for i in rows)
    targets = sum(sum(examples[i]["response_mask"][1:]) for i in rows)
    return inputs, targets


def _texts(ctx: StageContext, phase: DistillPhase) -> Any:
    """The phase's documents as one `text` dataset: the corpus (curated when curate ran), and
    `replay` mixed in at data.replay.ratio when it comes with the corpus (as cpt mixes it)."""
    import datasets

    from verticalft.data import load_texts, mix_replay

    recipe = ctx.recipe
    wanted = set(d for d in phase.data if isinstance(d, str))
    sources = [d for d in phase.data if isinstance(d, Source)]
    if "corpus" in wanted and not (ctx.curated_corpus() or recipe.data.corpus):
        raise ValueError(f"stages.distill.phases ({phase.name}): reads corpus, but data.corpus is empty")
    if "replay" in wanted and recipe.data.replay is None:
        raise ValueError(f"stages.distill.phases ({phase.name}): reads replay, but data.replay is not set")
    parts = [load_texts(sources)] if sources else []
    if "corpus" in wanted:
        parts.append(load_texts(ctx.curated_corpus() or recipe.data.corpus))
    texts = datasets.concatenate_datasets(parts) if parts else None
    if "replay" in wanted and recipe.data.replay is not None:
        replay = load_texts([recipe.data.replay])
        if texts is None:
            texts = replay
        else:
            texts = mix_replay(texts, replay, recipe.data.replay.ratio, recipe.compute.seed)
    assert texts is not None  # data has at least one entry (the recipe's min_length)
    return texts


def packed_documents(
    texts: Any, tokenizer: Any, max_length: int, limit: float | None = None, batch: int = 256
) -> list[Example]:
    """Documents as CPT trains on them (TRL's SFTTrainer on text: EOS appended, tokenized, then
    `pack_dataset(..., "wrapped")` into max_length rows), every position a distillation target;
    with `limit`, documents are read in batches only until their tokens reach it, and the rows
    kept are those `budget_rows` takes (so the teacher's cache covers exactly the trained rows)."""
    from datasets import Dataset
    from tqdm.auto import tqdm
    from trl.data_utils import pack_dataset

    eos = tokenizer.eos_token or ""
    ids: list[list[int]] = []
    seen = 0
    with tqdm(total=len(texts), desc="tokenizing documents", unit="doc") as bar:
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]["text"]
            ids += tokenizer([t + eos for t in chunk])["input_ids"]
            seen += sum(len(x) for x in ids[-len(chunk) :])
            bar.update(len(chunk))
            if limit is not None and seen >= limit:
                break
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), max_length, strategy="wrapped")
    rows = [{"input_ids": row, "response_mask": [1] * len(row)} for row in packed["input_ids"]]
    return [rows[i] for i in budget_rows(rows, limit)] if limit is not None and seen >= limit else rows


def budget_rows(examples: list[Example], max_tokens: float | None) -> list[int]:
    """Which rows (indices into `examples`, in order, cycling) make up a phase's budget of student
    input tokens: the rows once each when there is no budget, else rows until their tokens reach
    `max_tokens` (the last row whole)."""
    if max_tokens is None or not examples:
        return list(range(len(examples)))
    rows: list[int] = []
    seen = 0
    while seen < max_tokens:
        i = len(rows) % len(examples)
        rows.append(i)
        seen += len(examples[i]["input_ids"])
    return rows
