"""Our sft stage vs a bare TRL SFTTrainer script: same tiny model, data and settings, one process.

    .venv/bin/python benchmarks/bench_sft_overhead.py [--steps 40] [--rounds 2]

Reports (1) step-throughput ratio ours/bare from `trainer.train()` wall time (target ≥ 0.95:
the toolkit adds no cost; ours includes its checkpoint saves and TensorBoard logging);
(2) that both sides do the same work: their trainable parameters (names, counts, dtypes), the
diff of their resolved SFTConfigs (`to_dict`), and their per-step training losses, which must
agree within float noise (they once did not, and ours was faster for doing less); and
(3) packing efficiency of the batches our stage feeds the model: the fraction of non-padding
tokens in the input tensors (target ≥ 0.95) and how full the packed max_length bins are,
next to the same data unpacked (padded per batch) for contrast.
Like for like: both sides load the same 4-bit NF4 base with the same compute dtype and train their
LoRA adapters in that dtype (`--dtype`, default float32: on a CPU without AVX-512-BF16 bf16
matmuls are ~30x slower, which would measure the dtype, not the toolkit), with the same seed in a
round (training seed and held-out split) and the recipe's trainer block (gradient checkpointing
included: TRL's SFTConfig defaults it to on, the tiny recipe has it off). Rounds are interleaved and the order alternates (bare first in even rounds, ours first in
odd ones, recorded); the median is reported: the machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, results_header  # noqa: E402

# SFTConfig keys that only say where and how often a side writes (checkpoints, TensorBoard,
# token counting): they may differ; any other difference means the sides train differently.
BOOKKEEPING = {"output_dir", "save_strategy", "save_steps", "save_total_limit", "report_to"}
BOOKKEEPING |= {"include_num_input_tokens_seen", "disable_tqdm", "ddp_timeout"}


def trainable(model) -> dict:
    """Names, element counts and dtypes of the parameters the optimizer updates."""
    params = {
        n: [p.numel(), str(p.dtype).removeprefix("torch.")]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    dtypes: dict[str, int] = {}
    for count, dtype in params.values():
        dtypes[dtype] = dtypes.get(dtype, 0) + count
    return {
        "tensors": len(params),
        "elements": sum(c for c, _ in params.values()),
        "dtypes": dtypes,
        "params": params,
    }


def side_record(trainer, seconds: float, train_loss: float) -> dict:
    history = trainer.state.log_history
    return {
        "seconds": seconds,
        "train_loss": train_loss,
        "losses": [h["loss"] for h in history if "loss" in h],
        "grad_norms": [h["grad_norm"] for h in history if "grad_norm" in h],
        "trainable": trainable(trainer.model),
        "config": trainer.args.to_dict(),
    }


def bare_trl(
    model_path: str, recipe, steps: int, out: Path, seed: int, dtype_name: str, overrides: dict
) -> dict:
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
    ds = load_dataset("json", data_files=recipe.data.sft[0].path, split="train").select_columns(["messages"])
    # ours splits with the run's seed (compute.seed, set to `seed` in the round): so does this side
    split = ds.train_test_split(test_size=min(0.05, 200 / len(ds)), seed=seed)
    t = cfg.trainer
    settings = dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t.get("gradient_accumulation_steps", 1),
        learning_rate=t["learning_rate"],
        num_train_epochs=t["num_train_epochs"],
        gradient_checkpointing=t["gradient_checkpointing"],  # TRL's default is True; the recipe's False
        max_length=cfg.max_length,
        packing=True,
        assistant_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        bf16=False,
    )
    args = SFTConfig(**(settings | overrides))  # --bare-set: bisecting one setting at a time
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
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
    out = trainer.train()
    return side_record(trainer, time.perf_counter() - t0, out.training_loss)


@contextlib.contextmanager
def watching_train():
    """Hand out the trainer the stage trains (and what `trainer.train()` returned), by wrapping
    `train_and_measure` as `train_model` calls it; the stage runs unchanged."""
    import verticalft.stages.training as training

    seen: dict = {}
    real = training.train_and_measure

    def watch(trainer, ctx):
        seen["trainer"] = trainer
        seen["metrics"] = real(trainer, ctx)
        return seen["metrics"]

    training.train_and_measure = watch
    try:
        yield seen
    finally:
        training.train_and_measure = real


def ours(recipe_path: str, runs: Path, steps: int, seed: int) -> dict:
    from verticalft.pipeline import run_dir_for, run_recipe
    from verticalft.recipe import load_recipe

    r = load_recipe(
        recipe_path,
        "tiny",
        [
            f"stages.sft.trainer.max_steps={steps}",
            "stages.sft.trainer.logging_steps=1",  # a loss per step, as the bare side logs
            "evaluation.max_items=1",
            f"compute.seed={seed}",
        ],
    )
    rd = run_dir_for(r, "tiny", runs)
    with watching_train() as seen:
        run_recipe(r, rd, until="sft", only=["tiny_models", "sft"], echo=lambda s: None)
    m = seen["metrics"]
    return side_record(seen["trainer"], m["train_seconds"], m["train_loss"])


def compare(bare: dict, ours: dict) -> dict:
    """What differs between the sides' trainable parameters, resolved configs and losses."""
    tb, to = bare["trainable"], ours["trainable"]
    names_b, names_o = set(tb["params"]), set(to["params"])
    cb, co = bare["config"], ours["config"]
    config_diff = {k: [cb.get(k), co.get(k)] for k in sorted(cb.keys() | co.keys()) if cb.get(k) != co.get(k)}
    n = min(len(bare["losses"]), len(ours["losses"]))
    return {
        "trainable_same": tb["params"] == to["params"],
        "trainable_only_bare": sorted(names_b - names_o),
        "trainable_only_ours": sorted(names_o - names_b),
        "trainable_dtype_or_size_differs": sorted(
            k for k in names_b & names_o if tb["params"][k] != to["params"][k]
        ),
        "config_diff_bare_ours": {k: v for k, v in config_diff.items() if k != "output_dir"},
        "config_diff_beyond_bookkeeping": sorted(set(config_diff) - BOOKKEEPING),
        "max_abs_loss_diff": max(
            (abs(a - b) for a, b in zip(bare["losses"], ours["losses"], strict=True)), default=None
        ),
        "first_step_loss_differs": next(
            (i + 1 for i in range(n) if abs(bare["losses"][i] - ours["losses"][i]) > 1e-3), None
        ),
    }


