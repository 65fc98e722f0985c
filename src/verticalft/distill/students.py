"""The student side of the distill stage: which students (pruned ones are cut here), the
vocabulary preflight, and one trainer per kind (each a stages.training job) — logits (`LogitDistillTrainer`, from the cache or
the teacher online), sequence (TRL's SFTTrainer on the teacher's answers), on_policy (TRL's
DistillationTrainer) — then eval and save."""

from __future__ import annotations

import fcntl
import logging
from typing import Any

from verticalft.distill.teacher import conversations, teacher_path
from verticalft.models import lora_config
from verticalft.pruning import FORMAT, build_pruned, is_prune, parse_prune, prune_name, pruning_record
from verticalft.recipe import DistillPhase, DistillStage
from verticalft.stages.base import StageContext
from verticalft.stages.training import Trained, TrainingJob, train_model

logger = logging.getLogger(__name__)

LOGIT_KINDS = ("logits", "on_policy")


def student_name(ref: str) -> str:
    """Folder name of a student: `tiny://student-s` → student-s, `Qwen/Qwen2.5-7B-Instruct` → Qwen2.5-7B-Instruct,
    `prune://teacher?layers=10&by=even` → pruned-10L-even, `pkg://p/Model.Q4_1.gguf` → Model.Q4_1."""
    if is_prune(ref):
        return prune_name(ref)
    return ref.removeprefix("tiny://").rstrip("/").split("/")[-1].removesuffix(".gguf")


def students(ctx: StageContext) -> dict[str, str]:
    refs = ctx.stage_section(DistillStage).students or ctx.recipe.models.students
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
        logger.info(f"  vocab preflight {name}: {r.message()}")
    return {
        name: {"verdict": r.verdict, "tokenizer_size": r.tokenizer_size, "overlap": r.overlap}
        for name, r in reports.items()
    }


def _job(
    sctx: StageContext, path: str, tokenizer: Any, config_cls: type, make_trainer: Any, **kw: Any
) -> TrainingJob:
    """A student's TrainingJob: the recipe's method (full, LoRA, QLoRA), no eval before training
    (a fresh or pruned student scores nothing worth recording), merged folder after it."""
    method = sctx.stage_section(DistillStage).method
    return TrainingJob(
        model_path=path,
        tokenizer=tokenizer,
        quantization="nf4" if method == "qlora" else "none",
        config_cls=config_cls,
        make_trainer=make_trainer,
        is_peft=method != "full",
        merge=True,
        eval_before=False,
        **kw,
    )


def _peft(sctx: StageContext, tokenizer: Any) -> Any:
    cfg = sctx.stage_section(DistillStage)
    return None if cfg.method == "full" else lora_config(cfg.lora, tokenizer)


def train_logits(
    sctx: StageContext,
    path: str,
    *,
    tokenizer: Any,
    examples: list[dict[str, Any]],
    rows: list[int],
    vocab: int,
    teacher: Any,
    cache: Any,
    phase: DistillPhase,
) -> Trained:
    """One phase of logit distillation: the student on `rows` (indices into `examples`, which the
    cache covers: `phases.budget_rows`), with the phase's loss settings and trainer keys."""
    from datasets import Dataset
    from peft import get_peft_model
    from trl import SFTConfig

    from verticalft.distill.batching import DistillCollator
    from verticalft.distill.trainer import LogitDistillTrainer, LossSettings

    cfg = sctx.stage_section(DistillStage)
    data = Dataset.from_list([{**examples[i], "example_index": i} for i in rows])
    s = cfg.phase_settings(phase)
    loss = LossSettings(s["loss"], s["temperature"], s["beta"], s["ce_weight"], vocab)
    peft = _peft(sctx, tokenizer)

    def make_trainer(model: Any, args: Any) -> Any:
        # an HF Trainer subclass takes no peft_config: the adapter goes on here
        return LogitDistillTrainer(
            model=get_peft_model(model, peft) if peft is not None else model,
            args=args,
            train_dataset=data,
            data_collator=DistillCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            settings=loss,
            teacher=None if cache is not None else teacher,
            cache=cache,
        )

    done = train_model(
        sctx,
        _job(
            sctx,
            path,
            tokenizer,
            SFTConfig,
            make_trainer,
            defaults={"learning_rate": 1e-4},
            managed={"remove_unused_columns": False},
            overrides=phase.trainer_overrides(),
        ),
    )
    kd = done.trainer.kd_log
    done.metrics["distill_loss_first"] = round(kd[0], 5) if kd else None
    done.metrics["distill_loss_last"] = round(sum(kd[-10:]) / len(kd[-10:]), 5) if kd else None
    return done


