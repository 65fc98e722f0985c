"""Packed SFT on CPU: one padding-free micro-batch of B packed rows vs B micro-batches of one row.

    .venv/bin/python benchmarks/bench_packed_attention.py [--model runs/finance/tiny/sft/model]
        [--rows 8] [--steps 6] [--rounds 4]

TRL's SFTTrainer packs with best-fit decreasing and then always trains padding-free: the collator
(`DataCollatorForLanguageModeling(padding_free=True)`) flattens the B packed rows of a micro-batch
into one sequence of up to B x max_length tokens with position ids restarting per example. With
flash-attn's varlen kernel that costs Σ Lᵢ² in attention; without it (every CPU) transformers'
SDPA path attends over the whole flat sequence under a block-diagonal mask, (B x max_length)².
This measures the alternative — one packed row per micro-batch and B steps of gradient
accumulation — and checks it is the same optimisation step: the gradient of the
accumulated micro-batches (each loss summed over the whole batch's label tokens, as the HF Trainer
does with `num_items_in_batch`) matches the gradient of the one flat micro-batch.

Default model: the tiny demo's SFT base (run `make demo` first); the data is the finance sample's
SFT conversations through the model's chat template, packed by TRL's own `pack_dataset`. Rounds
interleave the two layouts and alternate which goes first; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, alternating_rounds, results_header  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/finance/tiny/sft/model")
    ap.add_argument("--data", default="data_pipelines/finance/sample/sft.jsonl")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rows", type=int, default=8, help="packed rows per optimizer step")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps timed per layout and round")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        sys.exit(f"--model {args.model}: no such folder (run `make demo` first, or pass an HF folder)")

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    load_before = os.getloadavg()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    data = load_dataset("json", data_files=args.data, split="train").select_columns(["messages"])
    data = data.map(
        lambda r: {
            "input_ids": tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]
        }
    )
    packed = pack_dataset(data.select_columns(["input_ids"]), args.max_length, strategy="bfd")
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    batches = [[packed[i * args.rows + j] for j in range(args.rows)] for i in range(args.steps)]

    def micro_batches(rows: list[dict], per: int) -> list[dict]:
        out = [collate(rows[i : i + per]) for i in range(0, len(rows), per)]
        keep = ("input_ids", "labels", "position_ids")
        return [{k: b[k] for k in keep} for b in out]

    def step(rows: list[dict], per: int) -> None:
        mbs = micro_batches(rows, per)
        n_items = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in mbs)
        for mb in mbs:
            model(**mb, num_items_in_batch=n_items).loss.backward()

    # the same step: gradients of one flat micro-batch vs accumulated one-row micro-batches
    grads = {}
    for per in (args.rows, 1):
        model.zero_grad()
        step(batches[0], per)
        grads[per] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    rel = float((grads[1] - grads[args.rows]).norm() / grads[args.rows].norm())

    def optimizer_steps(per: int) -> None:  # every timed batch, as `per`-row micro-batches
        for rows in batches:
            model.zero_grad()
            step(rows, per)

    times, orders = alternating_rounds(
        {"flat": lambda: optimizer_steps(args.rows), "per_row": lambda: optimizer_steps(1)}, args.rounds, 1
    )
    times = {k: [t / args.steps for t in v] for k, v in times.items()}
    flat, per_row = statistics.median(times["flat"]), statistics.median(times["per_row"])
    tokens = statistics.mean(int(collate(b)["input_ids"].numel()) for b in batches)
    result = {
        **results_header(Path(__file__).name, sys.argv[1:], load_before),
        "model": args.model,
        "rows_per_step": args.rows,
        "max_length": args.max_length,
        "examples_per_row": round(len(data) / len(packed), 2),
        "tokens_per_step": tokens,
        "seconds_per_step": {"flat": round(flat, 3), "per_row": round(per_row, 3)},
        "speedup_per_row_over_flat": round(flat / per_row, 2),
        "gradient_relative_difference": rel,
        "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "orders": orders,
        "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "packed_attention.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