def packing_stats(model_path: str, recipe, batches: int = 20) -> dict:
    """Non-padding fraction and bin fill of the batches the SFTTrainer builds, packed vs unpacked."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from verticalft.models import load_model

    tok = AutoTokenizer.from_pretrained(model_path)
    ds = load_dataset("json", data_files=recipe.data.sft[0].path, split="train").select_columns(["messages"])
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
    parser.add_argument("--out", default=str(RESULTS / "sft_overhead.json"))
    parser.add_argument(
        "--bare-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override one SFTConfig field of the bare side (bisecting), e.g. gradient_checkpointing=true",
    )
    a = parser.parse_args()
    load_before = os.getloadavg()
    overrides = {k: json.loads(v) for k, v in (x.split("=", 1) for x in a.bare_set)}
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
    rounds, orders = [], []
    for i in range(a.rounds):
        seed = 42 + i  # the same seed on both sides of a round
        order = ["bare", "ours"] if i % 2 == 0 else ["ours", "bare"]
        sides = {}
        for side in order:
            if side == "bare":
                sides[side] = bare_trl(
                    model_path, recipe, a.steps, work / f"bare{i}", seed, a.dtype, overrides
                )
            else:
                sides[side] = ours(a.recipe, work / f"ours{i}", a.steps, seed)
        orders.append(order)
        diff = compare(sides["bare"], sides["ours"])
        rounds.append({"seed": seed, **sides, "compare": diff})
        print(
            f"round {i} ({' then '.join(order)}): bare {sides['bare']['seconds']:.1f}s "
            f"loss {sides['bare']['train_loss']:.4f}, ours {sides['ours']['seconds']:.1f}s "
            f"loss {sides['ours']['train_loss']:.4f}; max |Δloss| {diff['max_abs_loss_diff']:.2g}, "
            f"first differing step {diff['first_step_loss_differs']}",
            file=sys.stderr,
        )
    first = rounds[0]
    for side in ("bare", "ours"):
        t = first[side]["trainable"]
        print(
            f"{side}: {t['tensors']} trainable tensors, {t['elements']:,} elements, {t['dtypes']}",
            file=sys.stderr,
        )
    c = first["compare"]
    print(
        f"trainable parameters identical (names, sizes, dtypes): {c['trainable_same']}"
        + (
            ""
            if c["trainable_same"]
            else f" (only bare {c['trainable_only_bare']}, only ours "
            f"{c['trainable_only_ours']}, differ {c['trainable_dtype_or_size_differs']})"
        ),
        file=sys.stderr,
    )
    print("resolved SFTConfig, bare vs ours (to_dict diff):", file=sys.stderr)
    for k, (b, o) in c["config_diff_bare_ours"].items():
        flag = "" if k in BOOKKEEPING else "   <-- not bookkeeping: the sides run differently"
        print(f"  {k}: {b!r} vs {o!r}{flag}", file=sys.stderr)
    bare_s = [r["bare"]["seconds"] for r in rounds]
    ours_s = [r["ours"]["seconds"] for r in rounds]
    bare_med, ours_med = statistics.median(bare_s), statistics.median(ours_s)

    def losses(side: str, key: str) -> list[float]:
        return [round(r[side][key], 4) for r in rounds]

    result = {
        **results_header("bench_sft_overhead.py", sys.argv[1:], load_before),
        "steps": a.steps,
        "rounds": a.rounds,
        "dtype": a.dtype,
        "bare_overrides": overrides,
        "order_per_round": orders,
        "bare_seconds": [round(x, 2) for x in bare_s],
        "ours_seconds": [round(x, 2) for x in ours_s],
        "bare_trl_steps_per_s": round(a.steps / bare_med, 3),
        "ours_steps_per_s": round(a.steps / ours_med, 3),
        "throughput_ratio_ours_over_bare": round(bare_med / ours_med, 3),
        "bare_train_loss_mean_per_round": losses("bare", "train_loss"),
        "ours_train_loss_mean_per_round": losses("ours", "train_loss"),
        "bare_final_loss_per_round": [round(r["bare"]["losses"][-1], 4) for r in rounds],
        "ours_final_loss_per_round": [round(r["ours"]["losses"][-1], 4) for r in rounds],
        "max_abs_loss_diff_per_round": [r["compare"]["max_abs_loss_diff"] for r in rounds],
        "same_work": all(
            r["compare"]["trainable_same"] and not r["compare"]["config_diff_beyond_bookkeeping"]
            for r in rounds
        ),
        "trainable": {
            side: {k: v for k, v in first[side]["trainable"].items() if k != "params"}
            for side in ("bare", "ours")
        },
        "trainable_params_bare": first["bare"]["trainable"]["params"],
        "config_diff_bare_ours": c["config_diff_bare_ours"],
        "per_round": [
            {
                "seed": r["seed"],
                "compare": {k: v for k, v in r["compare"].items() if k != "config_diff_bare_ours"},
                **{
                    side: {
                        "seconds": round(r[side]["seconds"], 2),
                        "train_loss": round(r[side]["train_loss"], 5),
                        "losses": [round(x, 5) for x in r[side]["losses"]],
                        "grad_norms": [round(x, 4) for x in r[side]["grad_norms"]],
                    }
                    for side in ("bare", "ours")
                },
            }
            for r in rounds
        ],
        "packing": packing_stats(model_path, recipe),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("per_round", "trainable_params_bare")}
    print(json.dumps(summary, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
