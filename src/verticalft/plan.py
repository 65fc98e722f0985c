"""What a recipe will cost before anything runs: tokens, FLOPs, GPU-hours, dollars, GPU memory.

Pure functions, no torch import. The formulas, so a reader can check them:

- Training FLOPs, dense transformer, per token: forward 2N, backward 4N (2N for activation
  gradients + 2N for weight gradients) → **6·N·D** for full training (Kaplan et al.; the seed's
  FLOPs table). **LoRA/QLoRA: 4·N·D** — the frozen base still runs forward (2N) and passes
  activation gradients back (2N), but computes no weight gradients; the adapters' own FLOPs are
  < 1 % and ignored. Gradient checkpointing recomputes the forward: **+2·N·D**.
- DPO: policy forward+backward on chosen *and* rejected (D counts both) plus a reference forward
  (2·N·D; with PEFT the reference is the base with the adapter off).
- GPU-hours = FLOPs / (peak bf16 dense FLOP/s × MFU) / 3600; dollars = GPU-hours × $/GPU-hour.
- MFU per method (`compute.mfu`, one number or per method): defaults full 0.40 (Llama 3 report:
  38–43 % BF16 MFU on H100 clusters), and — assumptions, not published figures — LoRA 0.35 (same
  matmuls, smaller optimizer step), QLoRA 0.25 (every matmul dequantizes NF4 weights first),
  inference 0.30 (teacher forward passes).
- Memory per GPU = weights (bf16 2 B/param; QLoRA: NF4 with double quantization 4.127 bit/param
  for the blocks, QLoRA paper, while bitsandbytes leaves embeddings and `lm_head` in 16 bit) +
  trainable state (16 B/param: bf16 weight and grad, fp32 master, Adam m and v; sharded over GPUs
  under FSDP/ZeRO-3) + activations (Korthikanti et al.'s 34·s·b·h bytes per layer is for a GELU
  MLP of 4h; with SwiGLU of intermediate I it is (18 + 8·I/h)·s·b·h — attention and norms 15,
  the MLP input 3, gate, up, their SiLU and product 2 bytes each per intermediate element; with
  checkpointing one layer's plus 2·s·b·h per layer) + logits (12 B per element when training:
  bf16 logits, their fp32 upcast, fp32 log-softmax and a bf16 gradient; 4 B at inference).
- Distillation, per student: its own training (6·N_s·D or 4·N_s·D) plus the teacher's work —
  a forward 2·N_t·D over the same tokens (online logits, the cache pass, on-policy scoring) or
  over the generated tokens (sequence). Memory per student depends on the kind: online logits
  and on_policy hold the teacher (inference weights + its fp32 logits) beside the student;
  `cache: true` and `sequence` never do (the teacher runs alone first, listed as its own row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verticalft.stage_names import MODEL_STAGES

NF4_BYTES_PER_PARAM = 4.127 / 8
TRAINABLE_STATE_BYTES = 16
TRAIN_LOGIT_BYTES = 12  # bf16 logits 2 + fp32 upcast 4 + fp32 log-softmax 4 + bf16 gradient 2
MFU_DEFAULTS = {"full": 0.40, "lora": 0.35, "qlora": 0.25, "inference": 0.30}


def mfu_for(compute: Any, method: str) -> float:
    """The recipe's `compute.mfu` for a method (`full`, `lora`, `qlora`, `inference`): one number
    for all, a per-method table, or the defaults above."""
    key = "inference" if method.startswith("inference") else method
    given = getattr(compute, "mfu", None)
    if isinstance(given, int | float):
        return float(given)
    return float((given or {}).get(key) or MFU_DEFAULTS[key])


CHINCHILLA_TOKENS_PER_PARAM = 20


@dataclass(frozen=True)
class Gpu:
    name: str
    vram_gb: float
    bf16_tflops: float  # dense peak
    usd_per_hour: float  # the seed's cloud price range, mid-point
    mem_bandwidth_tbs: float


# Cloud $/hr: the seed's GPU table (004_*.txt), mid-point of its range; L40S from its $1,620/month.
GPUS: dict[str, Gpu] = {
    "a100-80gb": Gpu("a100-80gb", 80, 312, 1.75, 2.0),
    "h100-sxm": Gpu("h100-sxm", 80, 989, 2.5, 3.35),
    "h200": Gpu("h200", 141, 989, 3.65, 4.8),
    "b200": Gpu("b200", 192, 2250, 5.0, 8.0),
    "l40s": Gpu("l40s", 48, 362, 2.25, 0.864),
    "cpu": Gpu("cpu", 24, 0.2, 0.10, 0.05),  # a 2-core CI runner: say so, do not pretend
}


@dataclass(frozen=True)
class Arch:
    """The dimensions that decide parameters, FLOPs and memory."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @property
    def params(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden

    @property
    def embedding_params(self) -> int:
        """Input embedding + `lm_head` (one matrix when tied): kept in 16 bit under QLoRA."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int) -> int:
        """LoRA on every linear layer of every block (`all-linear`): r·(in + out) each."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = r * (
            (self.hidden + q) * 2 + (self.hidden + kv) * 2 + (self.hidden + self.intermediate) * 3
        )
        return self.layers * per_layer


