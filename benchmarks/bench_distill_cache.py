"""Logit distillation from the teacher top-k cache vs with the teacher online, side by side.

    .venv/bin/python benchmarks/bench_distill_cache.py [--examples 3000] [--epochs 3] [--k 64]

Models: one byte-level BPE tokenizer trained on the finance sample, a tiny Llama teacher and the
two tiny students of the tiny profile (student-m, student-s), built like `verticalft tiny-models`.
The teacher is wider/deeper than the profile's (hidden 512, 8 layers, ~30M parameters, 14-32x
each student) so that "the teacher is in memory or not" is visible above the ~0.6 GB a Python
process with torch/transformers/datasets occupies before any model loads. Weights are random:
timing and memory do not depend on them, and the loss agreement is tested in tests/test_distill.py.

Data: the first `--examples` conversations of data_pipelines/finance/sample/sft.jsonl through the
chat template (loss on the answer tokens only).

Every measurement runs in its own fresh process (so peak RSS = that job alone, read from
`resource.getrusage(RUSAGE_SELF).ru_maxrss`), one after another on the same machine:
  1. cache build: load the teacher, run it once over the data, write top-k ids/log-probs + tail;
  2. for each student: `--epochs` epochs from the cache (no teacher loaded);
  3. for each student: `--epochs` epochs with the teacher online (teacher forward every step).
Both training paths are `LogitDistillTrainer` (HF Trainer) with the same settings (forward KL,
T=2, ce_weight 0.5, batch 16, full fine-tune, fp32 — bf16=False, as the stage sets on CPU —,
2 threads). Writes
benchmarks/results/distill_cache.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEACHER = {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1536}


def _examples(tok, n: int, max_length: int = 256) -> list[dict]:
    from verticalft.distill.trainer import chat_example

    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/sft.jsonl").open()][:n]
    return [chat_example(tok, r["messages"], max_length) for r in rows]


def _peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def job_build(work: Path, n: int, k: int) -> dict:
    from verticalft.distill import cache as tc
    from verticalft.models import load_model, load_tokenizer

    tok = load_tokenizer(str(work / "models" / "teacher"))
    examples = _examples(tok, n)
    t0 = time.perf_counter()
    teacher = load_model(str(work / "models" / "teacher"))
    rows = tc.teacher_rows(teacher, examples, k, 2.0, 32, len(tok), tok.pad_token_id)
    cache = tc.write_cache(work / "cache", rows, len(examples), k, len(tok), {"teacher": "bench"})
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": _peak_mb(),
        "tokens": cache.meta["tokens"],
        "bytes_per_token": round(cache.bytes_per_token(), 1),
        "cache_bytes": sum(p.stat().st_size for p in cache.root.iterdir()),
    }


def job_train(work: Path, n: int, student: str, mode: str, epochs: int) -> dict:
    from trl import SFTConfig

    from verticalft.distill.cache import TeacherCache
    from verticalft.distill.trainer import DistillCollator, LogitDistillTrainer, LossSettings
    from verticalft.models import load_model, load_tokenizer

    tok = load_tokenizer(str(work / "models" / student))
    examples = _examples(tok, n)
    from datasets import Dataset

    data = Dataset.from_list([{**e, "example_index": i} for i, e in enumerate(examples)])
    t0 = time.perf_counter()
    model = load_model(str(work / "models" / student))
    teacher = load_model(str(work / "models" / "teacher")) if mode == "online" else None
    cache = TeacherCache(work / "cache") if mode == "cache" else None
    args = SFTConfig(
        output_dir=str(work / f"out-{student}-{mode}"),
        per_device_train_batch_size=16,
        num_train_epochs=epochs,
        learning_rate=3e-3,
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
        settings=LossSettings("forward_kl", 2.0, 0.5, 0.5, len(tok)),
        teacher=teacher,
        cache=cache,
    )
    t_train = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t_train
    return {
        "student": student,
        "mode": mode,
        "epochs": epochs,
        "train_seconds": round(train_s, 2),
        "seconds_per_epoch": round(train_s / epochs, 2),
        "load_seconds": round(t_train - t0, 2),
        "peak_rss_mb": _peak_mb(),
        "train_loss": round(out.training_loss, 4),
        "teacher_loaded": teacher is not None,
    }


def _run_job(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--job", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode:
        raise SystemExit(f"job {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--work", default="/tmp/bench_distill_cache")
    ap.add_argument("--job", nargs="*")
    a = ap.parse_args()
    work = Path(a.work)
    if a.job:
        kind, *rest = a.job
        out = (
            job_build(work, a.examples, a.k)
            if kind == "build"
            else job_train(work, a.examples, rest[0], rest[1], a.epochs)
        )
        print(json.dumps(out))
        return

    from verticalft.models import DEFAULT_TINY_SPECS, build_tiny_models, count_parameters, load_model

    texts = [
        json.loads(line)["text"] for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()
    ]
    specs = {
        "teacher": TEACHER,
        "student-m": DEFAULT_TINY_SPECS["student-m"],
        "student-s": DEFAULT_TINY_SPECS["student-s"],
    }
    folders = build_tiny_models(work / "models", texts, specs, vocab_size=2048, seed=0)
    params = {name: count_parameters(load_model(path))[1] for name, path in folders.items()}
    print("parameters:", params, flush=True)
    build = _run_job("build")
    print("cache build:", build, flush=True)
    runs = [_run_job("train", s, mode) for s in ("student-s", "student-m") for mode in ("cache", "online")]
    for r in runs:
        print(r, flush=True)
    by = {(r["student"], r["mode"]): r for r in runs}
    students = ("student-s", "student-m")
    total_cache = build["seconds"] + sum(by[(s, "cache")]["train_seconds"] for s in students)
    total_online = sum(by[(s, "online")]["train_seconds"] for s in students)
    summary = {
        "epoch_speedup": {
            s: round(by[(s, "online")]["seconds_per_epoch"] / by[(s, "cache")]["seconds_per_epoch"], 2)
            for s in students
        },
        "peak_rss_mb": {f"{s} {m}": by[(s, m)]["peak_rss_mb"] for s in students for m in ("cache", "online")},
        "total_seconds_two_students": {
            "cache (build + training)": round(total_cache, 1),
            "online": round(total_online, 1),
        },
        "total_speedup_two_students": round(total_online / total_cache, 2),
        "bytes_per_token": build["bytes_per_token"],
    }
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "command": "python benchmarks/bench_distill_cache.py "
        + " ".join(f"--{k} {v}" for k, v in (("examples", a.examples), ("epochs", a.epochs), ("k", a.k))),
        "parameters": params,
        "teacher_to_student": {s: round(params["teacher"] / params[s], 1) for s in students},
        "cache_build": build,
        "runs": runs,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
