"""Peak memory of building the teacher top-k cache: full logits then gather (the old build) vs
the chunked projection of the response positions' hidden states (`cache.teacher_rows` now).

    .venv/bin/python benchmarks/bench_cache_memory.py --tiny
    .venv/bin/python benchmarks/bench_cache_memory.py --model /path/to/SmolLM2-135M-hf-folder

Model: any HF causal-LM folder (`--model`), or with `--tiny` a random Llama with SmolLM2's
vocabulary (49,152 ids, tied embeddings) and a 64-wide, 1-layer body, built on the spot: its
weights are a few MB, so what the build adds on top of them is the logits alone.

Data: `--examples` random sequences of `--max-length` ids whose every position after the first
is a response position: the worst case for the chunked path (its rows grow with the response
tokens), while the old path's [batch, length, vocab] logits do not depend on the mask.

Every variant runs in its own fresh process (`OMP_NUM_THREADS=2`), loaded the way the distill
stage loads a teacher (`models.load_model`), then the peak RSS is reset (/proc/self/clear_refs)
and the cache is built and written with `write_cache`; the JSON reports the RSS before the
build, the peak during it and the difference. `full_logits` is the old `teacher_rows` loop,
kept here only (`old_teacher_rows`); `chunk_N` is the library's `teacher_rows(chunk_size=N)`.
Both caches are compared (ids equal, log-probs within fp16 rounding).

Also reports the cache's bytes per response token at vocabularies of 49,152 and 152,064 ids, read
from caches written by `write_cache` (ids are uint16 below 65,536 ids, int32 above).

Writes benchmarks/results/cache_memory_<model>.json.
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

import numpy as np
from common import RESULTS, model_label, resolve_model, results_header

ROOT = Path(__file__).resolve().parents[1]
TINY_VOCAB = 49_152


def build_tiny(folder: Path) -> str:
    """A random Llama with SmolLM2-135M's vocabulary and tied embeddings, body 64 wide."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        head_dim=64,
        num_attention_heads=1,
        num_key_value_heads=1,
        num_hidden_layers=1,
        intermediate_size=128,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def examples(vocab: int, n: int, length: int) -> list[dict[str, list[int]]]:
    g = np.random.default_rng(0)
    return [
        {"input_ids": g.integers(1, vocab, length).tolist(), "response_mask": [0] + [1] * (length - 1)}
        for _ in range(n)
    ]


def old_teacher_rows(teacher: Any, rows: list[dict], k: int, temperature: float, batch_size: int, vocab: int):
    """The cache build before chunking (verticalft 5d7a60d): the teacher's full logits for every
    position of the batch, then the response positions picked out of them."""
    import torch

    from verticalft.distill.batching import DistillCollator
    from verticalft.distill.losses import teacher_topk

    collate = DistillCollator(0)
    teacher.eval()
    for start in range(0, len(rows), batch_size):
        batch = collate(
            [{**ex, "example_index": start + j} for j, ex in enumerate(rows[start : start + batch_size])]
        )
        with torch.no_grad():
            logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1, :vocab]
        mask = batch["labels"][:, 1:] != -100
        for b in range(len(mask)):
            ids, values, tail = teacher_topk(logits[b][mask[b]], k, temperature)
            yield ids.numpy(), values.numpy(), tail.numpy()


def _status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return round(int(line.split()[1]) / 1024, 1)


def job(a: argparse.Namespace, variant: str) -> dict[str, Any]:
    import torch

    from verticalft.distill import cache as tc
    from verticalft.models import load_model

    torch.set_num_threads(2)
    teacher = load_model(a.model_path)
    vocab = teacher.config.vocab_size
    rows = examples(vocab, a.examples, a.max_length)
    if variant == "full_logits":
        it = old_teacher_rows(teacher, rows, a.top_k, 1.0, a.batch_size, vocab)
    else:
        chunk = int(variant.removeprefix("chunk_"))
        it = tc.teacher_rows(
            teacher,
            rows,
            k=a.top_k,
            temperature=1.0,
            batch_size=a.batch_size,
            vocab_size=vocab,
            pad_id=0,
            chunk_size=chunk,
        )
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) := current RSS
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    cache = tc.write_cache(Path(a.work) / variant, it, len(rows), a.top_k, vocab, {"variant": variant})
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {
        "variant": variant,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "build_added_mb": round(peak - before, 1),
        "seconds": round(seconds, 2),
        "tokens": cache.meta["tokens"],
        "dtype": str(teacher.dtype),
    }


def bytes_per_token(work: Path, k: int) -> dict[str, Any]:
    """What one response token costs on disk, from caches write_cache writes at each vocabulary."""
    from verticalft.distill import cache as tc

    g = np.random.default_rng(0)
    out = {}
    for vocab in (49_152, 152_064):
        parts = [
            (g.integers(0, vocab, (250, k)), g.normal(-8, 2, (250, k)), g.normal(-3, 1, 250))
            for _ in range(4)
        ]
        cache = tc.write_cache(work / f"bpt-{vocab}", parts, len(parts), k, vocab, {})
        out[str(vocab)] = {
            "id_dtype": cache.meta["id_dtype"],
            "bytes_per_token": cache.meta["bytes_per_token"],
            "full_fp32_logits_bytes_per_token": 4 * vocab,
        }
    return out


def run_job(a: argparse.Namespace, variant: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, __file__, "--model", a.model_path, "--work", a.work, "--job", variant]
    argv += ["--max-length", str(a.max_length), "--examples", str(a.examples)]
    argv += ["--top-k", str(a.top_k), "--batch-size", str(a.batch_size)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(work: Path, a: str, b: str) -> dict[str, Any]:
    from verticalft.distill.cache import TeacherCache

    x, y = TeacherCache(work / a), TeacherCache(work / b)
    return {
        "ids_equal_fraction": float((np.asarray(x.ids) == np.asarray(y.ids)).mean()),
        "logprob_max_abs_diff": float(
            np.abs(np.asarray(x.logprobs, np.float32) - np.asarray(y.logprobs)).max()
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="the teacher: HF causal-LM folder, *.gguf or pkg://<package>/<file>.gguf")
    ap.add_argument("--tiny", action="store_true", help=f"build a random Llama with vocab {TINY_VOCAB}")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 256])
    ap.add_argument("--work", default="/tmp/bench_cache_memory")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.model_path = a.model
    if a.job:
        print(json.dumps(job(a, a.job)))
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.tiny:
        a.model_path, name = build_tiny(work / "tiny-llama-49152"), "tiny-llama-49152"
    elif a.model:
        a.model_path, name = resolve_model(a.model), model_label(a.model)
    else:
        raise SystemExit("give --model <HF folder> or --tiny")

    variants = ["full_logits", *(f"chunk_{c}" for c in a.chunk_sizes)]
    runs = []
    for v in variants:
        runs.append(run_job(a, v))
        print(runs[-1], flush=True)
    full = runs[0]
    summary = {
        r["variant"]: {
            "build_added_mb": r["build_added_mb"],
            "peak_rss_mb": r["peak_rss_mb"],
            "vs_full_logits": round(full["build_added_mb"] / max(r["build_added_mb"], 0.1), 1),
        }
        for r in runs
    }
    result = {
        **results_header("bench_cache_memory.py", sys.argv[1:]),
        "model": name,
        "runs": runs,
        "same_cache": {v: compare(work, "full_logits", v) for v in variants[1:]},
        "summary": summary,
        "cache_bytes_per_token": bytes_per_token(work, a.top_k),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cache_memory_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "same_cache", "cache_bytes_per_token")}, indent=2))


if __name__ == "__main__":
    main()