# Known checkpoints (from their config.json), so planning works before anything is downloaded.
KNOWN_ARCHS: dict[str, Arch] = {
    "Qwen/Qwen3-32B": Arch(5120, 64, 25600, 64, 8, 128, 151936),
    "Qwen/Qwen3-14B": Arch(5120, 40, 17408, 40, 8, 128, 151936),
    "Qwen/Qwen3-8B": Arch(4096, 36, 12288, 32, 8, 128, 151936),
    "Qwen/Qwen2.5-7B-Instruct": Arch(3584, 28, 18944, 28, 4, 128, 152064),
    "Qwen/Qwen2.5-14B-Instruct": Arch(5120, 48, 13824, 40, 8, 128, 152064),
    "Qwen/Qwen2.5-32B-Instruct": Arch(5120, 64, 27648, 40, 8, 128, 152064),
    "meta-llama/Llama-3.1-8B-Instruct": Arch(4096, 32, 14336, 32, 8, 128, 128256),
    "meta-llama/Llama-3.1-70B-Instruct": Arch(8192, 80, 28672, 64, 8, 128, 128256),
}


def arch_from_config(cfg: dict[str, Any]) -> Arch:
    heads = cfg["num_attention_heads"]
    return Arch(
        hidden=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        intermediate=cfg["intermediate_size"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        vocab=cfg["vocab_size"],
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )


# --------------------------------------------------------------------------- pure formulas
def chinchilla_tokens(params: float) -> float:
    return CHINCHILLA_TOKENS_PER_PARAM * params


def training_flops(params: float, tokens: float, method: str = "full", checkpointing: bool = False) -> float:
    """full: 6·N·D; lora/qlora: 4·N·D; +2·N·D when activations are recomputed."""
    per_token = {"full": 6.0, "lora": 4.0, "qlora": 4.0}[method] + (2.0 if checkpointing else 0.0)
    return per_token * params * tokens


def dpo_flops(params: float, tokens: float, method: str = "lora", checkpointing: bool = False) -> float:
    """Policy training on chosen+rejected tokens plus one reference forward (2·N·D)."""
    return training_flops(params, tokens, method, checkpointing) + 2.0 * params * tokens


def gpu_hours(flops: float, gpu: Gpu, mfu: float) -> float:
    return flops / (gpu.bf16_tflops * 1e12 * mfu) / 3600.0


def training_memory_gb(
    arch: Arch,
    method: str,
    seq_len: int,
    micro_batch: int,
    checkpointing: bool,
    lora_r: int = 16,
    shards: int = 1,
    sequences_per_example: int = 1,
) -> dict[str, float]:
    """GPU memory per device for one training stage, by component (GB = 1e9 bytes)."""
    n = arch.params
    if method == "full":
        weights = 0.0  # counted in the trainable state (bf16 weight is part of the 16 B)
        trainable = n * TRAINABLE_STATE_BYTES / shards
    else:
        weights = _frozen_weight_bytes(arch, "nf4" if method == "qlora" else "none")
        trainable = arch.lora_params(lora_r) * TRAINABLE_STATE_BYTES
    tokens = seq_len * micro_batch * sequences_per_example
    per_layer = (18.0 + 8.0 * arch.intermediate / arch.hidden) * tokens * arch.hidden
    activations = (
        (per_layer + 2.0 * tokens * arch.hidden * arch.layers) if checkpointing else per_layer * arch.layers
    )
    logits = TRAIN_LOGIT_BYTES * tokens * arch.vocab
    parts = {"weights": weights, "trainable_state": trainable, "activations": activations, "logits": logits}
    out = {k: round(v / 1e9, 3) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / 1e9, 3)
    return out


# --------------------------------------------------------------------------- the recipe plan
def _breakdown(mem: dict[str, float]) -> str:
    """`weights 17.0, activations 3.2, …` for a warning: the parts of a memory estimate."""
    return ", ".join(f"{k} {v:.1f}" for k, v in mem.items() if k != "total")


def _frozen_weight_bytes(arch: Arch, quantization: str) -> float:
    """A frozen model's weights: 16 bit, or 4-bit blocks with 16-bit embeddings and `lm_head`
    (bitsandbytes quantizes the linear layers of the blocks only)."""
    if quantization not in ("nf4", "fp4"):
        return arch.params * 2.0
    return (arch.params - arch.embedding_params) * NF4_BYTES_PER_PARAM + arch.embedding_params * 2.0


def inference_memory_gb(arch: Arch, quantization: str, seq_len: int, micro_batch: int) -> float:
    """A frozen model that only runs forward: weights + its fp32 logits for one micro-batch."""
    weights = _frozen_weight_bytes(arch, quantization)
    return round((weights + 4.0 * seq_len * micro_batch * arch.vocab) / 1e9, 3)


@dataclass
class StagePlan:
    stage: str
    model: str
    params: int
    method: str
    tokens: float
    flops: float
    gpu_hours: float
    usd: float
    memory: dict[str, float]
    memory_gb_per_gpu: float
    fits: bool


@dataclass
class Plan:
    gpu: Gpu
    usd_per_gpu_hour: float
    stages: list[StagePlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def total_usd(self) -> float:
        return sum(s.usd for s in self.stages)


def resolve_arch(ref: str, tiny_vocab: int = 2048, tiny_specs: dict[str, Any] | None = None) -> Arch | None:
    """Architecture of a model reference: local folder, tiny spec, GGUF header, or the known-checkpoint table.

    (A GGUF header is read with transformers' reader, which imports torch: only for GGUF refs.)
    """
    from verticalft import gguf_source
    from verticalft.models import DEFAULT_TINY_SPECS, HEAD_DIM, is_tiny, tiny_name

    if gguf_source.is_gguf(ref):
        try:
            return arch_from_config(gguf_source.gguf_info(ref).config())
        except (gguf_source.GgufError, KeyError, TypeError):  # validation reports why
            return None

    if is_tiny(ref):
        spec = {**DEFAULT_TINY_SPECS, **(tiny_specs or {})}.get(tiny_name(ref))
        if spec is None:
            return None
        h = spec["hidden_size"]
        return Arch(
            h,
            spec["num_hidden_layers"],
            spec["intermediate_size"],
            h // HEAD_DIM,
            spec.get("num_key_value_heads") or h // HEAD_DIM,
            HEAD_DIM,
            tiny_vocab,
        )
    cfg = Path(ref) / "config.json"
    if cfg.is_file():
        return arch_from_config(json.loads(cfg.read_text()))
    return KNOWN_ARCHS.get(ref)


def teacher_layers(recipe: Any) -> int | None:
    """Layer count of the model a `prune://teacher` student is cut from, when readable without loading it.

    CPT/SFT/DPO keep the architecture, so the recipe's teacher (or `stages.distill.teacher.model`)
    has the same layers as the trained model the distill stage actually prunes.
    """
    distill = recipe.stages.distill
    ref = (distill.teacher.model if distill else None) or recipe.models.teacher
    specs = {k: v.model_dump() for k, v in recipe.tiny.specs.items()}
    arch = resolve_arch(ref, recipe.tiny.vocab_size, specs)
    return arch.layers if arch else None


def pruned_arch(ref: str, teacher: Arch | None) -> Arch | None:
    """A `prune://teacher?layers=N` student: the teacher with N of its blocks. Embeddings, head and
    final norm stay, and `Arch.params` counts attention + MLP + norms per block, so the parameters
    of the removed blocks are exactly what drops out."""
    import dataclasses

    from verticalft.pruning import parse_prune

    try:
        layers = parse_prune(ref).layers
    except ValueError:
        return None
    return dataclasses.replace(teacher, layers=layers) if teacher and layers < teacher.layers else None


def source_tokens(source: Any) -> float:
    """Declared `tokens`, else ~4 bytes per token of the local file, else 0; for a set given as a
    list of sources, their sum, each times its `weight` (what training sees, data.weighted)."""
    if source is None:
        return 0.0
    if isinstance(source, list):
        return sum(getattr(s, "weight", 1.0) * source_tokens(s) for s in source)
    if source.tokens is not None:
        return float(source.tokens)
    path = Path(source.path)
    return path.stat().st_size / 4.0 if path.is_file() else 0.0


def source_examples(source: Any) -> int | None:
    """Rows of a local JSONL source (one example per line), None when it is not a local file; for a
    list of sources, the weighted total (`data.weighted_rows`), None if any is unknown."""
    from verticalft.data import weighted_rows

    if isinstance(source, list):
        counts = [source_examples(s) for s in source]
        if any(c is None for c in counts):
            return None
        return sum(weighted_rows(c, getattr(s, "weight", 1.0)) for c, s in zip(counts, source, strict=True))
    if source is None or not Path(source.path).is_file():
        return None
    with open(source.path, "rb") as f:
        return sum(1 for line in f if line.strip())


def trained_tokens(
    trainer: dict[str, Any], data_tokens: float, examples: int | None, max_length: int, world: int
) -> float:
    """Tokens one training run processes.

    transformers' Trainer runs `max_steps` optimizer steps when it is > 0 and then ignores
    `num_train_epochs`; otherwise it makes `num_train_epochs` passes over the data. A step sees
    micro batch × accumulation × data-parallel ranks sequences of at most `max_length` tokens:
    the data's mean length when its number of examples is known, else `max_length` (packed CPT
    blocks fill it).
    """
    steps = int(trainer.get("max_steps", -1))
    if steps <= 0:
        return data_tokens * float(trainer.get("num_train_epochs", 1))
    sequences = (
        steps
        * int(trainer.get("per_device_train_batch_size", 8))
        * int(trainer.get("gradient_accumulation_steps", 1))
        * world
    )
    mean = min(float(max_length), data_tokens / examples) if examples else float(max_length)
    return sequences * mean


def plan_recipe(recipe: Any) -> Plan:
    c = recipe.compute
    gpu = GPUS.get(c.gpu)
    if gpu is None:
        raise ValueError(f"unknown GPU '{c.gpu}'; known: {', '.join(GPUS)}")
    price = recipe.cost.usd_per_gpu_hour or gpu.usd_per_hour
    plan = Plan(gpu=gpu, usd_per_gpu_hour=price)
    from verticalft.launch import launch_warnings, stage_shards_weights

    plan.warnings += launch_warnings(recipe)
    specs = {k: v.model_dump() for k, v in recipe.tiny.specs.items()}
    arch = resolve_arch(recipe.models.teacher, recipe.tiny.vocab_size, specs)
    if arch is None:
        plan.warnings.append(
            f"size of {recipe.models.teacher} unknown: give a local path or add it to plan.KNOWN_ARCHS"
        )
        return plan
    plan.notes.append(
        "FLOPs: 6·N·D full, 4·N·D LoRA/QLoRA (+2·N·D with gradient checkpointing); "
        "DPO adds a reference forward 2·N·D"
    )
    plan.notes.append(
        "MFU: " + ", ".join(f"{m} {mfu_for(c, m):.0%}" for m in MFU_DEFAULTS)
        + (" (the recipe's compute.mfu)" if isinstance(c.mfu, int | float) else
           " (defaults: full from the Llama 3 report's 38–43 %; the others assumed — set compute.mfu)")
    )  # fmt: skip
    if c.launcher == "accelerate":
        from verticalft.launch import stage_accelerate_choice

        plan.notes.append(
            "launch: "
            + ", ".join(
                f"{s} {stage_accelerate_choice(recipe, s)}"
                + (f" (weights sharded over {c.world_size})" if stage_shards_weights(recipe, s) else "")
                for s in ("cpt", "sft", "dpo", "distill")
                if getattr(recipe.stages, s) is not None
            )
            + f"; barriers wait up to compute.timeout_minutes={c.timeout_minutes:g}"
        )
    d = recipe.data
    for stage in MODEL_STAGES:
        cfg = getattr(recipe.stages, stage)
        if cfg is None:
            continue
        t = cfg.trainer
        ckpt = bool(t.get("gradient_checkpointing", False))
        micro = int(t.get("per_device_train_batch_size", 8))
        if stage == "cpt":
            method = cfg.method
            domain = sum(source_tokens(s) for s in d.corpus)
            ratio = d.replay.ratio if d.replay else 0.0
            tokens = trained_tokens(t, domain / (1.0 - ratio), None, cfg.max_length, c.training_gpus)
        else:
            method = "qlora" if cfg.quantization != "none" else "lora"
            source = d.sft if stage == "sft" else d.preferences
            examples = source_examples(source)
            tokens = trained_tokens(t, source_tokens(source), examples, cfg.max_length, c.training_gpus)
        lora_r = cfg.lora.r
        shards = c.world_size if stage_shards_weights(recipe, stage) else 1
        if stage == "dpo":
            flops = dpo_flops(arch.params, tokens, "lora" if method != "full" else "full", ckpt)
        else:
            flops = training_flops(arch.params, tokens, method, ckpt)
        hours = gpu_hours(flops, gpu, mfu_for(c, method))
        mem = training_memory_gb(
            arch,
            method,
            cfg.max_length,
            micro,
            ckpt,
            lora_r,
            shards if method == "full" else 1,
            2 if stage == "dpo" else 1,
        )
        fits = mem["total"] <= gpu.vram_gb * 0.95
        plan.stages.append(
            StagePlan(
                stage,
                recipe.models.teacher,
                arch.params,
                method,
                tokens,
                flops,
                hours,
                hours * price,
                mem,
                mem["total"],
                fits,
            )
        )
        if not fits:
            plan.warnings.append(
                f"{stage}: needs ~{mem['total']:.1f} GB per GPU ({_breakdown(mem)}) "
                f"but {gpu.name} has {gpu.vram_gb:.0f} GB — lower per_device_train_batch_size or max_length, "
                f"enable gradient_checkpointing, use QLoRA, or shard with accelerate_config fsdp2 over more GPUs"
            )
        if tokens == 0:
            plan.warnings.append(f"{stage}: no token count (declare `tokens:` on its data source)")
    if recipe.stages.distill is not None:
        plan_distill(recipe, arch, gpu, price, plan, specs)
    return plan


def plan_distill(
    recipe: Any, teacher: Arch, gpu: Gpu, price: float, plan: Plan, specs: dict[str, Any]
) -> None:
    """One row for the teacher pass (cache / generation) and one per student, memory by kind."""
    cfg, c = recipe.stages.distill, recipe.compute
    t = cfg.trainer
    ckpt = bool(t.get("gradient_checkpointing", False))
    micro = int(t.get("per_device_train_batch_size", 8))
    # The teacher sees each (first `max_examples`) conversation once; students train on them as
    # their trainer block says (epochs or max_steps).
    tokens, examples = source_tokens(recipe.data.sft), source_examples(recipe.data.sft)
    if cfg.max_examples and examples and cfg.max_examples < examples:
        tokens, examples = tokens * cfg.max_examples / examples, cfg.max_examples
    trained = trained_tokens(t, tokens, examples, cfg.max_length, c.training_gpus)
    teacher_mem = inference_memory_gb(teacher, cfg.teacher.quantization, cfg.max_length, micro)
    beside = cfg.kind == "on_policy" or (cfg.kind == "logits" and not cfg.cache)
    if not beside:
        what = "top-k cache" if cfg.kind == "logits" else "generation"
        flops = 2.0 * teacher.params * tokens
        hours = gpu_hours(flops, gpu, mfu_for(c, "inference"))
        ranks = c.training_gpus if cfg.kind == "logits" else 1  # the cache is built in parts by every rank
        wall_min = hours * 60 / ranks
        plan.notes.append(
            f"distill: the teacher {what} takes {hours:.2f} GPU-hours, "
            + (f"built in parts by each of the {ranks} ranks (its own teacher copy): " if ranks > 1 else "")
            + f"~{wall_min:.1f} min wall"
        )
        if wall_min > c.timeout_minutes:
            plan.warnings.append(
                f"distill: the teacher {what} (~{wall_min:.0f} min on {'each rank' if ranks > 1 else 'one GPU'}) "
                f"is longer than compute.timeout_minutes={c.timeout_minutes:g}: the other ranks would time out "
                "waiting; raise compute.timeout_minutes"
            )
        plan.stages.append(
            StagePlan(
                f"distill: teacher {what}",
                cfg.teacher.model or recipe.models.teacher,
                teacher.params,
                f"inference ({cfg.teacher.quantization})",
                tokens,
                flops,
                hours,
                hours * price,
                {"teacher": teacher_mem},
                teacher_mem,
                teacher_mem <= gpu.vram_gb * 0.95,
            )
        )
    from verticalft.pruning import is_prune, prune_name

    cut_from = (
        resolve_arch(cfg.teacher.model, recipe.tiny.vocab_size, specs) if cfg.teacher.model else teacher
    )
    for ref in cfg.students or recipe.models.students:
        if is_prune(ref):
            arch, name = pruned_arch(ref, cut_from), prune_name(ref)
        else:
            arch, name = resolve_arch(ref, recipe.tiny.vocab_size, specs), ref.split("/")[-1]
        if arch is None:
            plan.warnings.append(
                f"distill: size of student {ref} unknown: give a local path or add it to plan.KNOWN_ARCHS"
            )
            continue
        mem = training_memory_gb(arch, cfg.method, cfg.max_length, micro, ckpt, cfg.lora.r)
        alone, both = mem["total"], round(mem["total"] + teacher_mem, 1)
        plan.notes.append(
            f"distill memory per GPU for {name} by kind — logits+cache: teacher {teacher_mem:.1f} GB, "
            f"then student {alone:.1f} GB; logits online: {both} GB; sequence: teacher {teacher_mem:.1f} GB "
            f"(generation; vLLM adds KV cache), then {alone:.1f} GB; on_policy: {both} GB"
        )
        if beside:
            mem = {**mem, "teacher": teacher_mem, "total": round(mem["total"] + teacher_mem, 3)}
        flops = training_flops(arch.params, trained, cfg.method, ckpt)
        if beside:
            flops += 2.0 * teacher.params * trained
        hours = gpu_hours(flops, gpu, mfu_for(c, cfg.method))
        fits = mem["total"] <= gpu.vram_gb * 0.95
        plan.stages.append(
            StagePlan(
                f"distill: {name} ({cfg.kind}{', cache' if cfg.kind == 'logits' and cfg.cache else ''})",
                ref,
                arch.params,
                cfg.method,
                trained,
                flops,
                hours,
                hours * price,
                mem,
                mem["total"],
                fits,
            )
        )
        if not fits:
            plan.warnings.append(
                f"distill {ref}: needs ~{mem['total']:.1f} GB ({_breakdown(mem)}) "
                f"but {gpu.name} has {gpu.vram_gb:.0f} GB — use cache: true (teacher not in memory), "
                "teacher.quantization: nf4, method: qlora, or a smaller max_length / batch"
            )
    plan.notes.append(
        "distill memory: "
        + (
            "the teacher sits beside each student"
            if beside
            else "the teacher runs alone first; students train without it"
        )
    )