def train_sequence(sctx: StageContext, path: str, tokenizer: Any, rows: list[dict[str, Any]]) -> Trained:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from verticalft.chat_templates import with_template_kwargs

    cfg = sctx.stage_section(DistillStage)
    data = with_template_kwargs(Dataset.from_list(rows), sctx.recipe.models.chat_template_kwargs)
    return train_model(
        sctx,
        _job(
            sctx,
            path,
            tokenizer,
            SFTConfig,
            lambda model, args: SFTTrainer(
                model=model,
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=_peft(sctx, tokenizer),
            ),
            defaults={"learning_rate": 1e-4},
            managed={"max_length": cfg.max_length, "packing": False, "assistant_only_loss": True},
        ),
    )


def train_on_policy(
    sctx: StageContext, path: str, tokenizer: Any, teacher: str, contexts: list[list[dict[str, str]]]
) -> Trained:
    """TRL's DistillationTrainer on conversational prompts: each context (system turn and earlier
    exchanges included) is what the student answers and the teacher scores."""
    import copy

    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    cfg = sctx.stage_section(DistillStage)
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(cfg.loss, cfg.beta)
    # the student generates during training: left padding for TRL, the saved tokenizer stays as is
    generating = copy.deepcopy(tokenizer)
    generating.padding_side = "left"
    data = Dataset.from_list([{"prompt": c} for c in contexts])
    return train_model(
        sctx,
        _job(
            sctx,
            path,
            tokenizer,
            DistillationConfig,
            lambda model, args: DistillationTrainer(
                model=model,
                teacher_model=teacher,
                args=args,
                train_dataset=data,
                processing_class=generating,
                peft_config=_peft(sctx, tokenizer),
            ),
            defaults={"learning_rate": 1e-4, "max_completion_length": cfg.generation.max_new_tokens},
            managed={
                "beta": beta,
                "temperature": cfg.temperature,
                "teacher_model_init_kwargs": _teacher_init_kwargs(cfg.teacher.quantization),
                "chat_template_kwargs": dict(sctx.recipe.models.chat_template_kwargs) or None,
            },
        ),
    )


def _teacher_init_kwargs(quantization: str) -> dict[str, Any]:
    """How TRL's DistillationTrainer loads the teacher from its path (4-bit when the recipe says so,
    placed for the launcher like every other model: `models.load_kwargs`)."""
    from verticalft.models import load_kwargs

    kwargs = {k: v for k, v in load_kwargs(quantization).items() if k != "trust_remote_code"}
    kwargs["dtype"] = str(kwargs["dtype"]).removeprefix("torch.")
    return kwargs


def student_result(done: Trained, teacher_score: float | None) -> dict[str, Any]:
    """What the distill stage records per student: outputs, eval, retention, training figures."""
    score = done.eval_after["score"] if done.eval_after else None
    retention = round(score / teacher_score, 4) if score is not None and teacher_score else None
    return {
        "outputs": done.outputs,
        "eval": done.eval_after,
        "score": score,
        "retention": retention,
        "train": done.metrics,
        "peak_rss_mb": done.metrics["peak_rss_mb"],
    }


def pruned_student(ctx: StageContext, ref: str, teacher: str) -> str:
    """The distill stage's hook: `distill/<student>/pruned/` cut from the stage's teacher, reused when complete."""
    out = ctx.run.stage_dir("distill") / prune_name(ref) / "pruned"
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / ".pruned.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # launched ranks resolve students too: one builds, the rest reuse
        done = pruning_record(out)
        if done and done.get("format") == FORMAT and done["spec"] == ref and done["teacher"] == teacher:
            logger.info(f"  pruned student {out.parent.name}: reusing {out}")
            return str(out)
        layers = parse_prune(ref).layers
        logger.info(f"  pruned student {out.parent.name}: cutting {teacher} to {layers} layers")
        folder = build_pruned(ref, teacher, out, conversations(ctx), ctx.recipe.models.trust_remote_code)
    rec = pruning_record(folder) or {}
    logger.info(
        f"  pruned student {out.parent.name}: kept layers {rec.get('kept_layers')} "
        f"({rec.get('parameters', 0) / 1e6:.1f}M parameters, {rec.get('seconds')}s)"
    )
    return folder
