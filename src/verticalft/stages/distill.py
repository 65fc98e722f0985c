"""distill: the domain-adapted teacher → every student in the recipe, one switch for the kind.

- `logits` (default): the student matches the teacher's next-token distributions on the SFT
  set's conversations (divergence, temperature, CE mix: distill/losses.py). With `cache: true`
  the teacher runs once, its top-k log-probs go to disk (distill/cache.py) and is unloaded before
  any student trains; one cache serves every student. With `cache: false` it runs beside each
  student (online).
- `sequence`: the teacher answers the SFT prompts — each conversation up to its final assistant
  turn, system turn and earlier exchanges included (`teacher.prompt_context`) — (vLLM offline, an OpenAI-compatible endpoint,
  or HF generate), the answers go through the curation record rules (empty, truncated,
  duplicate prompt) and each student is SFT-trained on them with TRL's SFTTrainer.
- `on_policy`: TRL's DistillationTrainer (the student generates in the same contexts,
  generalized JSD to the teacher).

Before any work the vocabulary preflight (distill/preflight.py) checks every teacher/student
pair for the logit kinds. The teacher side (cache, generations) lives in distill/teacher.py,
the students' trainers in distill/students.py; this module is the order of work. Each student trains in `distill/<student>/` with its own checkpoints,
output folder, eval score and retention (student score / teacher score); a student that fails
does not lose the others, and a rerun skips the students that finished.
"""

from __future__ import annotations

import gc
import json
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any

from verticalft.distill.phases import budget_rows, phase_examples, tokens_of
from verticalft.distill.students import (
    student_name,
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
    free_gpu_memory,
    generates_in_process,
    load_teacher,
    prompt_contexts,
    recorded_teacher_eval,
    sequence_rows,
    teacher_path,
)
from verticalft.launch import FailedOnAnotherRank, any_rank, is_main_process, rank, world_size
from verticalft.metrics import DistillMetrics, from_dict, to_dict
from verticalft.models import load_tokenizer
from verticalft.pruning import pruning_record
from verticalft.recipe import DistillPhase, DistillStage
from verticalft.rundir import atomic_write_json
from verticalft.stages.base import PartialFailure, StageContext, StageResult
from verticalft.stages.training import PeakRss, fmt_score, quick_eval

logger = logging.getLogger(__name__)

__all__ = ["STUDENT_DONE", "run"]

STUDENT_DONE = "STUDENT_DONE.json"
PHASE_DONE = "PHASE_DONE.json"


@dataclass
class PhaseInput:
    """One phase input (`DistillStage.input_key`): its distinct rows and, with `cache: true`, the
    teacher's top-k cache over them (distill/cache.py), shared by every phase that reads it."""

    examples: list[dict[str, list[int]]]
    cache: Any = None
    build_seconds: float = 0.0  # this rank's share of the cache build (0: reused)
    build_peak_rss_mb: float | None = None


@dataclass
class TeacherSide:
    """What the students train from: the teacher's score and, per kind, its cache or answers."""

    teacher: Any = None  # the loaded teacher, only where a student needs it in memory (online logits)
    eval: dict[str, Any] | None = None  # its quick eval (rank 0), the base of every retention
    eval_rephrased: dict[str, Any] | None = None  # the same on data.eval_rephrased, when named
    # logits: each student's phases, and per phase input (`DistillStage.input_key`) its rows and cache,
    # built only when a student is to train (none: left empty)
    phases: dict[str, list[DistillPhase]] = field(default_factory=dict)
    inputs: dict[str, PhaseInput] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # sequence: the teacher's curated answers

    @property
    def score(self) -> float | None:
        return self.eval["score"] if self.eval else None


