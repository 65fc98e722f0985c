"""The teacher side of the distill stage: which teacher, its conversations, the top-k logit cache
(built once, in parts shared by every rank under a launcher) and, for `sequence`, its generated answers filtered like
curated SFT records (written once, reused by every rank and by a rerun)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from verticalft.launch import agree_or_raise, any_rank, main_process_first, rank, world_size
from verticalft.models import load_model
from verticalft.recipe import DistillStage
from verticalft.rundir import atomic_write_json
from verticalft.stages.base import StageContext
from verticalft.stages.registry import model_stages

logger = logging.getLogger(__name__)


def teacher_path(ctx: StageContext) -> str:
    cfg = ctx.stage_section(DistillStage)
    return ctx.resolve_model(cfg.teacher.model) if cfg.teacher.model else ctx.input_model()


def conversations(ctx: StageContext) -> list[list[dict[str, str]]]:
    from verticalft.data import load_sets

    # data.sft: its prompts, and for logits its conversations
    rows = load_sets(ctx.set_sources("sft"), "sft", ctx.recipe.compute.seed).select_columns(["messages"])
    return [row["messages"] for row in rows.to_list()]


def prompt_context(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The context a teacher (`sequence`) or the student (`on_policy`) answers for one SFT
    conversation: every message before its final assistant turn — system turn and earlier
    exchanges included —, or the whole conversation when it does not end on an assistant turn.

    The rule of TRL's on-policy collators (`experimental/iw_opd`: prompt = messages[:-1] when the
    last message is the assistant's completion, else all messages): the answer generated in the
    context replaces the data's final answer, and a conversation ending on a user turn is asked
    as it is.
    """
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else list(messages)


