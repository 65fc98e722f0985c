"""The sft stage trains what a bare TRL script trains on the same data and settings.

The reference is TRL alone: an `SFTTrainer` a user writes from the resolved recipe (the same tiny
teacher, 4-bit NF4 base, LoRA + `modules_to_save`, packing, assistant-only loss, split, seed). The
stage runs as a user runs it (`run_recipe`, with its quick eval before training); its per-step
losses must be the bare script's within float noise. Before the fix they were not: on a CPU with
AVX-512-BF16 the quick eval left bitsandbytes' 4-bit weights in an inference-only layout with no
backward, and the losses parted from step 3 (6.404 bare vs 6.590 ours).
"""

import pytest
import torch

from verticalft.pipeline import run_dir_for, run_recipe
from verticalft.recipe import load_recipe

pytestmark = pytest.mark.slow

STEPS = 6
# Keys that only say where and how often the stage writes (checkpoints, TensorBoard, token count).
BOOKKEEPING = {"output_dir", "save_strategy", "save_steps", "save_total_limit", "report_to"}
BOOKKEEPING |= {"include_num_input_tokens_seen", "ddp_timeout"}  # ddp_timeout: compute.timeout_minutes


def bare_trl(model_path: str, recipe, out) -> tuple[list[float], dict]:
    """A bare TRL run from the resolved recipe: (per-step losses, the SFTConfig as a dict)."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cfg, t = recipe.stages.sft, recipe.stages.sft.trainer
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=torch.float32,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quantization,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        ),
    )
    ds = load_dataset("json", data_files=recipe.data.sft[0].path, split="train").select_columns(["messages"])
    ds = ds.train_test_split(test_size=min(0.05, 200 / len(ds)), seed=recipe.compute.seed)
    args = SFTConfig(
        output_dir=str(out),
        max_steps=STEPS,
        num_train_epochs=t["num_train_epochs"],
        per_device_train_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"],
        gradient_checkpointing=t["gradient_checkpointing"],
        bf16=t["bf16"],
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        max_length=cfg.max_length,
        packing=cfg.packing,
        assistant_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=recipe.compute.seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds["train"],
        eval_dataset=ds["test"],
        processing_class=tok,
        peft_config=LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            modules_to_save=list(cfg.lora.modules_to_save),
            task_type="CAUSAL_LM",
        ),
    )
    for p in trainer.model.parameters():  # TRL makes QLoRA adapters bf16; fp32 on this CPU, as the stage
        if p.requires_grad:
            p.data = p.data.float()
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], args.to_dict()


def test_sft_stage_trains_the_same_steps_as_bare_trl(tmp_path):
    recipe = load_recipe(
        "recipes/finance.yaml",
        "tiny",
        [
            f"stages.sft.trainer.max_steps={STEPS}",
            "stages.sft.trainer.logging_steps=1",
            "stages.sft.trainer.disable_tqdm=true",
            "stages.sft.merge=false",
            "evaluation.max_items=1",  # the quick eval before training must run: it set the bug off
        ],
    )
    run = run_dir_for(recipe, "tiny", tmp_path / "runs")
    run_recipe(recipe, run, until="sft", only=["tiny_models", "sft"], echo=lambda s: None)
    sft = run.record("sft")
    ours = [p["loss"] for p in sft.metrics["loss_curve"]]
    ours_args = torch.load(f"{sft.outputs['adapter']}/training_args.bin", weights_only=False).to_dict()

    bare, bare_args = bare_trl(run.output("tiny_models", "teacher"), recipe, tmp_path / "bare")

    differing = {k for k in bare_args.keys() | ours_args.keys() if bare_args.get(k) != ours_args.get(k)}
    assert differing <= BOOKKEEPING, {
        k: (bare_args.get(k), ours_args.get(k)) for k in differing - BOOKKEEPING
    }
    assert len(ours) == len(bare) == STEPS
    assert ours == pytest.approx(bare, abs=1e-3), f"ours {ours}\nbare {bare}"