def run(ctx: StageContext) -> StageResult:
    cfg, recipe = ctx.stage_section(DistillStage), ctx.recipe
    t_path, studs, fp = teacher_path(ctx), students(ctx), _fingerprint(ctx)
    vocab = vocab_preflight(
        t_path, studs, cfg.kind, recipe.models.trust_remote_code, recipe.models.chat_template
    )
    todo = {n: p for n, p in studs.items() if not _student_done(ctx, n, fp)}
    # the run's template in its training variant: the logit kinds' masks and sequence's SFT need it
    tokenizer = load_tokenizer(t_path, recipe.models.chat_template, require_mask=cfg.kind != "on_policy")
    convs = conversations(ctx)[: cfg.max_examples]
    # sequence / on_policy: each conversation up to its final assistant turn, system turn included
    contexts = prompt_contexts(convs)

    if cfg.phases and cfg.kind != "logits":
        logger.warning(
            f"  stages.distill.phases: logit distillation's; kind {cfg.kind} trains on the SFT set alone"
        )
    metrics: dict[str, Any] = {"kind": cfg.kind, "teacher": t_path, "vocab_preflight": vocab}
    if pruned := {n: r for n, p in studs.items() if (r := pruning_record(p))}:
        metrics["pruning"] = pruned  # kept layers and their block influence, per pruned student
    side = _teacher_side(
        ctx, t_path, tokenizer=tokenizer, convs=convs, contexts=contexts, todo=list(todo), metrics=metrics
    )

    results: dict[str, Any] = {n: _student_result(ctx, n) for n in studs if n not in todo}
    for name in results:
        logger.info(f"  student {name}: done in an earlier attempt of this stage (kept)")
    failures = _train_students(
        ctx, todo, results=results, t_path=t_path, tokenizer=tokenizer, contexts=contexts, side=side, fp=fp
    )

    metrics["students"] = {n: {k: v for k, v in r.items() if k != "outputs"} for n, r in results.items()}
    if failures:
        metrics["failed_students"] = failures
    outputs = {f"{n}/{k}": v for n, r in results.items() for k, v in r["outputs"].items()}
    outputs.update({n: r["outputs"].get("model", "") for n, r in results.items()})
    summary = f"teacher {fmt_score(side.eval)}; " + ", ".join(
        f"{n} {fmt_score(r['eval'])} (retention {r['retention']})" for n, r in results.items()
    )
    # checked against the contract before it is written: a figure renamed here fails this run
    record = from_dict(DistillMetrics, metrics, "stages.distill.metrics", strict=True)
    result = StageResult(outputs=outputs, metrics=to_dict(record), summary=summary)
    if failures:
        raise PartialFailure(
            f"{len(failures)} of {len(studs)} students failed: "
            + "; ".join(f"{n}: {e}" for n, e in failures.items())
            + " — the others are kept; rerun to retry only the failed ones",
            result,
        )
    return result


def _teacher_side(
    ctx: StageContext,
    t_path: str,
    *,
    tokenizer: Any,
    convs: list[list[dict[str, str]]],
    contexts: list[list[dict[str, str]]],
    todo: list[str],
    metrics: dict[str, Any],
) -> TeacherSide:
    """Load and score the teacher, then build what the students still to train need from it (each
    phase's rows and logit cache, or the curated answers) and unload it when no student needs it
    in memory."""
    cfg = ctx.stage_section(DistillStage)
    side, any_todo = TeacherSide(phases=student_phases(ctx)), bool(todo)
    # Under a launcher only rank 0 scores the teacher (it writes the results); with a cache every
    # rank loads it for its share of the parts (build_cache); online logits need it everywhere.
    needed_here = is_main_process() or (cfg.kind == "logits" and not cfg.cache)
    teacher = load_teacher(ctx, t_path) if cfg.teacher.endpoint is None and needed_here else None
    if is_main_process():
        side.eval = quick_eval(ctx, teacher, tokenizer) if teacher is not None else recorded_teacher_eval(ctx)
    if is_main_process() and teacher is not None:
        side.eval_rephrased = quick_eval(ctx, teacher, tokenizer, rephrased=True)
    metrics["teacher_eval"] = side.eval
    if side.eval_rephrased:
        metrics["teacher_eval_rephrased"] = side.eval_rephrased
    if teacher is not None and cfg.kind == "sequence" and not generates_in_process(ctx):
        # scored; the answers come from a vLLM child (or an endpoint) that needs this GPU memory
        teacher = None
        free_gpu_memory()
    if any_todo and cfg.kind == "logits":
        side.inputs = _phase_inputs(ctx, teacher, tokenizer=tokenizer, convs=convs, side=side, todo=todo)
        if cfg.cache:
            metrics["caches"] = {key: _cache_record(inp) for key, inp in side.inputs.items()}
            teacher = None  # students train from the caches alone
            free_gpu_memory()  # every rank's teacher copy, before its student loads
    elif any_todo and cfg.kind == "sequence":
        side.rows, metrics["generations"] = sequence_rows(ctx, teacher, tokenizer, contexts)
        teacher = None
    elif cfg.kind == "on_policy":
        teacher = None  # TRL loads it from the path itself
    side.teacher = teacher
    gc.collect()
    return side


def student_phases(ctx: StageContext) -> dict[str, list[DistillPhase]]:
    """Each student's phases (`DistillStage.phases_for`: the recipe's, else by the kind of student)."""
    recipe, cfg = ctx.recipe, ctx.stage_section(DistillStage)
    has_corpus = bool(ctx.curated_corpus() or recipe.data.corpus)
    return {
        student_name(ref): cfg.phases_for(
            ref, has_corpus=has_corpus, has_replay=recipe.data.replay is not None
        )
        for ref in cfg.students or recipe.models.students
    }


