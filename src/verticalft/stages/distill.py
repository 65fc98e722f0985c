"""distill: the domain-adapted teacher → every student in the recipe, one switch for the kind.

- `logits` (default): the student matches the teacher's next-token distributions on the SFT
  set's conversations (divergence, temperature, CE mix: distill/losses.py). With `cache: true`
  the teacher runs once, its top-k log-probs go to disk (distill/cache.py) and is unloaded before
  any student trains; one cache serves every student. With `cache: false` it runs beside each
  student (online).
- `sequence`: the teacher answers the SFT prompts (vLLM offline, an OpenAI-compatible endpoint,
  or HF generate), the answers go through the curation record rules (empty, truncated,
  duplicate prompt) and each student is SFT-trained on them with TRL's SFTTrainer.
- `on_policy`: TRL's DistillationTrainer (the student generates, generalized JSD to the teacher).

Before any work the vocabulary preflight (distill/preflight.py) checks every teacher/student
pair for the logit kinds. Each student trains in `distill/<student>/` with its own checkpoints,
output folder, eval score and retention (student score / teacher score); a student that fails
does not lose the others, and a rerun skips the students that finished.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import traceback
from typing import Any

from verticalft.launch import main_process_first
from verticalft.models import fit_trainable_dtype, load_model, load_tokenizer, lora_config
from verticalft.pruning import is_prune, prune_name, pruned_student, pruning_record
from verticalft.rundir import atomic_write_json
from verticalft.stages.base import (
    PartialFailure,
    StageContext,
    StageResult,
    fmt_score,
    is_main_process,
    quick_eval,
    rank,
    save_outputs,
    train_and_measure,
    trainer_config,
)

STUDENT_DONE = "STUDENT_DONE.json"
LOGIT_KINDS = ("logits", "on_policy")


def student_name(ref: str) -> str:
    """Folder name of a student: `tiny://student-s` → student-s, `Qwen/Qwen2.5-7B-Instruct` → Qwen2.5-7B-Instruct,
    `prune://teacher?layers=10&by=even` → pruned-10L-even, `pkg://p/Model.Q4_1.gguf` → Model.Q4_1."""
    if is_prune(ref):
        return prune_name(ref)
    return ref.removeprefix("tiny://").rstrip("/").split("/")[-1].removesuffix(".gguf")


def teacher_path(ctx: StageContext) -> str:
    cfg = ctx.recipe.stages.distill
    return ctx.resolve_model(cfg.teacher.model) if cfg.teacher.model else ctx.input_model()


def students(ctx: StageContext) -> dict[str, str]:
    refs = ctx.recipe.stages.distill.students or ctx.recipe.models.students
    if not refs:
        raise ValueError("stages.distill: no students (set models.students or stages.distill.students)")
    # a pruned student is cut from this stage's teacher here, the first time it is asked for
    return {
        student_name(r): pruned_student(ctx, r, teacher_path(ctx)) if is_prune(r) else ctx.resolve_model(r)
        for r in refs
    }


def vocab_preflight(
    teacher: str, studs: dict[str, str], kind: str, trust_remote_code: bool, chat_template: str | None = None
) -> dict[str, Any]:
    """Compare the teacher's tokenizer with each student's (both with the run's chat template);
    the logit kinds stop on a mismatch."""
    from verticalft.distill.preflight import check_pair

    reports = {
        name: check_pair(teacher, path, trust_remote_code, chat_template) for name, path in studs.items()
    }
    bad = [r for r in reports.values() if not r.ok]
    if bad and kind in LOGIT_KINDS:
        raise ValueError(f"distill.kind={kind}: " + " | ".join(r.message() for r in bad))
    for name, r in reports.items():
        print(f"  vocab preflight {name}: {r.message()}", flush=True)
    return {
        name: {"verdict": r.verdict, "tokenizer_size": r.tokenizer_size, "overlap": r.overlap}
        for name, r in reports.items()
    }


def conversations(ctx: StageContext) -> list[list[dict[str, str]]]:
    from verticalft.data import load_source

    source = ctx.curated("sft") or ctx.recipe.data.sft
    if source is None:
        raise ValueError("stages.distill: needs data.sft (its prompts, and for logits its conversations)")
    return [
        row["messages"] for row in load_source(source, ("messages",)).select_columns(["messages"]).to_list()
    ]


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


# --------------------------------------------------------------------------- teacher side
def load_teacher(ctx: StageContext, path: str) -> Any:
    cfg = ctx.recipe.stages.distill
    return load_model(path, cfg.teacher.quantization, ctx.recipe.models.trust_remote_code)


def build_cache(
    ctx: StageContext, teacher: Any, tokenizer: Any, examples: list[dict[str, Any]], vocab: int
) -> tuple[Any, float]:
    """(cache, seconds spent building it): reused when its key matches (0 s), else built.

    Under a launcher every rank runs the stage: rank 0 builds the cache while the others wait at
    a barrier (`launch.main_process_first`), then they reuse it — one build, one teacher in memory
    for it. A file lock beside the cache also keeps two independent runs from writing it at once.
    `teacher` may be None (a rank that only needs the cache): it is loaded if this rank builds.
    """
    import fcntl

    from verticalft.distill import cache as tc

    cfg = ctx.recipe.stages.distill
    t_path = teacher_path(ctx)
    producer = next((s for s in ("dpo", "sft", "cpt") if ctx.run.output(s, "model") == t_path), None)
    identity = tc.teacher_identity(t_path, ctx.run.record(producer).fingerprint if producer else None)
    key = tc.cache_key(identity, tokenizer, examples, cfg.top_k, cfg.temperature)
    # Beside the stage folder, not in it: a rerun of the stage with other student settings
    # (epochs, learning rate, students) clears distill/ but reuses a cache whose key still matches.
    root = ctx.run.root / "teacher_cache" / key
    root.parent.mkdir(parents=True, exist_ok=True)
    with main_process_first(), root.with_name(key + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tc.is_complete(root):
            print(f"  teacher cache: reusing {root} (rank {rank()})", flush=True)
            return tc.TeacherCache(root), 0.0
        print(f"  teacher cache: building {root} (rank {rank()})", flush=True)
        return _write_cache(
            ctx, teacher or load_teacher(ctx, t_path), tokenizer, examples, vocab, root, identity
        )


def _write_cache(
    ctx: StageContext,
    teacher: Any,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    vocab: int,
    root: Any,
    identity: Any,
) -> tuple[Any, float]:
    from verticalft.distill import cache as tc

    cfg = ctx.recipe.stages.distill
    t0 = time.time()
    rows = tc.teacher_rows(
        teacher,
        examples,
        cfg.top_k,
        cfg.temperature,
        ctx.recipe.evaluation.batch_size,
        vocab,
        tokenizer.pad_token_id,
    )
    meta = {"teacher": identity, "temperature": cfg.temperature, "vocab_size": vocab}
    cache = tc.write_cache(root, rows, len(examples), min(cfg.top_k, vocab), vocab, meta)
    return cache, round(time.time() - t0, 2)


def teacher_generations(
    ctx: StageContext, teacher: Any, tokenizer: Any, prompts: list[str]
) -> tuple[list[Any], str]:
    from verticalft.distill import generate as g

    cfg = ctx.recipe.stages.distill
    gen, t = cfg.generation, cfg.teacher
    backend = g.pick_backend(gen.backend, t.endpoint)
    if backend == "openai":
        if not t.endpoint:
            raise ValueError("stages.distill.generation.backend=openai needs stages.distill.teacher.endpoint")
        out = g.generate_openai(
            t.endpoint,
            t.endpoint_model or teacher_path(ctx),
            prompts,
            gen.max_new_tokens,
            gen.temperature,
            t.api_key_env,
            gen.batch_size,
            journal=ctx.dir / "teacher_answers.jsonl",  # a rerun asks only for what is missing
        )
    elif backend == "vllm":
        ev = ctx.recipe.stages.eval  # the same vLLM engine settings as the eval stage
        out = g.generate_vllm(
            teacher_path(ctx), prompts, gen.max_new_tokens, gen.temperature, ctx.dir / "vllm",
            ev.engine_args if ev else None, ev.env if ev else None, tokenizer.chat_template,
        )  # fmt: skip
    else:
        out = g.generate_hf(teacher, tokenizer, prompts, gen.max_new_tokens, gen.batch_size)
    return out, backend


def generated_set(prompts: list[str], gens: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Teacher answers as SFT rows, through the curation record rules (empty, truncated, duplicate)."""
    from verticalft.curation.records import prompt_duplicates, record_reason

    rows = {
        f"{i:08d}": {
            "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": g.text.strip()}],
            "finish_reason": g.finish_reason,
        }
        for i, (p, g) in enumerate(zip(prompts, gens, strict=True))
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


