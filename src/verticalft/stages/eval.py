"""eval: every model of the run on the recipe's domain eval set (and the general set, if named).

Models: the base teacher, the teacher after each model stage (cpt → sft → dpo) and each distilled
student, all generating greedily. Generation goes through vLLM's offline engine (one child
process for every model, `serving.offline`) or, where vLLM is not installed, transformers
`generate`. Scoring uses the same rules as the training stages' quick eval (`scoring`): exact,
label, numeric with a tolerance, multiple choice.

An item is a `prompt` or `messages` (a chat ending on a user turn), with an optional `system`
turn: the whole chat is what each model answers. Writes `eval/<model>.jsonl` (one line per item:
prompt (and system / messages), answer, prediction, finish reason,
correct, and the model's confidence in its answer — the geometric-mean probability of its tokens,
which the route stage uses to decide when a student escalates) and puts per model the overall / per-task / per-difficulty scores in the manifest,
with retention = student / final teacher (overall and per task) and, on the general set,
retention = model / base (forgetting). `stages.eval.general` scores every model on
lm-evaluation-harness tasks too (`general_eval`: lm-eval's own CLI per model), and the general
retention is then lm-eval's mean over the tasks / the base's. Gates (`stages.eval.gates`) are checked after every result
is saved: a failed gate fails the stage with what fell short, and the report still shows it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from verticalft.data import DataError
from verticalft.metrics import EvalMetrics, EvalModel, GeneralEvalRecord, Retention, Score, to_dict
from verticalft.recipe import EvalStage
from verticalft.rundir import atomic_write_text
from verticalft.scoring import confidence, item_fields, item_messages, load_items, score_items, summarise
from verticalft.serving.offline import pick_backend
from verticalft.stages.base import PartialFailure, StageContext, StageResult
from verticalft.stages.run_models import RunModel, final_teacher, models_in_run

logger = logging.getLogger(__name__)


def generate_all(
    ctx: StageContext,
    models: list[RunModel],
    chats: list[list[dict[str, str]]],
    backend: str,
    max_new_tokens: int,
) -> dict[str, dict[str, list[Any]]]:
    """Greedy completions of every chat (an item's messages: `scoring.item_messages`) by every
    model: {model: {texts, finish_reasons, mean_logprobs}}."""
    if backend == "vllm":
        return _generate_vllm(ctx, models, chats, max_new_tokens=max_new_tokens)
    return _generate_hf(ctx, models, chats, max_new_tokens=max_new_tokens)


def _generate_vllm(
    ctx: StageContext, models: list[RunModel], chats: list[list[dict[str, str]]], *, max_new_tokens: int
) -> dict[str, dict[str, list[Any]]]:
    """Every model through vLLM offline (`serving.offline.generate`), each sized like the bench."""
    from verticalft.chat_templates import chosen_template
    from verticalft.serving.offline import Job, generate
    from verticalft.serving.sizing import engine_args_for, quantized_cpu_dtype

    cfg = ctx.stage_section(EvalStage)
    kwargs = ctx.recipe.models.chat_template_kwargs  # template variables, e.g. enable_thinking: false

    # a trained folder carries the run's template; the base folder its own (renders the same
    # text, unless the recipe chose another template: then every model gets that one)
    template = chosen_template(ctx.recipe.models.chat_template)

    def engine_args(m: RunModel) -> dict[str, Any]:
        found = engine_args_for(
            ctx.recipe,
            m.name,
            teacher_sized=m.role != "student",
            prompts=chats,
            max_new_tokens=max_new_tokens,
            explicit=cfg.engine_args,
            model_path=m.path,
        )
        dtype = quantized_cpu_dtype(ctx.recipe, m.path)  # a quantized variant on CPU: bf16 (its docstring)
        return {**found, "dtype": dtype} if dtype else found

    jobs = [
        Job(
            m.name,
            m.path,
            chats,
            max_new_tokens,
            chat_template=template,
            chat_template_kwargs=kwargs,
            engine_args=engine_args(m),
        )
        for m in models
    ]
    logger.info(f"  vLLM offline: {len(models)} models × {len(chats)} prompts (log: {ctx.dir / 'vllm.log'})")
    outs = generate(jobs, ctx.dir, cfg.engine_args, cfg.env)
    return {
        n: {"texts": o.texts, "finish_reasons": o.finish_reasons, "mean_logprobs": o.mean_logprobs}
        for n, o in outs.items()
    }


def _generate_hf(
    ctx: StageContext, models: list[RunModel], chats: list[list[dict[str, str]]], *, max_new_tokens: int
) -> dict[str, dict[str, list[Any]]]:
    """The transformers fallback: one model loaded at a time, batched greedy generation."""
    kwargs = ctx.recipe.models.chat_template_kwargs
    import gc

    from verticalft.models import load_model, load_tokenizer
    from verticalft.scoring import generate as generate_hf  # not serving.offline's vLLM one

    batch = ctx.recipe.evaluation.batch_size
    results: dict[str, dict[str, list[Any]]] = {}
    for m in models:
        model = load_model(m.path, "none", ctx.recipe.models.trust_remote_code, inference=True)
        tokenizer = load_tokenizer(m.path, ctx.recipe.models.chat_template)
        done = generate_hf(model, tokenizer, chats, max_new_tokens, batch, kwargs)
        results[m.name] = {
            "texts": [c.text for c in done],
            "finish_reasons": [c.finish_reason for c in done],
            "mean_logprobs": [c.mean_logprob for c in done],
        }
        del model
        gc.collect()
    return results


def retention(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Student score / teacher score, overall and per task (None where the teacher scored 0)."""
    ratio = lambda s, t: round(s / t, 4) if t else None  # noqa: E731
    return {
        "overall": ratio(student["score"], teacher["score"]),
        "by_task": {k: ratio(v, teacher["by_task"].get(k, 0.0)) for k, v in student["by_task"].items()},
    }


def check_gates(gates: Any, scores: dict[str, Any], teacher: str, base: str | None) -> list[str]:
    """Every gate that fell short, as a sentence naming the model and the numbers."""
    failed = []
    t = scores.get(teacher, {}).get("domain")
    if gates.min_score is not None and t and t["score"] < gates.min_score:
        failed.append(f"teacher '{teacher}' scored {t['score']:.3f} < min_score {gates.min_score}")
    if gates.min_retention is not None:
        for name, s in scores.items():
            r = s.get("retention")
            if r is not None and r["overall"] is not None and r["overall"] < gates.min_retention:
                failed.append(
                    f"student '{name}' keeps {r['overall']:.3f} of the teacher's score < min_retention {gates.min_retention}"
                )
    if gates.min_general_retention is not None and base:
        r = scores.get(teacher, {}).get("general_retention")
        if r is not None and r < gates.min_general_retention:
            failed.append(
                f"teacher '{teacher}' keeps {r:.3f} of the base model's general score "
                f"< min_general_retention {gates.min_general_retention}"
            )
    return failed


def eval_sets(ctx: StageContext) -> dict[str, list[dict[str, Any]]]:
    """The items of each set the recipe names: `domain` (data.eval, required) and `general`."""
    cfg, ev = ctx.stage_section(EvalStage), ctx.recipe.evaluation
    sets = {"domain": ctx.recipe.data.eval, "general": ctx.recipe.data.general_eval}
    items = {k: load_items(src, cfg.max_items or ev.max_items) for k, src in sets.items() if src is not None}
    if not items.get("domain"):
        raise DataError("stages.eval: data.eval has no items to score")
    return items


def score_model(
    m: RunModel, gen: dict[str, list[Any]], items: dict[str, list[dict[str, Any]]], tolerance: float
) -> tuple[EvalModel, list[str]]:
    """One model's scores per set, and its answers as JSONL lines (one per item, every set in order)."""
    scores: dict[str, Score] = {}
    lines, start = [], 0
    logps_all = gen.get("mean_logprobs") or [None] * len(gen["texts"])
    for set_name, rows in items.items():
        span = slice(start, start + len(rows))
        texts, reasons, logps = gen["texts"][span], gen["finish_reasons"][span], logps_all[span]
        start += len(rows)
        correct = score_items(rows, texts, tolerance)
        scores[set_name] = Score(**summarise(rows, correct))
        lines += [
            json.dumps(
                {
                    "set": set_name,
                    "id": it.get("id"),
                    "task": it.get("task"),
                    "kind": it["kind"],
                    **item_fields(it),  # prompt (and system / messages): the item's key
                    "answer": it["answer"],
                    "prediction": text,
                    "finish_reason": why,
                    "correct": ok,
                    "mean_logprob": lp,
                    "confidence": confidence(lp),
                }
            )
            for it, text, why, ok, lp in zip(rows, texts, reasons, correct, logps, strict=True)
        ]
    model = EvalModel(role=m.role, path=m.path, domain=scores["domain"], general=scores.get("general"))
    if m.quantization:
        model.quantization, model.quantized_from = m.quantization, m.quantized_from
    return model, lines


def add_retention(scores: dict[str, EvalModel], teacher: str | None) -> None:
    """Each student's (and quantized variant's) retention of the final teacher's domain score, and
    each model's general score against the base's (forgetting)."""
    for s in scores.values():
        if (s.role == "student" or s.quantization) and teacher:
            s.retention = Retention(**retention(to_dict(s.domain), to_dict(scores[teacher].domain)))
        if s.general is not None and "base" in scores:
            base_general = scores["base"].general.score if scores["base"].general else 0.0
            s.general_retention = round(s.general.score / base_general, 4) if base_general else None


def general_ability(
    ctx: StageContext, models: list[RunModel], scores: dict[str, EvalModel]
) -> GeneralEvalRecord | None:
    """Every model on the lm-eval tasks of `stages.eval.general` (`general_eval`), one lm-eval run
    each in `eval/general/<model>/`; each model's general retention = its mean / the base's."""
    from verticalft import general_eval

    cfg = ctx.stage_section(EvalStage).general
    if cfg is None:
        return None
    backend = general_eval.pick_backend(cfg.backend)
    runs: dict[str, general_eval.GeneralResult] = {}
    for m in models:
        logger.info(
            f"  lm-eval ({backend}): {m.name} on {', '.join(cfg.tasks)} (log: {ctx.dir / 'general' / m.name})"
        )
        runs[m.name] = general_eval.evaluate(cfg, m.path, ctx.dir / "general" / m.name, backend)
        scores[m.name].lm_eval = {k: round(v, 4) for k, v in runs[m.name].scores.items()}
    if "base" in runs:
        base = general_eval.mean(runs["base"].scores)
        for name, r in runs.items():
            scores[name].general_retention = round(general_eval.mean(r.scores) / base, 4) if base else None
    first = next(iter(runs.values()))
    return GeneralEvalRecord(
        backend=backend,
        tasks=cfg.tasks,
        metric=cfg.metric,
        limit=cfg.limit,
        samples=first.samples,
        commands={n: r.command for n, r in runs.items()},
        seconds={n: r.seconds for n, r in runs.items()},
    )


def run(ctx: StageContext) -> StageResult:
    cfg, ev = ctx.stage_section(EvalStage), ctx.recipe.evaluation
    items = eval_sets(ctx)
    models = models_in_run(ctx, cfg.include_base)
    teacher = final_teacher(models)
    backend = pick_backend(cfg.backend)
    max_new = cfg.max_new_tokens or ev.max_new_tokens
    chats = [item_messages(it) for rows in items.values() for it in rows]
    logger.info(f"  eval: {', '.join(m.name for m in models)} on {len(chats)} prompts via {backend}")
    generations = generate_all(ctx, models, chats, backend, max_new)

    scores: dict[str, EvalModel] = {}
    outputs: dict[str, str] = {}
    for m in models:
        scores[m.name], lines = score_model(m, generations[m.name], items, ev.numeric_tolerance)
        atomic_write_text(ctx.dir / f"{m.name}.jsonl", "\n".join(lines) + "\n")
        outputs[m.name] = str(ctx.dir / f"{m.name}.jsonl")
    add_retention(scores, teacher.name if teacher else None)
    general = general_ability(ctx, models, scores)  # lm-eval's figures replace data.general_eval's retention
    record = EvalMetrics(
        backend=backend,
        max_new_tokens=max_new,
        items={k: len(v) for k, v in items.items()},
        teacher=teacher.name if teacher else None,
        models=scores,
    )
    if general is not None:
        record.general_eval = general
    summary = ", ".join(
        f"{n} {s.domain.score:.3f}" + (f" (ret {s.retention.overall})" if s.retention else "")
        for n, s in scores.items()
    )
    record.gates_failed = check_gates(
        cfg.gates, to_dict(scores), teacher.name if teacher else "", "base" if "base" in scores else None
    )
    result = StageResult(outputs=outputs, metrics=to_dict(record), summary=summary)
    if record.gates_failed:
        failed = record.gates_failed
        raise PartialFailure("eval gates failed (stages.eval.gates):\n  - " + "\n  - ".join(failed), result)
    return result