def _phase_inputs(
    ctx: StageContext,
    teacher: Any,
    *,
    tokenizer: Any,
    convs: list[list[dict[str, str]]],
    side: TeacherSide,
    todo: list[str],
) -> dict[str, PhaseInput]:
    """The rows of every phase input the students still to train read, and (`cache: true`) the
    teacher's cache over each, built with the phase's temperature; each once however many
    phases share it."""
    cfg = ctx.stage_section(DistillStage)
    needed = {cfg.input_key(p): p for name in todo for p in side.phases[name]}
    inputs: dict[str, PhaseInput] = {}
    for key, phase in needed.items():
        examples = phase_examples(ctx, phase, tokenizer=tokenizer, convs=convs)
        inputs[key] = inp = PhaseInput(examples)
        if cfg.cache:
            logger.info(f"  teacher cache for {key}: {len(examples):,} rows")
            with PeakRss() as mem:
                inp.cache, inp.build_seconds = build_cache(
                    ctx,
                    teacher,
                    tokenizer,
                    examples,
                    len(tokenizer),
                    cfg.phase_settings(phase)["temperature"],
                )
            inp.build_peak_rss_mb = mem.mb
    return inputs


def _cache_record(inp: PhaseInput) -> dict[str, Any]:
    c = inp.cache
    return {
        **{k: c.meta[k] for k in ("k", "tokens", "examples", "bytes_per_token")},
        "path": str(c.root),
        "build_seconds": inp.build_seconds,
        "build_peak_rss_mb": inp.build_peak_rss_mb,
    }


def _train_student(
    sctx: StageContext,
    path: str,
    *,
    t_path: str,
    tokenizer: Any,
    contexts: list[list[dict[str, str]]],
    side: TeacherSide,
    fp: str,
) -> dict[str, Any]:
    """Train one student by the recipe's kind; its result and done marker (rank 0) in its folder."""
    kind = sctx.stage_section(DistillStage).kind
    if kind == "logits":
        result, model = _train_phases(sctx, path, tokenizer=tokenizer, side=side, fp=fp)
    else:
        if kind == "sequence":
            done = train_sequence(sctx, path, tokenizer, side.rows)
        else:
            done = train_on_policy(sctx, path, tokenizer, t_path, contexts)
        result, model = student_result(done, side.score), done.trainer.model
    result["teacher_in_memory"] = kind == "on_policy" or (kind == "logits" and side.teacher is not None)
    result.update(_rephrased(sctx, model, tokenizer, side.eval_rephrased))
    if is_main_process():  # one set of results under a launcher
        atomic_write_json(sctx.dir / "result.json", result)
        atomic_write_json(sctx.dir / STUDENT_DONE, {"fingerprint": fp})
    return result


def _rephrased(
    sctx: StageContext, model: Any, tokenizer: Any, teacher: dict[str, Any] | None
) -> dict[str, Any]:
    """The trained student on data.eval_rephrased and its retention there ({} without the set, or
    when the model is not at hand: a final phase kept from an earlier attempt)."""
    if teacher is None or model is None:
        return {}
    summary = quick_eval(sctx, model, tokenizer, rephrased=True)
    if summary is None:
        return {}
    retention = round(summary["score"] / teacher["score"], 4) if teacher["score"] else None
    return {"eval_rephrased": summary, "retention_rephrased": retention}


def _train_phases(
    sctx: StageContext, path: str, *, tokenizer: Any, side: TeacherSide, fp: str
) -> tuple[dict[str, Any], Any]:
    """A student's logit phases in order, each from the model the one before saved and scored
    after it; with several phases each trains in `distill/<student>/<phase>/`, and a rerun keeps
    the phases a killed attempt finished (their `PHASE_DONE.json`)."""
    cfg = sctx.stage_section(DistillStage)
    name = sctx.subdir or ""
    phases, model, done_phases, trained = side.phases[name], path, [], None
    for phase in phases:
        pctx = sctx if len(phases) == 1 else sctx.sub(f"{name}/{phase.name}")
        record = _phase_done(pctx, fp) if len(phases) > 1 else None
        if record is None:
            inp = side.inputs[cfg.input_key(phase)]
            rows = budget_rows(inp.examples, phase.max_tokens)
            logger.info(f"  student {name}, phase {phase.name}: {phase.label}, {len(rows):,} rows")
            done = train_logits(
                pctx,
                model,
                tokenizer=tokenizer,
                examples=inp.examples,
                rows=rows,
                vocab=len(tokenizer),
                teacher=side.teacher,
                cache=inp.cache,
                phase=phase,
            )
            record = _phase_record(cfg, phase, done, examples=inp.examples, rows=rows, teacher_eval=side.eval)
            trained = done.trainer.model
            if len(phases) > 1 and is_main_process():
                atomic_write_json(pctx.dir / PHASE_DONE, {"fingerprint": fp, "record": record})
        else:
            logger.info(f"  student {name}, phase {phase.name}: done in an earlier attempt (kept)")
            trained = None
        model = record["outputs"]["model"]
        done_phases.append(record)
    last = done_phases[-1]
    return {
        **{k: last[k] for k in ("outputs", "eval", "score", "retention", "train")},
        "peak_rss_mb": max((p["train"]["peak_rss_mb"] or 0 for p in done_phases), default=None),
        "phases": [{k: v for k, v in p.items() if k != "outputs"} for p in done_phases],
    }, trained


