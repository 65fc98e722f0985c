"""What a recipe will cost before anything runs: tokens, FLOPs, GPU-hours, dollars, GPU memory.

Pure functions, no torch import (except to read a model class's default `tie_word_embeddings`
when a config.json leaves it out). The formulas, so a reader can check them:

- Parameters from the model's config.json (`arch_from_config`). Mixture of experts: N in every
  FLOPs formula below is the *active* count (attention, router, the `experts_per_token` routed
  experts and any shared expert, embeddings), while memory (weights, optimizer state, a teacher
  held for inference) counts *all* experts.

- Training FLOPs, dense transformer, per token: forward 2N, backward 4N (2N for activation
  gradients + 2N for weight gradients) → **6·N·D** for full training (Kaplan et al.).
  **LoRA/QLoRA: 4·N·D** — the frozen base still runs forward (2N) and passes activation
  gradients back (2N), but computes no weight gradients; the adapters' own FLOPs are < 1 % and
  ignored. Gradient checkpointing recomputes the forward: **+2·N·D**.
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verticalft.pricing import Gpu, gpu_and_price
from verticalft.stages import registry

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
class Arch:
    """The dimensions that decide parameters, FLOPs and memory.

    Mixture-of-experts blocks (`experts` > 0) replace the dense MLP of `intermediate` with a router
    (hidden × experts), `experts` routed MLPs of `expert_intermediate`, of which each token uses
    `experts_per_token`, and optionally one shared MLP of `shared_intermediate` with its gate
    (Qwen2-MoE). `dense_layers` of the `layers` keep a dense MLP (Qwen's `mlp_only_layers`).
    Every parameter is held in memory (`params`: weights, optimizer state, serving), but a token
    only runs through `active_params` (FLOPs, GPU-hours): Qwen3-30B-A3B holds 30.5B and runs 3.3B.
    """

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0
    dense_layers: int = 0

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.is_moe else 0

    def _attention(self) -> int:
        return self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2

    def _moe_mlp(self, experts: int) -> int:
        """One MoE block's MLP with `experts` routed experts counted: router, experts, shared expert + gate."""
        h = self.hidden
        shared = 3 * h * self.shared_intermediate + h if self.shared_intermediate else 0
        return h * self.experts + experts * 3 * h * self.expert_intermediate + shared

    def _count(self, experts: int) -> int:
        dense_layers = self.layers - self.moe_layers
        blocks = (
            self.layers * (self._attention() + 2 * self.hidden)
            + dense_layers * 3 * self.hidden * self.intermediate
        )
        blocks += self.moe_layers * self._moe_mlp(experts)
        return self.embedding_params + blocks + self.hidden

    @property
    def params(self) -> int:
        """Every parameter: what weights, gradients, optimizer state and serving hold."""
        return self._count(self.experts)

    @property
    def active_params(self) -> int:
        """The parameters one token runs through (all of them for a dense model): what FLOPs count."""
        return self._count(self.experts_per_token) if self.is_moe else self.params

    @property
    def routed_expert_params(self) -> int:
        """The routed experts' weights. transformers 5 stores each MoE block's experts as fused 3-D
        parameters (`gate_up_proj`, `down_proj`), not `nn.Linear`: bitsandbytes leaves them in 16 bit
        and LoRA's `all-linear` does not reach them."""
        return self.moe_layers * self.experts * 3 * self.hidden * self.expert_intermediate

    @property
    def mlp_width(self) -> float:
        """The MLP width one token's activations go through, averaged over blocks: `intermediate`
        for a dense model, experts_per_token × expert_intermediate + shared_intermediate for MoE."""
        if not self.is_moe:
            return float(self.intermediate)
        moe = self.experts_per_token * self.expert_intermediate + self.shared_intermediate
        return (self.dense_layers * self.intermediate + self.moe_layers * moe) / self.layers

    @property
    def embedding_params(self) -> int:
        """Input embedding + `lm_head` (one matrix when tied): kept in 16 bit under QLoRA."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int) -> int:
        """LoRA on every `nn.Linear` of every block (`all-linear`): r·(in + out) each — attention,
        dense MLPs, a shared expert and its gate; not the fused routed experts (`routed_expert_params`)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        h = self.hidden
        attention = r * ((h + q) * 2 + (h + kv) * 2)
        dense = r * (h + self.intermediate) * 3
        shared = r * ((h + self.shared_intermediate) * 3 + h + 1) if self.shared_intermediate else 0
        return self.layers * attention + (self.layers - self.moe_layers) * dense + self.moe_layers * shared


# Known checkpoints (from their config.json): the offline fallback for the shipped recipes' models
# (and a few common ones), so `plan` works on a machine that has neither the Hub nor the HF cache.
# Online or cached, the model's own config.json is read instead (`arch_lookup`).
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


class UnsizedArch(ValueError):
    """A config.json whose architecture `Arch` cannot size; the message says what is missing."""


def _tied_default(cfg: dict[str, Any]) -> bool:
    """`tie_word_embeddings` when config.json leaves it out: the model class's default (Gemma ties,
    Llama does not), read from transformers' config class only then (importing it costs seconds)."""
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return False
    return bool(getattr(CONFIG_MAPPING[model_type](), "tie_word_embeddings", False))


def arch_from_config(cfg: dict[str, Any]) -> Arch:
    """An `Arch` from a config.json (the text model's part of a multimodal one). Sized: dense
    decoders and the MoE layouts of Qwen2/Qwen3-MoE (`num_experts`, `moe_intermediate_size`,
    `shared_expert_intermediate_size`, `mlp_only_layers`, `decoder_sparse_step`) and Mixtral
    (`num_local_experts`, experts of `intermediate_size`). DeepSeek-V2/V3's multi-head latent
    attention has other projections: UnsizedArch."""
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {"model_type": cfg.get("model_type"), **cfg["text_config"]}
    if "kv_lora_rank" in cfg or "n_routed_experts" in cfg:
        raise UnsizedArch(
            f"{cfg.get('model_type', 'this')} model: multi-head latent attention (DeepSeek-V2/V3 style) is not "
            "sized by plan"
        )
    try:
        heads = cfg["num_attention_heads"]
        hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        dense = dict(
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            vocab=cfg["vocab_size"],
        )
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        if not experts:
            return Arch(intermediate=cfg["intermediate_size"], tied=_tied_default(cfg), **dense)
        moe_intermediate = (
            cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
        )  # Mixtral: the experts'
        step = cfg.get("decoder_sparse_step") or 1
        only_mlp = set(cfg.get("mlp_only_layers") or [])
        dense_layers = sum(1 for i in range(layers) if i in only_mlp or (i + 1) % step != 0)
        return Arch(
            intermediate=cfg.get("intermediate_size") or 0,
            tied=_tied_default(cfg),
            experts=experts,
            experts_per_token=cfg["num_experts_per_tok"],
            expert_intermediate=moe_intermediate,
            shared_intermediate=cfg.get("shared_expert_intermediate_size") or 0,
            dense_layers=dense_layers,
            **dense,
        )
    except KeyError as exc:
        raise UnsizedArch(f"config.json has no {exc.args[0]}") from None


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
    *,
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
    per_layer = (18.0 + 8.0 * arch.mlp_width / arch.hidden) * tokens * arch.hidden
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
    (bitsandbytes quantizes the `nn.Linear` layers of the blocks only, so a MoE's fused routed
    experts stay 16 bit too)."""
    if quantization not in ("nf4", "fp4"):
        return arch.params * 2.0
    kept = arch.embedding_params + arch.routed_expert_params
    return (arch.params - kept) * NF4_BYTES_PER_PARAM + kept * 2.0


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
    active_params: int = 0  # a MoE model's parameters per token (FLOPs); 0: all of `params`
    host_gb_per_node: float | None = None  # host memory the weights take as they load (launched stages)


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


def arch_lookup(
    ref: str, tiny_vocab: int = 2048, tiny_specs: dict[str, Any] | None = None
) -> tuple[Arch | None, str]:
    """(architecture of a model reference, "" — or None and why it is unknown).

    Tiny specs and GGUF headers are read directly (a GGUF header with transformers' reader, which
    imports torch: only for GGUF refs); a folder or Hub id through its config.json
    (`model_config.model_file`: the folder, the HF cache, or the Hub when online); the
    known-checkpoint table only when that config is unreachable.
    """
    from verticalft import gguf_source
    from verticalft.model_config import model_file
    from verticalft.models import DEFAULT_TINY_SPECS, HEAD_DIM, is_tiny, tiny_name

    if gguf_source.is_gguf(ref):
        try:
            return arch_from_config(gguf_source.gguf_info(ref).config()), ""
        except (gguf_source.GgufError, UnsizedArch, KeyError, TypeError) as exc:  # validation reports why
            return None, str(exc)

    if is_tiny(ref):
        spec = {**DEFAULT_TINY_SPECS, **(tiny_specs or {})}.get(tiny_name(ref))
        if spec is None:
            return None, f"no tiny spec '{tiny_name(ref)}'"
        h = spec["hidden_size"]
        return Arch(
            h,
            spec["num_hidden_layers"],
            spec["intermediate_size"],
            h // HEAD_DIM,
            spec.get("num_key_value_heads") or h // HEAD_DIM,
            HEAD_DIM,
            tiny_vocab,
        ), ""
    found = model_file(ref)
    if found.data is not None:
        try:
            return arch_from_config(found.data), ""
        except UnsizedArch as exc:
            return None, str(exc)
    if ref in KNOWN_ARCHS:
        return KNOWN_ARCHS[ref], ""
    return None, f"config.json: {found.reason}"


def resolve_arch(ref: str, tiny_vocab: int = 2048, tiny_specs: dict[str, Any] | None = None) -> Arch | None:
    """Architecture of a model reference, None when unknown (`arch_lookup` says why)."""
    return arch_lookup(ref, tiny_vocab, tiny_specs)[0]


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
        known = [c for c in counts if c is not None]
        if len(known) < len(counts):
            return None
        return sum(weighted_rows(c, getattr(s, "weight", 1.0)) for c, s in zip(known, source, strict=True))
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
    """GPU-hours, dollars and memory per GPU of every training stage (and distillation) on the
    recipe's hardware, before anything runs; warnings say what will not fit or cannot be sized."""
    c = recipe.compute
    gpu, price = gpu_and_price(c.gpu, recipe.cost.usd_per_gpu_hour)
    plan = Plan(gpu=gpu, usd_per_gpu_hour=price)
    from verticalft.launch import launch_warnings

    plan.warnings += launch_warnings(recipe)
    specs = {k: v.model_dump() for k, v in recipe.tiny.specs.items()}
    arch, unknown = arch_lookup(recipe.models.teacher, recipe.tiny.vocab_size, specs)
    if arch is None:
        plan.warnings.append(
            f"size of {recipe.models.teacher} unknown ({unknown}): give a local folder, or run once online "
            "(its config.json is cached)"
        )
        return plan
    plan.notes += assumption_notes(recipe, arch)
    for stage in registry.model_stages():
        cfg = getattr(recipe.stages, stage)
        if cfg is not None and registry.stage(stage).training is not None:
            row, warnings = plan_training_stage(recipe, stage, arch, gpu, price)
            plan.stages.append(row)
            plan.warnings += warnings
    if recipe.stages.distill is not None:
        plan_distill(recipe, arch, gpu, price, plan, specs)
    if recipe.stages.export is not None:
        plan_quantize(recipe, arch, gpu, price, plan, specs)
    return plan


def assumption_notes(recipe: Any, arch: Arch) -> list[str]:
    """What the plan's figures assume, said beside them: MoE accounting, the FLOPs formulas, the
    MFU per method, and how each launched stage is split over the GPUs."""
    from verticalft.launch import stage_accelerate_choice, stage_shards_weights

    c = recipe.compute
    notes = []
    if arch.is_moe:
        notes.append(
            f"{recipe.models.teacher} is a mixture of experts ({arch.experts_per_token} of {arch.experts} experts "
            f"per token): memory holds all {arch.params / 1e9:.2f}B parameters, FLOPs count the "
            f"{arch.active_params / 1e9:.2f}B a token runs through"
        )
    notes.append(
        "FLOPs: 6·N·D full, 4·N·D LoRA/QLoRA (+2·N·D with gradient checkpointing); "
        "DPO adds a reference forward 2·N·D"
    )
    notes.append(
        "MFU: "
        + ", ".join(f"{m} {mfu_for(c, m):.0%}" for m in MFU_DEFAULTS)
        + (
            " (the recipe's compute.mfu)"
            if isinstance(c.mfu, int | float)
            else " (defaults: full from the Llama 3 report's 38–43 %; the others assumed — set compute.mfu)"
        )
    )
    if c.launcher == "accelerate":
        notes.append(
            "launch: "
            + ", ".join(
                f"{s} {stage_accelerate_choice(recipe, s)}"
                + (f" (weights sharded over {c.world_size})" if stage_shards_weights(recipe, s) else "")
                for s in registry.training_stages()
                if getattr(recipe.stages, s) is not None
            )
            + f"; barriers wait up to compute.timeout_minutes={c.timeout_minutes:g}"
        )
    return notes


def stage_trained_tokens(recipe: Any, stage: str) -> float:
    """Tokens a model stage trains on: the corpus (with data.replay mixed in at its ratio) for
    CPT-like stages, else its set's tokens and examples, through `trained_tokens`."""
    cfg, training = getattr(recipe.stages, stage), registry.training_of(stage)
    d, gpus = recipe.data, recipe.compute.training_gpus
    if training.trains_on == "corpus":
        domain = sum(source_tokens(s) for s in d.corpus)
        ratio = d.replay.ratio if d.replay else 0.0
        return trained_tokens(cfg.trainer, domain / (1.0 - ratio), None, cfg.max_length, gpus)
    source = getattr(d, training.trains_on) if training.trains_on else None
    return trained_tokens(cfg.trainer, source_tokens(source), source_examples(source), cfg.max_length, gpus)


def plan_training_stage(
    recipe: Any, stage: str, arch: Arch, gpu: Gpu, price: float
) -> tuple[StagePlan, list[str]]:
    """One model stage's row (FLOPs on the active parameters, memory on all of them) and its
    warnings (does not fit, no token count)."""
    from verticalft.launch import stage_shards_weights

    cfg, training = getattr(recipe.stages, stage), registry.training_of(stage)
    t = cfg.trainer
    ckpt = bool(t.get("gradient_checkpointing", False))
    method = training.method(cfg)
    tokens = stage_trained_tokens(recipe, stage)
    if training.pairs:
        flops = dpo_flops(arch.active_params, tokens, "lora" if method != "full" else "full", ckpt)
    else:
        flops = training_flops(arch.active_params, tokens, method, ckpt)
    hours = gpu_hours(flops, gpu, mfu_for(recipe.compute, method))
    shards = recipe.compute.world_size if stage_shards_weights(recipe, stage) else 1
    mem = training_memory_gb(
        arch,
        method,
        seq_len=cfg.max_length,
        micro_batch=int(t.get("per_device_train_batch_size", 8)),
        checkpointing=ckpt,
        lora_r=cfg.lora.r,
        shards=shards if method == "full" else 1,
        sequences_per_example=2 if training.pairs else 1,  # chosen + rejected
    )
    fits = mem["total"] <= gpu.vram_gb * 0.95
    host = load_host_gb(recipe, stage, arch, method) if recipe.compute.launcher != "none" else None
    row = StagePlan(
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
        arch.active_params,
        host,
    )
    warnings = []
    if not fits:
        warnings.append(
            f"{stage}: needs ~{mem['total']:.1f} GB per GPU ({_breakdown(mem)}) "
            f"but {gpu.name} has {gpu.vram_gb:.0f} GB — lower per_device_train_batch_size or max_length, "
            f"enable gradient_checkpointing, use QLoRA, or shard with accelerate_config fsdp2 over more GPUs"
        )
    if tokens == 0:
        warnings.append(f"{stage}: no token count (declare `tokens:` on its data source)")
    return row, warnings


def load_host_gb(recipe: Any, stage: str, arch: Arch, method: str) -> float:
    """Host memory (GB per node) a launched training stage's weights take while they load.

    - QLoRA: each rank quantizes onto its GPU as transformers reads the checkpoint shard by
      shard: no model-sized host copy (0 here).
    - FSDP (`fsdp_cpu_ram_efficient_loading`, the shipped config): local rank 0 alone reads the
      weights, the others hold untouched empty tensors; full-parameter training loads them in fp32
      (models.load_kwargs: no upcast left to write on the other ranks) → 4 bytes × parameters, LoRA
      in bf16 → 2. (Before the fp32 load, accelerate's upcast wrote fp32 on every rank:
      gpus_per_node × 4 + 2 bytes × parameters.)
    - DeepSpeed ZeRO-3: each rank materialises its partition: 2 bytes × parameters / ranks, per rank.
    - DDP: every rank loads the bf16 model on the host before the Trainer moves it to its GPU.
    """
    from verticalft.launch import accelerate_config_path, stage_accelerate_choice, stage_shards_weights

    c = recipe.compute
    if method == "qlora":
        return 0.0
    if stage_shards_weights(recipe, stage):
        import yaml

        engine = (
            yaml.safe_load(accelerate_config_path(stage_accelerate_choice(recipe, stage)).read_text()) or {}
        ).get("distributed_type")
        if engine == "DEEPSPEED":
            return round(2.0 * arch.params / c.world_size * c.gpus_per_node / 1e9, 1)
        return round((4.0 if method == "full" else 2.0) * arch.params / 1e9, 1)
    return round(2.0 * arch.params * c.gpus_per_node / 1e9, 1)


def plan_distill(
    recipe: Any, teacher: Arch, gpu: Gpu, price: float, plan: Plan, specs: dict[str, Any]
) -> None:
    """One row for the teacher pass (cache / generation) and one per student, memory by kind."""
    from verticalft.pruning import is_prune, prune_name

    cfg = recipe.stages.distill
    micro = int(cfg.trainer.get("per_device_train_batch_size", 8))
    has = {"has_corpus": bool(recipe.data.corpus), "has_replay": recipe.data.replay is not None}
    refs = cfg.students or recipe.models.students
    student_phases = {ref: cfg.phases_for(ref, **has) for ref in refs}
    # The teacher sees each phase input's distinct rows once (shared by every phase reading them)
    inputs = {cfg.input_key(p): p for ps in student_phases.values() for p in ps}
    teacher_mem = inference_memory_gb(teacher, cfg.teacher.quantization, cfg.max_length, micro)
    beside = cfg.kind == "on_policy" or (cfg.kind == "logits" and not cfg.cache)
    if not beside:
        for phase in inputs.values():
            plan_teacher_pass(
                recipe,
                teacher=teacher,
                teacher_mem=teacher_mem,
                tokens=phase_tokens(recipe, phase)[0],
                gpu=gpu,
                price=price,
                plan=plan,
                data=phase.label if len(inputs) > 1 else None,
            )

    cut_from = (
        resolve_arch(cfg.teacher.model, recipe.tiny.vocab_size, specs) if cfg.teacher.model else teacher
    )
    for ref in refs:
        if is_prune(ref):
            arch, name, unknown = pruned_arch(ref, cut_from), prune_name(ref), "its teacher's size is unknown"
        else:
            (arch, unknown), name = arch_lookup(ref, recipe.tiny.vocab_size, specs), ref.split("/")[-1]
        if arch is None:
            plan.warnings.append(f"distill: size of student {ref} unknown ({unknown})")
            continue
        phases = student_phases[ref]
        for i, phase in enumerate(phases):
            plan_student(
                recipe,
                ref=ref,
                name=name if len(phases) == 1 else f"{name}/{phase.name}",
                arch=arch,
                teacher=teacher,
                teacher_mem=teacher_mem,
                trained=phase_tokens(recipe, phase)[1],
                beside=beside,
                gpu=gpu,
                price=price,
                plan=plan,
                note=i == 0,
            )
    plan.notes.append(
        "distill memory: "
        + (
            "the teacher sits beside each student"
            if beside
            else "the teacher runs alone first; students train without it"
        )
    )


def phase_tokens(recipe: Any, phase: Any) -> tuple[float, float]:
    """(tokens of the phase's distinct rows — what the teacher's pass covers —, tokens a student
    trains on in it): the conversations (first `max_examples`) or the documents (corpus, replay
    at its ratio, sources) up to the phase's `max_tokens`, else the trainer block's schedule with
    the phase's keys over it."""
    cfg, d = recipe.stages.distill, recipe.data
    if phase.reads_conversations:
        tokens, examples = source_tokens(d.sft), source_examples(d.sft)
        if cfg.max_examples and examples and cfg.max_examples < examples:
            tokens, examples = tokens * cfg.max_examples / examples, cfg.max_examples
    else:
        names = set(x for x in phase.data if isinstance(x, str))
        tokens = sum(source_tokens(x) for x in phase.data if not isinstance(x, str))
        corpus = sum(source_tokens(x) for x in d.corpus) if "corpus" in names else 0.0
        tokens += corpus
        if "replay" in names and d.replay is not None:  # mixed at its ratio, as cpt mixes it
            tokens += corpus * d.replay.ratio / (1 - d.replay.ratio) if corpus else source_tokens(d.replay)
        examples = None  # packed rows fill max_length
    if phase.max_tokens is not None:
        return min(tokens, phase.max_tokens), float(phase.max_tokens)
    trainer = {**cfg.trainer, **phase.trainer_overrides()}
    return tokens, trained_tokens(trainer, tokens, examples, cfg.max_length, recipe.compute.training_gpus)


def plan_teacher_pass(
    recipe: Any,
    *,
    teacher: Arch,
    teacher_mem: float,
    tokens: float,
    gpu: Gpu,
    price: float,
    plan: Plan,
    data: str | None = None,
) -> None:
    """The teacher's pass before the students train (top-k cache or generated answers): its row,
    its wall time, and a warning when the other ranks would time out waiting for it. `data`: which
    phase input it covers, where the phases read more than one."""
    cfg, c = recipe.stages.distill, recipe.compute
    what = "top-k cache" if cfg.kind == "logits" else "generation"
    what += f": {data}" if data else ""
    flops = 2.0 * teacher.active_params * tokens
    hours = gpu_hours(flops, gpu, mfu_for(c, "inference"))
    ranks = c.training_gpus if cfg.kind == "logits" else 1  # the cache is built in parts by every rank
    wall_min = hours * 60 / ranks
    disk = ""
    if cfg.kind == "logits":
        # distill/cache.py per target token: k ids (uint16 below 65,536 ids, else int32), k fp16
        # log-probs, one fp32 tail; documents make every token a target, conversations fewer
        id_bytes = 2 if teacher.vocab <= 65536 else 4
        disk = f"; on disk at most ~{tokens * (cfg.top_k * (id_bytes + 2) + 4) / 1e9:,.1f} GB"
    plan.notes.append(
        f"distill: the teacher {what} takes {hours:.2f} GPU-hours, "
        + (f"built in parts by each of the {ranks} ranks (its own teacher copy): " if ranks > 1 else "")
        + f"~{wall_min:.1f} min wall{disk}"
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
            teacher.active_params,
        )
    )