# --------------------------------------------------------------------------- student side
def load_student(ctx: StageContext, path: str, tokenizer: Any) -> tuple[Any, Any]:
    """(model, peft_config or None) for the recipe's student method."""
    cfg = ctx.recipe.stages.distill
    quant = "nf4" if cfg.method == "qlora" else "none"
    model = load_model(path, quant, ctx.recipe.models.trust_remote_code)
    return model, (None if cfg.method == "full" else lora_config(cfg.lora, tokenizer))


def train_logits(
    sctx: StageContext,
    path: str,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    vocab: int,
    teacher: Any,
    cache: Any,
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from peft import get_peft_model
    from trl import SFTConfig

    from verticalft.distill.trainer import DistillCollator, LogitDistillTrainer, LossSettings

    cfg = sctx.recipe.stages.distill
    model, peft = load_student(sctx, path, tokenizer)
    if peft is not None:
        model = get_peft_model(model, peft)
        fit_trainable_dtype(model)
    data = Dataset.from_list([{**ex, "example_index": i} for i, ex in enumerate(examples)])
    args = trainer_config(
        sctx, SFTConfig, defaults={"learning_rate": 1e-4}, managed={"remove_unused_columns": False}
    )
    settings = LossSettings(cfg.loss, cfg.temperature, cfg.beta, cfg.ce_weight, vocab)
    trainer = LogitDistillTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DistillCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        settings=settings,
        teacher=None if cache is not None else teacher,
        cache=cache,
    )
    metrics = train_and_measure(trainer, sctx)
    kd = trainer.kd_log
    metrics["distill_loss_first"] = round(kd[0], 5) if kd else None
    metrics["distill_loss_last"] = round(sum(kd[-10:]) / len(kd[-10:]), 5) if kd else None
    return trainer, metrics