def prompt_contexts(convs: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    """`prompt_context` of each conversation that has a user turn to answer (one made only of
    system or assistant turns asks nothing and is left out)."""
    contexts = [prompt_context(m) for m in convs]
    return [c for c in contexts if any(t.get("role") == "user" for t in c)]


def load_teacher(ctx: StageContext, path: str) -> Any:
    cfg = ctx.stage_section(DistillStage)
    return load_model(path, cfg.teacher.quantization, ctx.recipe.models.trust_remote_code, inference=True)


def build_cache(
    ctx: StageContext,
    teacher: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    vocab: int,
    temperature: float | None = None,
) -> tuple[Any, float]:
    """(cache, seconds this rank spent building its parts): reused when its key matches (0 s).

    Under a launcher every rank builds its share of the parts (`cache.parts_of_rank`) with its own
    copy of the teacher, quantized as the recipe says, on its own GPU; rank 0 then merges them
    while the others wait (`main_process_first`, with `compute.timeout_minutes`). Finished parts
    survive a crash: a rerun builds only the missing ones. A failure on one rank stops every
    rank (`agree_or_raise`) instead of leaving the others at the barrier.
    `teacher` may be None: it is loaded if this rank has parts to build. `temperature`: the
    phase's (default: the stage's); the cached log-probs are taken at it.
    """
    from verticalft.distill import cache as tc

    cfg = ctx.stage_section(DistillStage)
    temperature = cfg.temperature if temperature is None else temperature
    identity, root = _cache_root(ctx, tokenizer, examples, temperature)
    # every rank takes the same branch: a rank that saw DONE must not skip the barrier below
    if not any_rank(not tc.is_complete(root)):
        logger.info(f"  teacher cache: reusing {root} (rank {rank()})")
        return tc.TeacherCache(root), 0.0
    ranges = tc.part_ranges(len(examples), ctx.recipe.evaluation.batch_size)
    parts_dir = root.with_name(root.name + ".parts")
    meta = {"teacher": identity, "temperature": temperature, "vocab_size": vocab}
    t0, error = time.time(), None
    try:
        _build_parts_of_rank(
            ctx, teacher, tokenizer, examples, vocab=vocab, ranges=ranges, parts_dir=parts_dir, meta=meta
        )
    except Exception as exc:  # noqa: BLE001 — re-raised on every rank just below
        error = exc
    agree_or_raise(error, "building the teacher cache")
    seconds = round(time.time() - t0, 2)
    _merge_parts_once(root, parts_dir, len(ranges), vocab, meta)
    return tc.TeacherCache(root), seconds


def _cache_root(
    ctx: StageContext, tokenizer: Any, examples: list[dict[str, Any]], temperature: float
) -> tuple[str, Path]:
    """(teacher identity, cache folder): the key covers the teacher (its run fingerprint when a stage
    of this run made it), the tokenizer, the examples, top-k and temperature.

    The folder is beside the stage folder, not in it: a rerun of the stage with other student
    settings (epochs, learning rate, students) clears distill/ but reuses a cache whose key still
    matches."""
    from verticalft.distill import cache as tc

    cfg = ctx.stage_section(DistillStage)
    t_path = teacher_path(ctx)
    newest_first = reversed(model_stages())
    producer = next((s for s in newest_first if ctx.run.output(s, "model") == t_path), None)
    identity = tc.teacher_identity(t_path, ctx.run.record(producer).fingerprint if producer else None)
    key = tc.cache_key(identity, tokenizer, examples, cfg.top_k, temperature)
    root = ctx.run.root / "teacher_cache" / key
    root.parent.mkdir(parents=True, exist_ok=True)
    return identity, root


def _build_parts_of_rank(
    ctx: StageContext,
    teacher: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    *,
    vocab: int,
    ranges: list[tuple[int, int]],
    parts_dir: Path,
    meta: dict[str, Any],
) -> None:
    """This rank's share of the parts, skipping those a killed run finished; the teacher is loaded
    only when there is a part to build."""
    from verticalft.distill import cache as tc

    cfg = ctx.stage_section(DistillStage)
    batch, k = ctx.recipe.evaluation.batch_size, min(cfg.top_k, vocab)
    mine = tc.parts_of_rank(len(ranges), rank(), world_size())
    todo = [i for i in mine if not tc.is_complete(parts_dir / f"part-{i:05d}")]
    logger.info(
        f"  teacher cache: rank {rank()} builds parts {todo} of {len(ranges)} "
        f"({len(mine) - len(todo)} of its {len(mine)} done before)"
    )
    if todo and teacher is None:
        teacher = load_teacher(ctx, teacher_path(ctx))
    for i in todo:
        a, b = ranges[i]
        rows = tc.teacher_rows(
            teacher,
            examples[a:b],
            k=k,
            temperature=meta["temperature"],
            batch_size=batch,
            vocab_size=vocab,
            pad_id=tokenizer.pad_token_id,
        )
        tc.write_cache(parts_dir / f"part-{i:05d}", rows, b - a, k, vocab, {**meta, "examples_from": a})


def _merge_parts_once(root: Path, parts_dir: Path, n_parts: int, vocab: int, meta: dict[str, Any]) -> None:
    """Rank 0 merges the parts into `root` while the other ranks wait, under a file lock so that
    two independent runs never merge at once; a cache another run finished is left as it is."""
    import fcntl

    from verticalft.distill import cache as tc

    with main_process_first(), root.with_name(root.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tc.is_complete(root):
            return
        parts = [parts_dir / f"part-{i:05d}" for i in range(n_parts)]
        missing = [p.name for p in parts if not tc.is_complete(p)]
        if missing:
            raise RuntimeError(f"teacher cache: parts {missing} are not finished in {parts_dir}")
        logger.info(f"  teacher cache: merging {len(parts)} parts into {root} (rank {rank()})")
        tc.merge_parts(root, parts, vocab, meta)
        shutil.rmtree(parts_dir, ignore_errors=True)


def generates_in_process(ctx: StageContext) -> bool:
    """`sequence`: whether the teacher's answers come from the HF model loaded here (`hf`), not
    from a vLLM child process or an endpoint, which must find the GPU memory free."""
    from verticalft.serving.offline import pick_backend

    cfg = ctx.stage_section(DistillStage)
    gen, t = cfg.generation, cfg.teacher
    return pick_backend(gen.backend, t.endpoint) == "hf"


def free_gpu_memory() -> None:
    """Collect what was just dropped and hand its GPU memory back to the driver: PyTorch's caching
    allocator keeps freed blocks otherwise, unseen by a vLLM child that sizes itself from free memory."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def teacher_generations(
    ctx: StageContext, teacher: Any, tokenizer: Any, contexts: list[list[dict[str, str]]]
) -> tuple[list[Any], str]:
    """The teacher's answer to each context (a list of messages, sent whole), by the recipe's backend."""
    from verticalft.distill import generate as g
    from verticalft.serving.offline import pick_backend

    cfg = ctx.stage_section(DistillStage)
    gen, t = cfg.generation, cfg.teacher
    kwargs = ctx.recipe.models.chat_template_kwargs  # e.g. Qwen3 answers without thinking
    backend = pick_backend(gen.backend, t.endpoint)
    if backend == "openai":
        if not t.endpoint:
            raise ValueError("stages.distill.generation.backend=openai needs stages.distill.teacher.endpoint")
        out = g.generate_openai(
            t.endpoint,
            t.endpoint_model or teacher_path(ctx),
            contexts,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            api_key_env=t.api_key_env,
            concurrency=gen.batch_size,
            journal=ctx.dir / "teacher_answers.jsonl",  # a rerun asks only for what is missing
            chat_template_kwargs=kwargs,
        )
    elif backend == "vllm":
        from verticalft.serving.sizing import engine_args_for

        ev = ctx.recipe.stages.eval  # the same vLLM engine settings as the eval stage
        path = teacher_path(ctx)
        # sized like the eval stage sizes the teacher: its GPUs, the contexts' length
        args = engine_args_for(
            ctx.recipe,
            "teacher",
            teacher_sized=True,
            prompts=contexts,
            max_new_tokens=gen.max_new_tokens,
            explicit=ev.engine_args if ev else None,
            model_path=path,
        )
        out = g.generate_vllm(
            path,
            contexts,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            work_dir=ctx.dir / "vllm",
            engine_args=args or None,
            env=ev.env if ev else None,
            chat_template=tokenizer.chat_template,
            chat_template_kwargs=kwargs,
        )
    else:
        out = g.generate_hf(teacher, tokenizer, contexts, gen.max_new_tokens, gen.batch_size, kwargs)
    return out, backend


def sequences_key(ctx: StageContext, contexts: list[list[dict[str, str]]]) -> str:
    """What the teacher's answers depend on: the teacher, the generation settings, the template
    variables and every context, whole (a changed system turn or earlier exchange is a new key)."""
    cfg = ctx.stage_section(DistillStage)
    what = [
        teacher_path(ctx),
        cfg.teacher.model_dump(),
        cfg.generation.model_dump(),
        dict(ctx.recipe.models.chat_template_kwargs),
        contexts,
    ]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def sequence_rows(
    ctx: StageContext, teacher: Any, tokenizer: Any, contexts: list[list[dict[str, str]]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The teacher's answers as SFT rows (each its context plus the answer), and what generating
    them took.

    Written once to `distill/teacher_sequences.json` with their `sequences_key`: under a launcher
    rank 0 generates (the other ranks wait at the barrier, then read the file), and a killed
    attempt's rerun reuses them when the key still matches.
    """
    done = ctx.dir / "teacher_sequences.json"
    key = sequences_key(ctx, contexts)
    with main_process_first():
        if done.is_file():
            saved = json.loads(done.read_text())
            if saved.get("key") == key:
                return saved["rows"], saved["metrics"]
        t0 = time.time()
        gens, backend = teacher_generations(ctx, teacher, tokenizer, contexts)
        rows, dropped = generated_set(contexts, gens)
        if not rows:
            raise ValueError(
                f"distill: every teacher generation was filtered out ({dropped}); raise generation.max_new_tokens?"
            )
        metrics = {
            "backend": backend,
            "prompts": len(contexts),
            "kept": len(rows),
            "dropped": dropped,
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(done, {"key": key, "rows": rows, "metrics": metrics})
        atomic_write_json(ctx.dir / "teacher_generations.json", rows[:200])  # a sample to read
        return rows, metrics


def generated_set(
    contexts: list[list[dict[str, str]]], gens: list[Any]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Teacher answers as SFT rows (context + answer), through the curation record rules (empty,
    truncated, duplicate prompt: the same whole context)."""
    from verticalft.curation.records import prompt_duplicates, record_reason

    rows = {
        f"{i:08d}": {
            "messages": [*c, {"role": "assistant", "content": g.text.strip()}],
            "finish_reason": g.finish_reason,
        }
        for i, (c, g) in enumerate(zip(contexts, gens, strict=True))
    }
    dropped: dict[str, int] = {}
    for d in prompt_duplicates(rows.items()):
        rows.pop(d.id, None)
        dropped["duplicate_prompt"] = dropped.get("duplicate_prompt", 0) + 1
    kept = []
    for row in rows.values():
        reason = record_reason(row)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            kept.append({"messages": row["messages"]})
    return kept, dropped


def recorded_teacher_eval(ctx: StageContext) -> dict[str, Any] | None:
    """An endpoint teacher cannot be scored here with the local eval; use the run's last score."""
    for stage in reversed(model_stages()):
        ev = ctx.run.record(stage).metrics.get("eval_after")
        if ev:
            return ev
    return None
