import json
from pathlib import Path

import pytest

from verticalft.plan import (
    KNOWN_ARCHS,
    Arch,
    chinchilla_tokens,
    dpo_flops,
    gpu_hours,
    plan_recipe,
    training_flops,
    training_memory_gb,
)
from verticalft.pricing import GPUS
from verticalft.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "params, tokens, expected",
    [
        # Quoted training-compute figures (dense 7B–130B, DeepSeek V3): FLOPs ≈ 6·N·D.
        (7e9, 8e12, 3.4e23),
        (32e9, 7e12, 1.3e24),
        (80e9, 12e12, 5.8e24),
        (130e9, 9e12, 7.0e24),
        (37e9, 14.8e12, 3.3e24),  # DeepSeek V3, active parameters
    ],
)
def test_quoted_training_flops_follow_6nd(params, tokens, expected):
    assert training_flops(params, tokens) == pytest.approx(expected, rel=0.05)  # quoted to 2 digits


@pytest.mark.parametrize("params, tokens", [(7e9, 140e9), (32e9, 640e9), (70e9, 1.4e12), (405e9, 8.1e12)])
def test_chinchilla_tokens_are_20_per_parameter(params, tokens):
    assert chinchilla_tokens(params) == pytest.approx(tokens)


def test_llama_405b_reference_point():
    # Meta's Llama 3.1 report: 405B on 15.6T tokens took 30.84M H100-hours (≈ $60M at $2/hr) at ~38–41 % MFU.
    hours = gpu_hours(training_flops(405e9, 15.6e12), GPUS["h100-sxm"], mfu=0.35)
    assert hours == pytest.approx(30.84e6, rel=0.05)
    assert hours * 2.0 == pytest.approx(60e6, rel=0.06)


def test_lora_and_dpo_flops():
    assert training_flops(1e9, 1e9, "qlora") == pytest.approx(4e18)
    assert training_flops(1e9, 1e9, "full", checkpointing=True) == pytest.approx(8e18)
    assert dpo_flops(1e9, 1e9, "lora") == pytest.approx(6e18)


def test_known_architectures_match_their_names():
    assert KNOWN_ARCHS["Qwen/Qwen3-32B"].params == pytest.approx(32.8e9, rel=0.02)
    assert KNOWN_ARCHS["Qwen/Qwen2.5-7B-Instruct"].params == pytest.approx(7.6e9, rel=0.02)
    assert KNOWN_ARCHS["Qwen/Qwen2.5-14B-Instruct"].params == pytest.approx(14.7e9, rel=0.02)


def test_qlora_memory_is_far_below_full_and_32b_qlora_fits_one_h100():
    arch = KNOWN_ARCHS["Qwen/Qwen3-32B"]
    q = training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=1, checkpointing=True, lora_r=64)
    full = training_memory_gb(arch, "full", seq_len=2048, micro_batch=1, checkpointing=True)
    embed = 151936 * 5120 * 2  # input embedding + lm_head (untied), left in bf16 by bitsandbytes
    assert q["weights"] == pytest.approx(((arch.params - embed) * 4.127 / 8 + embed * 2) / 1e9, rel=1e-3)
    assert full["trainable_state"] == pytest.approx(arch.params * 16 / 1e9, rel=1e-3)
    assert q["total"] < 80 < full["total"]
    sharded = training_memory_gb(arch, "full", seq_len=2048, micro_batch=1, checkpointing=True, shards=64)
    assert sharded["trainable_state"] == pytest.approx(full["trainable_state"] / 64, rel=1e-3)


def test_qlora_keeps_embeddings_in_16_bit():
    # Qwen2.5-7B's 152,064 × 3,584 × 2 = 1.09B embedding parameters cost
    # 2.18 GB in bf16 instead of 0.56 GB in NF4: +1.6 GB
    arch = KNOWN_ARCHS["Qwen/Qwen2.5-7B-Instruct"]
    q = training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=1, checkpointing=True)["weights"]
    all_nf4 = arch.params * 4.127 / 8 / 1e9
    assert q - all_nf4 == pytest.approx(152064 * 3584 * 2 * (2 - 4.127 / 8) / 1e9, abs=1e-3)  # GB, 3 decimals
    assert 1.5 < q - all_nf4 < 1.7


