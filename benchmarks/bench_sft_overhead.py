"""Our sft stage vs a bare TRL SFTTrainer script: same tiny model, data and settings, one process.

    .venv/bin/python benchmarks/bench_sft_overhead.py [--steps 40] [--rounds 2]

Reports (1) step-throughput ratio ours/bare from `trainer.train()` wall time (target ≥ 0.95:
the toolkit adds no cost; ours includes its checkpoint saves and TensorBoard logging), and
(2) packing efficiency of the batches our stage feeds the model: the fraction of non-padding
tokens in the input tensors (target ≥ 0.95) and how full the packed max_length bins are,
next to the same data unpacked (padded per batch) for contrast.
Like for like: both sides load the same 4-bit NF4 base with the same compute dtype and train their
LoRA adapters in that dtype (`--dtype`, default float32: on a CPU without AVX-512-BF16 bf16
matmuls are ~30x slower, which would measure the dtype, not the toolkit), with the same seed in a
round. Rounds are interleaved and the order alternates (bare first in even rounds, ours first in
odd ones, recorded); the median is reported: the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bare_trl(model_path: str, recipe, steps: int, out: Path, seed: int, dtype_name: str) -> float:
    """What a user writes with TRL alone (QLoRA NF4 + LoRA + packing + assistant-only loss)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cfg = recipe.stages.sft
    dtype = getattr(torch, dtype_name)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=dtype,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),
    )
    ds = load_dataset("json", data_files=recipe.data.sft.path, split="train").select_columns(["messages"])
    ds = ds.train_test_split(test_size=min(0.05, 200 / len(ds)), seed=recipe.compute.seed)["train"]
    t = cfg.trainer
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t.get("gradient_accumulation_steps", 1),
        learning_rate=t["learning_rate"],
        max_length=cfg.max_length,
        packing=True,
        assistant_only_loss=True,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        bf16=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules="all-linear",
            modules_to_save=list(cfg.lora.modules_to_save) or None,  # the same adapter as ours
            task_type="CAUSAL_LM",
        ),
    )
    for p in trainer.model.parameters():  # TRL makes QLoRA adapters bf16; train them in `dtype`, as ours does
        if p.requires_grad:
            p.data = p.data.to(dtype)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def ours(recipe_path: str, runs: Path, steps: int, seed: int) -> tuple[float, dict]:
    from verticalft.pipeline import run_dir_for, run_recipe
    from verticalft.recipe import load_recipe

    r = load_recipe(
        recipe_path,
        "tiny",
        [f"stages.sft.trainer.max_steps={steps}", "evaluation.max_items=1", f"compute.seed={seed}"],
    )
    rd = run_dir_for(r, "tiny", runs)
    run_recipe(r, rd, until="sft", only=["tiny_models", "sft"], echo=lambda s: None)
    m = rd.record("sft").metrics
    return m["train_seconds"], m


def packing_stats(model_path: str, recipe, batches: int = 20) -> dict:
    """Non-padding fraction and bin fill of the batches the SFTTrainer builds, packed vs unpacked."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from verticalft.models import load_model

    tok = AutoTokenizer.from_pretrained(model_path)
    ds = load_dataset("json", data_files=recipe.data.sft.path, split="train").select_columns(["messages"])
    out = {}
    model = load_model(model_path)
    for packed in (True, False):
        args = SFTConfig(
            output_dir=tempfile.mkdtemp(),
            max_length=recipe.stages.sft.max_length,
            packing=packed,
            per_device_train_batch_size=recipe.stages.sft.trainer["per_device_train_batch_size"],
            assistant_only_loss=True,
            report_to="none",
            use_cpu=True,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        real = total = seqs = 0
        for i, batch in enumerate(trainer.get_train_dataloader()):
            if i >= batches:
                break
            ids = batch["input_ids"]
            total += ids.numel()
            if "attention_mask" in batch and not packed:
                real += int(batch["attention_mask"].sum())
            else:  # padding-free: every position is a real token
                real += int((ids != tok.pad_token_id).sum())
            seqs += args.per_device_train_batch_size
        key = "packed" if packed else "unpacked"
        out[key] = {
            "non_padding_fraction": round(real / total, 4),
            "bin_fill": round(real / (seqs * args.max_length), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="recipes/finance.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="compute and adapter dtype of both sides")
    parser.add_argument("--out", default="benchmarks/results/sft_overhead.json")
    a = parser.parse_args()
    from verticalft.pipeline import run_dir_for, run_recipe
    from verticalft.recipe import load_recipe

    recipe = load_recipe(a.recipe, "tiny")
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    base = run_dir_for(recipe, "tiny", work / "models")
    run_recipe(recipe, base, until="tiny_models", echo=lambda s: None)
    model_path = base.output("tiny_models", "teacher")

    import torch

    from verticalft.models import training_dtype

    if getattr(torch, a.dtype) != training_dtype():
        raise SystemExit(
            f"ours trains in {training_dtype()} here; run with --dtype {str(training_dtype())[6:]}"
        )
    bare_s, ours_s, orders = [], [], []
    for i in range(a.rounds):
        seed = 42 + i  # the same seed on both sides of a round
        order = ["bare", "ours"] if i % 2 == 0 else ["ours", "bare"]
        for side in order:
            if side == "bare":
                bare_s.append(bare_trl(model_path, recipe, a.steps, work / f"bare{i}", seed, a.dtype))
            else:
                ours_s.append(ours(a.recipe, work / f"ours{i}", a.steps, seed)[0])
        orders.append(order)
        print(
            f"round {i} ({' then '.join(order)}): bare {bare_s[-1]:.1f}s, ours {ours_s[-1]:.1f}s",
            file=sys.stderr,
        )
    bare_med, ours_med = statistics.median(bare_s), statistics.median(ours_s)
    result = {
        "command": "python benchmarks/bench_sft_overhead.py " + " ".join(sys.argv[1:]),
        "load_average_1_5_15": os.getloadavg(),
        "steps": a.steps,
        "rounds": a.rounds,
        "dtype": a.dtype,
        "order_per_round": orders,
        "bare_seconds": [round(x, 2) for x in bare_s],
        "ours_seconds": [round(x, 2) for x in ours_s],
        "bare_trl_steps_per_s": round(a.steps / bare_med, 3),
        "ours_steps_per_s": round(a.steps / ours_med, 3),
        "throughput_ratio_ours_over_bare": round(bare_med / ours_med, 3),
        "packing": packing_stats(model_path, recipe),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