def plan_student(
    recipe: Any,
    *,
    ref: str,
    name: str,
    arch: Arch,
    teacher: Arch,
    teacher_mem: float,
    trained: float,
    beside: bool,
    gpu: Gpu,
    price: float,
    plan: Plan,
    note: bool = True,
) -> None:
    """One student's row (one per phase): its training FLOPs (plus the teacher's forward when it
    sits beside), its memory per GPU by distillation kind, and a warning when it does not fit;
    `note`: add the memory-by-kind note (once per student)."""
    cfg = recipe.stages.distill
    t = cfg.trainer
    ckpt = bool(t.get("gradient_checkpointing", False))
    micro = int(t.get("per_device_train_batch_size", 8))
    mem = training_memory_gb(
        arch, cfg.method, seq_len=cfg.max_length, micro_batch=micro, checkpointing=ckpt, lora_r=cfg.lora.r
    )
    alone, both = mem["total"], round(mem["total"] + teacher_mem, 1)
    if note:
        plan.notes.append(
            f"distill memory per GPU for {name} by kind — logits+cache: teacher {teacher_mem:.1f} GB, "
            f"then student {alone:.1f} GB; logits online: {both} GB; sequence: teacher {teacher_mem:.1f} GB "
            f"(generation; vLLM adds KV cache), then {alone:.1f} GB; on_policy: {both} GB"
        )
    if beside:
        mem = {**mem, "teacher": teacher_mem, "total": round(mem["total"] + teacher_mem, 3)}
    flops = training_flops(arch.active_params, trained, cfg.method, ckpt)
    if beside:
        flops += 2.0 * teacher.active_params * trained
    hours = gpu_hours(flops, gpu, mfu_for(recipe.compute, cfg.method))
    fits = mem["total"] <= gpu.vram_gb * 0.95
    label = f"distill: {name} ({cfg.kind}{', cache' if cfg.kind == 'logits' and cfg.cache else ''})"
    plan.stages.append(
        StagePlan(
            label,
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
            arch.active_params,
        )
    )
    if not fits:
        plan.warnings.append(
            f"distill {ref}: needs ~{mem['total']:.1f} GB ({_breakdown(mem)}) "
            f"but {gpu.name} has {gpu.vram_gb:.0f} GB — use cache: true (teacher not in memory), "
            "teacher.quantization: nf4, method: qlora, or a smaller max_length / batch"
        )