def test_swiglu_activations_and_training_logits_by_hand():
    # h = 4096, I = 14336 (Llama-3.1-8B): (18 + 8 × 3.5) = 46 bytes per token per hidden unit per
    # layer; s·b = 2048 → 46 × 2048 × 4096 × 32 layers = 12.35 GB without checkpointing
    arch = KNOWN_ARCHS["meta-llama/Llama-3.1-8B-Instruct"]
    m = training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=1, checkpointing=False)
    assert m["activations"] == pytest.approx(46 * 2048 * 4096 * 32 / 1e9, rel=1e-3)
    # logits: 12 bytes × 2048 tokens × 128,256 vocabulary = 3.15 GB (was 4 bytes: 1.05 GB)
    assert m["logits"] == pytest.approx(12 * 2048 * 128256 / 1e9, rel=1e-3)


def test_mfu_per_method_defaults_and_overrides():
    from types import SimpleNamespace

    from verticalft.plan import mfu_for

    assert [mfu_for(SimpleNamespace(mfu=None), m) for m in ("full", "lora", "qlora", "inference (nf4)")] == [
        0.40, 0.35, 0.25, 0.30
    ]  # fmt: skip
    assert mfu_for(SimpleNamespace(mfu=0.5), "qlora") == 0.5
    assert mfu_for(SimpleNamespace(mfu={"qlora": 0.2}), "qlora") == 0.2
    assert mfu_for(SimpleNamespace(mfu={"qlora": 0.2}), "full") == 0.40
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    assert any(n.startswith("MFU: full 40%, lora 35%, qlora 25%, inference 30%") for n in plan.notes)


def test_activation_memory_grows_with_batch_and_shrinks_with_checkpointing():
    arch = Arch(4096, 32, 14336, 32, 8, 128, 128256)
    a = training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=1, checkpointing=False)["activations"]
    assert training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=2, checkpointing=False)[
        "activations"
    ] == pytest.approx(2 * a)
    assert (
        training_memory_gb(arch, "qlora", seq_len=2048, micro_batch=1, checkpointing=True)["activations"]
        < a / 5
    )


def test_plan_of_the_finance_recipe():
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    cpt, sft, dpo = plan.stages[:3]
    assert (cpt.method, sft.method) == ("full", "qlora")
    assert cpt.tokens == pytest.approx(2e12 / 0.9)  # 10 % replay on top of the domain corpus
    assert cpt.flops == pytest.approx(8 * cpt.params * cpt.tokens)  # checkpointing on
    # A commonly quoted range for CPT of a 32B–72B base is $100K–$2M.
    assert 1e5 < cpt.usd < 2e6
    assert sft.usd < 1000 and all(s.fits for s in plan.stages)


def test_plan_warns_when_the_gpu_is_too_small():
    r = load_recipe(ROOT / "recipes/finance.yaml", overrides=["compute.gpu=l40s", "compute.launcher=none"])
    plan = plan_recipe(r)
    assert not plan.stages[0].fits
    assert any(w.startswith("cpt: needs") and "l40s" in w for w in plan.warnings)


def test_plan_shows_teacher_and_student_memory_by_distill_kind():
    cached = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    online = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.distill.cache=false"]))
    rows = {s.stage: s for s in cached.stages}
    teacher = rows["distill: teacher top-k cache: sft"]
    student = next(s for name, s in rows.items() if name.startswith("distill: Qwen3-8B"))
    assert "teacher" not in student.memory and teacher.memory_gb_per_gpu > 15  # 32B in NF4 ≈ 17 GB
    online_student = next(s for s in online.stages if s.stage.startswith("distill: Qwen3-8B"))
    assert not any(s.stage.startswith("distill: teacher") for s in online.stages)
    assert online_student.memory["teacher"] == teacher.memory_gb_per_gpu
    assert online_student.memory_gb_per_gpu > student.memory_gb_per_gpu + 15
    assert online_student.flops > student.flops  # the teacher's forward on every step
    assert any("on_policy" in n and "logits+cache" in n for n in cached.notes)