def _phase_record(
    cfg: DistillStage,
    phase: DistillPhase,
    done: Any,
    *,
    examples: list[dict[str, list[int]]],
    rows: list[int],
    teacher_eval: dict[str, Any] | None,
) -> dict[str, Any]:
    """One phase as `metrics.PhaseMetrics` (plus its outputs): the student's score after it and
    its retention overall and per task against the teacher's."""
    base = student_result(done, teacher_eval["score"] if teacher_eval else None)
    s = cfg.phase_settings(phase)
    by_task = (base["eval"] or {}).get("by_task", {})
    teacher_tasks = (teacher_eval or {}).get("by_task", {})
    tokens = tokens_of(examples, rows)
    return {
        "name": phase.name,
        "data": phase.label,
        "examples": len(set(rows)),
        "tokens": tokens[0],
        "target_tokens": tokens[1],
        **{k: s[k] for k in ("loss", "temperature", "ce_weight")},
        **{k: base[k] for k in ("outputs", "eval", "score", "retention", "train")},
        "retention_by_task": {
            t: round(by_task[t] / ts, 4) if ts and t in by_task else None for t, ts in teacher_tasks.items()
        },
    }


def _phase_done(pctx: StageContext, fp: str) -> dict[str, Any] | None:
    marker = pctx.dir / PHASE_DONE
    if not (fp and marker.exists()):
        return None
    saved = json.loads(marker.read_text())
    return saved["record"] if saved.get("fingerprint") == fp else None


def _record_failure(sctx: StageContext, name: str, exc: Exception) -> str:
    """The failure in one line for the stage's message; the traceback in the student's error.log
    (one per rank under a launcher: `error.rank<N>.log`)."""
    message = f"{type(exc).__name__}: {exc}"
    sctx.dir.mkdir(parents=True, exist_ok=True)
    log = sctx.dir / ("error.log" if world_size() == 1 else f"error.rank{rank()}.log")
    log.write_text("".join(traceback.format_exception(exc)))
    logger.error(f"  student {name} FAILED on rank {rank()}: {message} (traceback: {log})")
    return message


def _train_students(
    ctx: StageContext,
    todo: dict[str, str],
    *,
    results: dict[str, Any],
    t_path: str,
    tokenizer: Any,
    contexts: list[list[dict[str, str]]],
    side: TeacherSide,
    fp: str,
) -> dict[str, str]:
    """Train each student still to do into `results`; one student's failure must not lose the
    others, so a failure is recorded (and returned, name → error) and the loop goes on."""
    cfg = ctx.stage_section(DistillStage)
    failures: dict[str, str] = {}
    for name, path in todo.items():
        sctx = ctx.sub(name)
        logger.info(f"  student {name}: {cfg.kind} distillation from {t_path}")
        error: Exception | None = None
        try:
            results[name] = _train_student(
                sctx, path, t_path=t_path, tokenizer=tokenizer, contexts=contexts, side=side, fp=fp
            )
        except Exception as exc:
            error = exc
        # every rank gives the student up together (one rank moving on alone hangs the others)
        if any_rank(error is not None):
            results.pop(name, None)
            failures[name] = _record_failure(
                sctx, name, error or FailedOnAnotherRank("failed on another rank")
            )
        gc.collect()
    return failures


def _fingerprint(ctx: StageContext) -> str:
    running = ctx.run.stage_dir("distill") / "RUNNING.json"
    return json.loads(running.read_text()).get("fingerprint", "") if running.exists() else ""


def _student_done(ctx: StageContext, name: str, fp: str) -> bool:
    marker = ctx.run.stage_dir("distill") / name / STUDENT_DONE
    return bool(fp) and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fp


def _student_result(ctx: StageContext, name: str) -> dict[str, Any]:
    return json.loads((ctx.run.stage_dir("distill") / name / "result.json").read_text())