def gptq_hessian_elements(arch: Arch) -> int:
    """fp32 elements of the GPTQ Hessians (in × in per `nn.Linear`) llm-compressor holds while it
    calibrates one decoder layer: q, k, v, gate, up read the hidden state, o the attention output,
    down the MLP's; a MoE layer has one set per expert (and its shared expert)."""
    h, attn_out = arch.hidden, arch.heads * arch.head_dim
    attention = 3 * h * h + attn_out * attn_out
    if not arch.is_moe:
        return attention + 2 * h * h + arch.intermediate**2
    experts = arch.experts * (2 * h * h + arch.expert_intermediate**2)
    shared = 2 * h * h + arch.shared_intermediate**2 if arch.shared_intermediate else 0
    return attention + experts + shared


def quantize_rows(
    arch: Arch, scheme: str, samples: int, max_length: int
) -> tuple[float, float, dict[str, float]]:
    """(calibration tokens, FLOPs, GPU memory in GB) of one llm-compressor run (quantize_job.py).

    GPTQ schemes (W8A8 with SmoothQuant, W4A16) use llm-compressor's sequential pipeline: the model
    stays in host memory, one decoder layer at a time is on the GPU, and the calibration set runs
    through it twice (once for the hooks, once to pass the quantized layer's outputs on): 2 forwards
    = 4·N·D, plus each Hessian's accumulation, 2·in² per token per Linear. FP8_DYNAMIC is data-free:
    no calibration pass, weights rounded where they are."""
    if scheme in ("FP8_DYNAMIC", "FP8_BLOCK"):
        return 0.0, 0.0, {}
    tokens = float(samples * max_length)
    hessians = gptq_hessian_elements(arch)
    flops = 4.0 * arch.active_params * tokens + 2.0 * hessians * tokens * arch.layers
    layer_weights = (arch.params - arch.embedding_params) / arch.layers * 2.0
    # one sample's hidden states and MLP activations in bf16 (batch size 1)
    activations = 2.0 * max_length * (2 * arch.hidden + 2 * arch.mlp_width)
    mem = {
        "layer weights": layer_weights / 1e9,
        "GPTQ Hessians": hessians * 4.0 / 1e9,
        "activations": activations / 1e9,
    }
    return tokens, flops, {k: round(v, 3) for k, v in mem.items()}