def test_max_steps_decides_the_tokens_like_the_trainer_does():
    # transformers' Trainer ignores num_train_epochs when max_steps > 0. finance.yaml's SFT: micro
    # batch 4 × accumulation 8 × 64 GPUs (8 nodes × 8); its data file is planned (not on disk), so every
    # sequence counts at its max_length 4096.
    base = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    stepped = plan_recipe(
        load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.sft.trainer.max_steps=100"])
    )
    sft, sft_before = stepped.stages[1], base.stages[1]
    assert sft.stage == "sft" and sft.tokens == 100 * 4 * 8 * 64 * 4096
    assert sft.flops == pytest.approx(sft_before.flops * sft.tokens / sft_before.tokens)
    assert stepped.stages[0].tokens == base.stages[0].tokens  # CPT untouched


def test_max_steps_on_a_local_file_counts_its_mean_example_length(tmp_path):
    # 10 conversations of 400 bytes each: ~4 bytes/token → 100 tokens per example.
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join("x" * 399 + "\n" for _ in range(10)))
    recipe = load_recipe(
        ROOT / "recipes/finance.yaml",
        overrides=[
            f"data.sft.path={sft}",
            "data.sft.tokens=null",
            "stages.sft.trainer.max_steps=3",
            "stages.sft.trainer.per_device_train_batch_size=2",
            "stages.sft.trainer.gradient_accumulation_steps=5",
            "compute.nodes=1",
            "compute.gpus_per_node=1",
        ],
    )
    rows = {s.stage: s for s in plan_recipe(recipe).stages}
    assert rows["sft"].tokens == pytest.approx(3 * 2 * 5 * 1 * 100)


# Published QLoRA memory figures (cited), against the plan's estimate. The estimate leaves out the
# CUDA context and allocator slack (~0.5–1 GB), so it may sit somewhat below a measured peak.
LLAMA2_7B = Arch(4096, 32, 11008, 32, 32, 128, 32000)  # meta-llama/Llama-2-7b-hf config.json
LLAMA_65B = Arch(8192, 80, 22016, 64, 64, 128, 32000)  # huggyllama/llama-65b config.json


@pytest.mark.parametrize("seq,measured_gb", [(1024, 6), (2048, 7), (4096, 9), (8192, 12)])
def test_qlora_7b_memory_against_llama_factorys_measurements(seq, measured_gb):
    # LLaMA-Factory wiki, "Performance comparison" (https://github.com/hiyouga/LLaMA-Factory/wiki/Performance-comparison):
    # LLaMA2-7B, 4-bit, FlashAttention-2, batch 1, LoRA rank 8 on all modules, A100 40GB:
    # 6 / 7 / 9 / 12 GB at 1k / 2k / 4k / 8k tokens (LLaMA-Factory checkpoints activations by default).
    est = training_memory_gb(LLAMA2_7B, "qlora", seq_len=seq, micro_batch=1, checkpointing=True, lora_r=8)[
        "total"
    ]
    assert 0.75 * measured_gb < est < 1.1 * measured_gb


def test_qlora_65b_on_one_48gb_gpu():
    # QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314, abstract): QLoRA "reduces memory usage
    # enough to finetune a 65B parameter model on a single 48GB GPU" — LoRA r = 64 on all linear
    # layers, adapters in bf16 (2 B weight + 2 B grad + 8 B Adam = 12 B/param, where PEFT's default
    # fp32 adapters need 16), paged optimizers, gradient checkpointing.
    m = training_memory_gb(LLAMA_65B, "qlora", seq_len=512, micro_batch=1, checkpointing=True, lora_r=64)
    bf16_adapters = m["total"] - LLAMA_65B.lora_params(64) * (16 - 12) / 1e9
    assert (
        bf16_adapters < 48 < m["total"] + 2
    )  # fits with the paper's settings; ~at the limit with fp32 adapters
    assert m["weights"] > 30  # 65B in NF4 ≈ 34 GB: the bulk of it


