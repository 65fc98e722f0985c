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
pair for the logit kinds. The teacher side (cache, generations) lives in distill/teacher.py,
the students' trainers in distill/students.py; this module is the order of work. Each student trains in `distill/<student>/` with its own checkpoints,
output folder, eval score and retention (student score / teacher score); a student that fails
does not lose the others, and a rerun skips the students that finished.
"""

from __future__ import annotations

import gc
import json
import traceback
from typing import Any

from verticalft.distill.students import (
    student_result,
    students,
    train_logits,
    train_on_policy,
    train_sequence,
    vocab_preflight,
)
from verticalft.distill.teacher import (
    build_cache,
    conversations,
    load_teacher,
    recorded_teacher_eval,
    sequence_rows,
    teacher_path,
)
from verticalft.models import load_tokenizer
from verticalft.pruning import pruning_record
from verticalft.rundir import atomic_write_json
from verticalft.stages.base import (
    PartialFailure,
    StageContext,
    StageResult,
    fmt_score,
    is_main_process,
    quick_eval,
)
from verticalft.stages.training import PeakRss

__all__ = ["STUDENT_DONE", "run"]

STUDENT_DONE = "STUDENT_DONE.json"


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
    needed_here = is_main_process() or (cfg.kind == "logits" and not cfg.cache)
    teacher = load_teacher(ctx, t_path) if cfg.teacher.endpoint is None and needed_here else None
    if not is_main_process():
        teacher_eval = None
    else:
        teacher_eval = (
            quick_eval(ctx, teacher, tokenizer) if teacher is not None else recorded_teacher_eval(ctx)
        )
    metrics["teacher_eval"] = teacher_eval
    teacher_score = teacher_eval["score"] if teacher_eval else None

    cache = examples = rows = None
    if todo and cfg.kind == "logits":
        from verticalft.distill.batching import chat_example

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
        rows, metrics["generations"] = sequence_rows(ctx, teacher, tokenizer, prompts)
        teacher = None
        gc.collect()
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
            if cfg.kind == "logits":
                done = train_logits(sctx, path, tokenizer, examples, size, teacher, cache)
            elif cfg.kind == "sequence":
                done = train_sequence(sctx, path, tokenizer, rows)
            else:
                done = train_on_policy(sctx, path, tokenizer, t_path, prompts)
            result = {
                **student_result(done, teacher_score),
                "teacher_in_memory": cfg.kind == "on_policy" or (cfg.kind == "logits" and cache is None),
            }
            if is_main_process():  # one set of results under a launcher
                atomic_write_json(sctx.dir / "result.json", result)
                atomic_write_json(sctx.dir / STUDENT_DONE, {"fingerprint": fp})
            results[name] = result
            del done
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


def _fingerprint(ctx: StageContext) -> str:
    running = ctx.run.stage_dir("distill") / "RUNNING.json"
    return json.loads(running.read_text()).get("fingerprint", "") if running.exists() else ""


def _student_done(ctx: StageContext, name: str, fp: str) -> bool:
    marker = ctx.run.stage_dir("distill") / name / STUDENT_DONE
    return bool(fp) and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp


def _student_result(ctx: StageContext, name: str) -> dict[str, Any]:
    return json.loads((ctx.run.stage_dir("distill") / name / "result.json").read_text())