def train_sequence(
    sctx: StageContext, path: str, tokenizer: Any, rows: list[dict[str, Any]]
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = sctx.recipe.stages.distill
    model, peft = load_student(sctx, path, tokenizer)
    args = trainer_config(
        sctx,
        SFTConfig,
        defaults={"learning_rate": 1e-4},
        managed={"max_length": cfg.max_length, "packing": False, "assistant_only_loss": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft,
    )
    fit_trainable_dtype(trainer.model)
    return trainer, train_and_measure(trainer, sctx)


def train_on_policy(
    sctx: StageContext, path: str, tokenizer: Any, teacher: str, prompts: list[str]
) -> tuple[Any, dict[str, Any]]:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    cfg = sctx.recipe.stages.distill
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(cfg.loss, cfg.beta)
    model, peft = load_student(sctx, path, tokenizer)
    tokenizer.padding_side = "left"
    args = trainer_config(
        sctx,
        DistillationConfig,
        defaults={"learning_rate": 1e-4, "max_completion_length": cfg.generation.max_new_tokens},
        managed={
            "beta": beta,
            "temperature": cfg.temperature,
            "teacher_model_init_kwargs": _teacher_init_kwargs(cfg.teacher.quantization),
        },
    )
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    trainer = DistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft,
    )
    fit_trainable_dtype(trainer.model)
    try:
        return trainer, train_and_measure(trainer, sctx)
    finally:
        tokenizer.padding_side = "right"


def _teacher_init_kwargs(quantization: str) -> dict[str, Any]:
    """How TRL's DistillationTrainer loads the teacher from its path (4-bit when the recipe says so,
    placed for the launcher like every other model: `models.load_kwargs`)."""
    from verticalft.models import load_kwargs

    kwargs = {k: v for k, v in load_kwargs(quantization).items() if k != "trust_remote_code"}
    kwargs["dtype"] = str(kwargs["dtype"]).removeprefix("torch.")
    return kwargs


def finish_student(
    sctx: StageContext, trainer: Any, tokenizer: Any, path: str, teacher_score: float | None
) -> dict[str, Any]:
    cfg = sctx.recipe.stages.distill
    after = quick_eval(sctx, trainer.model, tokenizer)
    outputs = save_outputs(sctx, trainer, tokenizer, path, is_peft=cfg.method != "full", merge=True)
    score = after["score"] if after else None
    retention = round(score / teacher_score, 4) if score is not None and teacher_score else None
    return {"outputs": outputs, "eval": after, "score": score, "retention": retention}


# --------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> StageResult:
    cfg, recipe = ctx.recipe.stages.distill, ctx.recipe
    t_path = teacher_path(ctx)
    studs = students(ctx)
    fp = _fingerprint(ctx)
    vocab = vocab_preflight(
        t_path, studs, cfg.kind, recipe.models.trust_remote_code, recipe.models.chat_template
    )
    todo = {n: p for n, p in studs.items() if not _student_done(ctx, n, fp)}
    # the run's template in its training variant: the logit kinds' masks and sequence's SFT need it
    tokenizer = load_tokenizer(t_path, recipe.models.chat_template, require_mask=cfg.kind != "on_policy")
    size = len(tokenizer)
    convs = conversations(ctx)[: cfg.max_examples]
    prompts = [m[0]["content"] for m in convs if m and m[0].get("role") == "user"]

    metrics: dict[str, Any] = {"kind": cfg.kind, "teacher": t_path, "vocab_preflight": vocab}
    if pruned := {n: r for n, p in studs.items() if (r := pruning_record(p))}:
        metrics["pruning"] = pruned  # kept layers and their block influence, per pruned student
    # Under a launcher only rank 0 scores the teacher (it writes the results) and, with a cache,
    # the rank that builds it loads it (build_cache); the others need it only for online logits.
    needed_here = is_main_process() or (cfg.kind == "logits" and not cfg.cache) or cfg.kind == "sequence"
    teacher = load_teacher(ctx, t_path) if cfg.teacher.endpoint is None and needed_here else None
    if not is_main_process():
        teacher_eval = None
    else:
        teacher_eval = (
            quick_eval(ctx, teacher, tokenizer) if teacher is not None else _recorded_teacher_eval(ctx)
        )
    metrics["teacher_eval"] = teacher_eval
    teacher_score = teacher_eval["score"] if teacher_eval else None

    cache = examples = rows = None
    if todo and cfg.kind == "logits":
        from verticalft.distill.trainer import chat_example

        examples = [chat_example(tokenizer, m, cfg.max_length) for m in convs]
        if cfg.cache:
            with PeakRss() as mem:
                cache, build_s = build_cache(ctx, teacher, tokenizer, examples, size)
            metrics["cache"] = {
                **{k: cache.meta[k] for k in ("k", "tokens", "examples", "bytes_per_token")},
                "path": str(cache.root),
                "build_seconds": build_s,
                "build_peak_rss_mb": mem.mb,
            }
            teacher = None  # students train from the cache alone
            gc.collect()
    elif todo and cfg.kind == "sequence":
        t0 = time.time()
        gens, backend = teacher_generations(ctx, teacher, tokenizer, prompts)
        rows, dropped = generated_set(prompts, gens)
        metrics["generations"] = {
            "backend": backend,
            "prompts": len(prompts),
            "kept": len(rows),
            "dropped": dropped,
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(ctx.dir / "teacher_generations.json", rows[:200])
        teacher = None
        gc.collect()
        if not rows:
            raise ValueError(
                f"distill: every teacher generation was filtered out ({dropped}); raise generation.max_new_tokens?"
            )
    elif cfg.kind == "on_policy":
        teacher = None  # TRL loads it from the path itself
        gc.collect()

    results: dict[str, Any] = {n: _student_result(ctx, n) for n in studs if n not in todo}
    for name in results:
        print(f"  student {name}: done in an earlier attempt of this stage (kept)", flush=True)
    failures: dict[str, str] = {}
    for name, path in todo.items():
        sctx = ctx.sub(name)
        print(f"  student {name}: {cfg.kind} distillation from {t_path}", flush=True)
        try:
            with PeakRss() as mem:
                if cfg.kind == "logits":
                    trainer, train = train_logits(sctx, path, tokenizer, examples, size, teacher, cache)
                elif cfg.kind == "sequence":
                    trainer, train = train_sequence(sctx, path, tokenizer, rows)
                else:
                    trainer, train = train_on_policy(sctx, path, tokenizer, t_path, prompts)
            result = {
                **finish_student(sctx, trainer, tokenizer, path, teacher_score),
                "train": train,
                "peak_rss_mb": mem.mb,
                "teacher_in_memory": cfg.kind == "on_policy" or (cfg.kind == "logits" and cache is None),
            }
            if is_main_process():  # one set of results under a launcher
                atomic_write_json(sctx.dir / "result.json", result)
                atomic_write_json(sctx.dir / STUDENT_DONE, {"fingerprint": fp})
            results[name] = result
            del trainer
            gc.collect()
        except Exception as exc:  # one student's failure must not lose the others
            failures[name] = f"{type(exc).__name__}: {exc}"
            (sctx.dir).mkdir(parents=True, exist_ok=True)
            (sctx.dir / "error.log").write_text(traceback.format_exc())
            print(
                f"  student {name} FAILED: {failures[name]} (traceback: {sctx.dir / 'error.log'})", flush=True
            )

    metrics["students"] = {n: {k: v for k, v in r.items() if k != "outputs"} for n, r in results.items()}
    outputs = {f"{n}/{k}": v for n, r in results.items() for k, v in r["outputs"].items()}
    outputs.update({n: r["outputs"].get("model", "") for n, r in results.items()})
    summary = f"teacher {fmt_score(teacher_eval)}; " + ", ".join(
        f"{n} {fmt_score(r['eval'])} (retention {r['retention']})" for n, r in results.items()
    )
    result = StageResult(outputs=outputs, metrics=metrics, summary=summary)
    if failures:
        metrics["failed_students"] = failures
        raise PartialFailure(
            f"{len(failures)} of {len(studs)} students failed: "
            + "; ".join(f"{n}: {e}" for n, e in failures.items())
            + " — the others are kept; rerun to retry only the failed ones",
            result,
        )
    return result


def _recorded_teacher_eval(ctx: StageContext) -> dict[str, Any] | None:
    """An endpoint teacher cannot be scored here with the local eval; use the run's last score."""
    for stage in ("dpo", "sft", "cpt"):
        ev = ctx.run.record(stage).metrics.get("eval_after")
        if ev:
            return ev
    return None


def _fingerprint(ctx: StageContext) -> str:
    running = ctx.run.stage_dir("distill") / "RUNNING.json"
    return json.loads(running.read_text()).get("fingerprint", "") if running.exists() else ""


def _student_done(ctx: StageContext, name: str, fp: str) -> bool:
    marker = ctx.run.stage_dir("distill") / name / STUDENT_DONE
    return bool(fp) and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp


def _student_result(ctx: StageContext, name: str) -> dict[str, Any]:
    return json.loads((ctx.run.stage_dir("distill") / name / "result.json").read_text())