# --------------------------------------------------------------------------- mixtures of experts
# config.json of Qwen/Qwen3-30B-A3B and mistralai/Mixtral-8x7B-v0.1 (the keys that size them)
QWEN3_30B_A3B = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "vocab_size": 151936, "tie_word_embeddings": False,
}  # fmt: skip
MIXTRAL_8X7B = {
    "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
    "num_local_experts": 8, "num_experts_per_tok": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 32000, "tie_word_embeddings": False,
}  # fmt: skip


def by_hand(h, layers, heads, kv, head_dim, vocab, experts, expert_width):
    """A MoE decoder counted from its tensors: q,o (h × heads·d), k,v (h × kv·d), router (h × E),
    E experts of gate/up/down (3 · h × I_e), two RMSNorms per block, final norm, untied embed + head."""
    attention, router, norms = 2 * h * heads * head_dim + 2 * h * kv * head_dim, h * experts, 2 * h
    return lambda counted: (
        layers * (attention + router + counted * 3 * h * expert_width + norms) + 2 * vocab * h + h
    )


def test_moe_total_and_active_parameters_by_hand():
    from verticalft.plan import arch_from_config

    # Qwen3-30B-A3B: attention 2048·4096·2 + 2048·512·2 = 18,874,368 per block; 128 experts of
    # 3·2048·768 = 4,718,592 each; router 2048·128; embed + head 2·151936·2048 = 622,329,856.
    qwen = by_hand(2048, 48, 32, 4, 128, 151936, 128, 768)
    assert qwen(128) == 30_532_110_336 and qwen(8) == 3_353_020_416
    arch = arch_from_config(QWEN3_30B_A3B)
    assert (arch.params, arch.active_params) == (qwen(128), qwen(8))
    assert arch.params == pytest.approx(30.5e9, rel=0.01)  # published: 30.5B total
    assert arch.active_params == pytest.approx(3.3e9, rel=0.02)  # published: 3.3B activated (rounded)
    # Mixtral-8x7B: 8 experts of 3·4096·14336, 2 per token, vocabulary 32000
    mixtral = by_hand(4096, 32, 32, 8, 128, 32000, 8, 14336)
    arch = arch_from_config(MIXTRAL_8X7B)
    assert (arch.params, arch.active_params) == (mixtral(8), mixtral(2))
    assert arch.params == pytest.approx(46.7e9, rel=0.01) and arch.active_params == pytest.approx(
        12.9e9, rel=0.01
    )


def test_a_moe_model_is_planned_with_total_memory_and_active_flops(tmp_path):
    folder = tmp_path / "qwen3-30b-a3b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_30B_A3B))
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml", overrides=[f"models.teacher={folder}"]))
    cpt, sft = plan.stages[0], plan.stages[1]
    total, active = 30_532_110_336, 3_353_020_416  # by hand above
    assert (cpt.params, cpt.active_params) == (total, active)
    assert cpt.flops == pytest.approx(8 * active * cpt.tokens)  # full CPT with checkpointing: 8·N_active·D
    assert cpt.memory["trainable_state"] == pytest.approx(total * 16 / 64 / 1e9, rel=1e-3)  # FSDP over 64
    # QLoRA: bitsandbytes quantizes nn.Linear only; the fused routed experts (48·128·3·2048·768) and
    # the untied embeddings stay bf16
    experts, embed = 48 * 128 * 3 * 2048 * 768, 2 * 151936 * 2048
    assert sft.memory["weights"] == pytest.approx(
        ((total - experts - embed) * 4.127 / 8 + (experts + embed) * 2) / 1e9, rel=1e-3
    )
    assert any("mixture of experts" in n for n in plan.notes)


def test_deepseek_latent_attention_is_said_not_sized(tmp_path):
    folder = tmp_path / "dsv3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN3_30B_A3B, "model_type": "deepseek_v3",
                                                    "kv_lora_rank": 512, "n_routed_experts": 256}))  # fmt: skip
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml", overrides=[f"models.teacher={folder}"]))
    assert plan.stages == [] and "latent attention" in plan.warnings[-1]