def plan_quantize(
    recipe: Any, teacher: Arch, gpu: Gpu, price: float, plan: Plan, specs: dict[str, Any]
) -> None:
    """One row per exported model and scheme (stages.export): llm-compressor on one GPU, with the
    host memory it needs in a note."""
    from verticalft.pruning import is_prune, prune_name

    cfg = recipe.stages.export
    refs = (recipe.stages.distill.students if recipe.stages.distill else None) or recipe.models.students
    students = {prune_name(r) if is_prune(r) else r.split("/")[-1]: r for r in refs}
    finals = [s for s in ("dpo", "sft", "cpt") if getattr(recipe.stages, s) is not None][:1] or ["teacher"]
    names = cfg.models or [*finals, *students]
    for name in names:
        arch: Arch | None
        if name in ("teacher", "cpt", "sft", "dpo"):
            arch, ref = teacher, recipe.models.teacher
        elif name in students:
            ref = students[name]
            arch = (
                pruned_arch(ref, teacher)
                if is_prune(ref)
                else arch_lookup(ref, recipe.tiny.vocab_size, specs)[0]
            )
        else:
            plan.warnings.append(f"quantize: stages.export.models names '{name}', not a model of this run")
            continue
        if arch is None:
            plan.warnings.append(f"quantize: size of {ref} unknown")
            continue
        host = arch.params * 2.0 + cfg.calibration_samples * cfg.calibration_max_length * arch.hidden * 2.0
        plan.notes.append(
            f"quantize {name}: the bf16 model and the cached calibration activations sit in host memory "
            f"(~{host / 1e9:,.1f} GB); llm-compressor moves one decoder layer at a time to the GPU "
            "(its GPU-hours count FLOPs only: not those transfers, nor GPTQ's column-by-column solve)"
        )
        for scheme in cfg.schemes:
            tokens, flops, mem = quantize_rows(
                arch, scheme, cfg.calibration_samples, cfg.calibration_max_length
            )
            hours = gpu_hours(flops, gpu, mfu_for(recipe.compute, "inference"))
            total = round(sum(mem.values()), 3)
            plan.stages.append(
                StagePlan(
                    f"quantize: {name} {scheme}",
                    ref,
                    arch.params,
                    "GPTQ" + (" + SmoothQuant" if scheme.startswith("W8A8") and cfg.smoothing > 0 else "")
                    if tokens
                    else "data-free",
                    tokens,
                    flops,
                    hours,
                    hours * price,
                    mem,
                    total,
                    total <= gpu.vram_gb * 0.95,
                    arch.active_params,
                )
            )