def test_plan_prices_each_distill_phase_and_its_cache_by_hand():
    # finance.yaml: a `domain` phase of 2e9 tokens of corpus+replay, then `task` on the SFT set
    # (2.5e7 planned tokens × num_train_epochs 2); QLoRA with gradient checkpointing: 4·N·D + 2·N·D.
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    rows = {s.stage: s for s in plan.stages}
    domain, task = (
        rows["distill: Qwen3-8B/domain (logits, cache)"],
        rows["distill: Qwen3-8B/task (logits, cache)"],
    )
    assert domain.tokens == 2e9 and domain.flops == pytest.approx(6 * domain.active_params * 2e9)
    assert task.tokens == 2.5e7 * 2 and task.flops == pytest.approx(6 * task.active_params * 5e7)
    # the teacher covers each phase input's distinct rows once: 2e9 document tokens (the corpus
    # holds far more), the 2.5e7 SFT tokens; a forward is 2·N·D
    docs, sft = rows["distill: teacher top-k cache: corpus+replay"], rows["distill: teacher top-k cache: sft"]
    assert (docs.tokens, sft.tokens) == (2e9, 2.5e7)
    assert docs.flops == pytest.approx(2 * docs.active_params * 2e9)
    # on disk: per target token 64 int32 ids (Qwen3's 151,669 ids > 65,536) + 64 fp16 + one fp32
    assert any("corpus+replay" in n and "on disk at most ~776.0 GB" in n for n in plan.notes)


def test_quantize_rows_count_two_calibration_forwards_and_the_gptq_hessians_by_hand():
    # finance.yaml: stages.export {schemes: [W8A8, FP8_DYNAMIC], calibration_samples: 512} and the
    # default calibration_max_length 1024 → 524,288 calibration tokens per model
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    rows = {s.stage: s for s in plan.stages}
    assert {"quantize: dpo W8A8", "quantize: Qwen3-8B W8A8", "quantize: Qwen3-14B W8A8"} <= set(rows)
    w8 = rows["quantize: Qwen3-8B W8A8"]
    tokens = 512 * 1024
    # Qwen3-8B: hidden 4096, 32 heads × 128, MLP 12288, 36 layers. Per layer the Hessians of
    # q, k, v, gate, up (4096²), o (4096²) and down (12288²): 6·4096² + 12288² elements
    per_layer = 6 * 4096**2 + 12288**2
    assert per_layer == 251_658_240
    assert w8.tokens == tokens and w8.method == "GPTQ + SmoothQuant"
    assert w8.flops == pytest.approx(4 * w8.active_params * tokens + 2 * per_layer * tokens * 36)
    assert w8.memory["GPTQ Hessians"] == pytest.approx(per_layer * 4 / 1e9, abs=1e-3)  # fp32
    fp8 = rows["quantize: Qwen3-8B FP8_DYNAMIC"]
    assert fp8.method == "data-free" and fp8.flops == 0 and fp8.tokens == 0
    assert any(n.startswith("quantize dpo: the bf16 model") for n in plan.notes)


def test_host_memory_per_node_of_the_weights_as_they_load_by_hand():
    plan = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml"))
    rows = {s.stage: s for s in plan.stages}
    # cpt: full-parameter under fsdp2 with cpu_ram_efficient_loading: local rank 0 alone holds
    # the fp32 masters (4 bytes × 32.8B); the other 7 ranks' empty tensors are never written
    assert rows["cpt"].host_gb_per_node == round(4 * rows["cpt"].params / 1e9, 1)
    assert rows["sft"].host_gb_per_node == 0.0  # QLoRA: quantized onto each GPU as it loads
    # LoRA under plain DDP: each of the 8 ranks reads the bf16 model on the host first
    ddp = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml", overrides=["stages.sft.quantization=none"]))
    sft = next(s for s in ddp.stages if s.stage == "sft")
    assert sft.host_gb_per_node == round(2 * sft.params * 8 / 1e9, 1)
    # one process (launcher none): no launch, no column
    one = plan_recipe(load_recipe(ROOT / "recipes/finance.yaml", overrides=["compute.launcher=none"]))
    assert next(s for s in one.stages if s.stage == "cpt").host_gb_per_node is None
