"""Loading models the way users load real checkpoints, and building the tiny ones for CPU runs.

`load_model` is the one place that knows about quantization (bitsandbytes 4-bit NF4/FP4) and
dtypes; stages call it with an HF id or a local folder and never care which. Tiny models
(`tiny://<name>` in a recipe) are ordinary HF folders built by `build_tiny_models`, so every
stage loads them exactly as it would load Qwen3-32B.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_SCHEME = "tiny://"
HEAD_DIM = 64  # vLLM's CPU attention rejects smaller heads
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, END_TOKEN, "<|system|>", "<|user|>", "<|assistant|>"]
# ChatML-like; `{% generation %}` marks assistant tokens so TRL can train on them only,
# and the end-of-turn token sits inside the marker so the model learns to stop. Nothing follows
# an assistant turn's <|end|>: TRL's DPOTrainer takes everything after the prompt as the
# completion, and a newline there became a third of every short answer's tokens; the tiny
# models then learned to open every answer with "\n" (DPO scored 0.11 → 0.00 on real_estate).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + '<|end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)
DEFAULT_TINY_SPECS: dict[str, dict[str, int]] = {
    "teacher": {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 768},
    "student-m": {"hidden_size": 192, "num_hidden_layers": 3, "intermediate_size": 512},
    "student-s": {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 384},
}


def is_tiny(ref: str) -> bool:
    return ref.startswith(TINY_SCHEME)


def tiny_name(ref: str) -> str:
    return ref[len(TINY_SCHEME) :]


# --------------------------------------------------------------------------- tiny models
def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (the GPT-2/Llama-3 family's kind) trained on the sample corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_models(
    out_dir: Path, texts: list[str], specs: dict[str, dict[str, Any]], vocab_size: int, seed: int
) -> dict[str, str]:
    """Train one shared tokenizer and build one Llama model per spec; returns name → folder.

    Deterministic: the same texts, specs and seed give byte-identical weights.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    folders = {}
    for i, (name, spec) in enumerate(sorted(specs.items())):
        hidden = int(spec["hidden_size"])
        if hidden % HEAD_DIM:
            raise ValueError(f"tiny model '{name}': hidden_size {hidden} must be a multiple of {HEAD_DIM}")
        heads = hidden // HEAD_DIM
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=int(spec["intermediate_size"]),
            num_hidden_layers=int(spec["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(spec.get("num_key_value_heads") or heads),
            head_dim=HEAD_DIM,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        torch.manual_seed(seed + i)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
        )
        folder = out_dir / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    (out_dir / "models.json").write_text(json.dumps(folders, indent=2))
    return folders


# --------------------------------------------------------------------------- loading
def quantization_config(kind: str, sharded: bool = False) -> Any:
    """bitsandbytes 4-bit config (QLoRA's NF4 + double quantization), or None for `none`.

    Compute runs in `training_dtype()`: bf16 on a GPU that has it, fp32 on CPU, where bf16
    matmuls without AVX-512-BF16/AMX are ~30x slower than fp32 (measured on an AVX2 EPYC).
    `sharded` (FSDP or DeepSpeed ZeRO-3): the packed 4-bit weights are stored in the compute
    dtype, because FSDP only flattens and shards float tensors of one dtype (bitsandbytes'
    FSDP-QLoRA guide: `bnb_4bit_quant_storage`); otherwise the default uint8.
    """
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": training_dtype()} if sharded else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=training_dtype(),
        **extra,
    )


def load_kwargs(
    quantization: str = "none", trust_remote_code: bool = False, inference: bool = False, full: bool = False
) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a training or teacher model in this process.

    Full-parameter training under FSDP (`full`) loads in fp32: accelerate's FSDP2 `prepare` casts
    every trainable low-precision parameter to fp32 master weights before sharding (its
    fsdp_utils, "Upcast to fp32 master weights"), on every rank. With
    `fsdp_cpu_ram_efficient_loading` only local rank 0 reads the weights and the others hold
    uninitialised `torch.empty` tensors — which that cast would write, fp32, on each of them:
    ~4 bytes × parameters per rank (131 GB for a 32B model, ×8 per node). Loaded in fp32 there is
    nothing to cast: rank 0 holds the one fp32 copy that is then sharded, the other ranks' empty
    tensors stay untouched (no resident memory), and training is the same (fp32 masters, bf16
    compute through FSDP's mixed-precision policy).

    A 4-bit model is quantized as it loads, onto the device it loads to, so it is placed there:
    - DDP and FSDP on GPUs: each rank on its own GPU, `device_map={"": LOCAL_RANK}` (TRL's
      `get_kbit_device_map`; PEFT's FSDP-QLoRA guide). Without it bitsandbytes uses
      `torch.cuda.current_device()`, GPU 0 on every rank. Under FSDP the 4-bit storage is in the
      compute dtype (`quantization_config(sharded=True)`) so FSDP can flatten it;
    - DeepSpeed ZeRO-3: no `device_map` (transformers refuses one); ZeRO-3 partitions at load
      because the trainer config exists first (`stages.training.train_model`) and the rank's
      GPU is the current device (`launch.init_process_state`).
    16-bit training models get no `device_map`: the Trainer (DDP) or FSDP places them. A model
    loaded for `inference` (the distillation teacher) goes on this rank's GPU whole.
    """
    from verticalft.launch import has_gpu, is_deepspeed_run, is_fsdp_run, local_rank

    sharded = is_fsdp_run() or is_deepspeed_run()
    qconfig = quantization_config(quantization, sharded=sharded)
    kwargs: dict[str, Any] = {"dtype": training_dtype(), "trust_remote_code": trust_remote_code}
    if full and is_fsdp_run() and qconfig is None and not inference:
        import torch

        kwargs["dtype"] = torch.float32  # the masters accelerate would cast to anyway (docstring)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["dtype"] = qconfig.bnb_4bit_compute_dtype
    if has_gpu() and (inference or (qconfig is not None and not is_deepspeed_run())):
        kwargs["device_map"] = {"": local_rank() or 0}
    return kwargs


def training_dtype() -> Any:
    """bf16 where the GPU supports it, fp32 otherwise (CPU runs)."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def fit_trainable_dtype(model: Any) -> Any:
    """Keep trainable parameters in `training_dtype()` (call after building a TRL trainer).

    TRL casts QLoRA adapters (and `modules_to_save`) to bf16, as the QLoRA paper does on GPUs.
    On a CPU without AVX-512-BF16/AMX every bf16 matmul falls back to a scalar loop, ~30x
    slower than fp32 (one tiny SFT step went from 0.6 s to 19 s), so there they go back to fp32
    before the optimizer is built. A no-op on GPUs with bf16.
    """
    dtype = training_dtype()
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return model


def keep_4bit_trainable(model: Any) -> Any:
    """Stop bitsandbytes repacking this model's 4-bit weights for CPU inference (call on a model
    that will train, before anything evaluates it).

    On a CPU with AVX-512-BF16, a 4-bit layer's first forward in eval mode without gradients
    (a quick eval's generate, `trainer.evaluate()`) converts its weight, in place and for good,
    into an inference-only layout (absmax rounded to bf16); `matmul_4bit` then runs
    `gemv_4bit`, which has no autograd kernel, so training afterwards drops the gradient
    through every frozen base layer (only the LoRA paths carry it down). The sft stage trained
    that way after its quick eval: a grad norm half a bare TRL run's at step 1, a worse and
    spiky loss curve. A no-op without bitsandbytes layers or off CPU.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False
    return model


def load_tokenizer(
    path: str, chat_template: str | None = None, require_mask: bool = False, prefix_masks: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer every stage uses, carrying the run's chat template in its training variant.

    `chat_template` is the recipe's `models.chat_template` (null: the model's own). Stages save
    this tokenizer next to their model, so later stages and vLLM render with the same template;
    `require_mask` (sft, distill) turns "no training variant" into an error (chat_templates.py),
    unless `prefix_masks` (sft) finds the assistant turns by rendering prefixes instead.
    """
    from transformers import AutoTokenizer

    from verticalft.chat_templates import use_run_template

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # many base checkpoints ship without one
        tok.pad_token = tok.eos_token
    return use_run_template(tok, chat_template, require_mask, prefix_masks)


def load_model(
    path: str,
    quantization: str = "none",
    trust_remote_code: bool = False,
    inference: bool = False,
    full: bool = False,
) -> PreTrainedModel:
    """Load a causal LM from an HF id or folder, optionally 4-bit quantized with bitsandbytes,
    placed for the launcher this process runs under (`load_kwargs`; `full`: every weight trains)."""
    from transformers import AutoModelForCausalLM

    kwargs = load_kwargs(quantization, trust_remote_code, inference, full)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def chat_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the special/added tokens the chat template writes (e.g. <|im_start|>, <|end|>)."""
    template = tokenizer.chat_template or ""
    tokens = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return sorted({tokenizer.convert_tokens_to_ids(t) for t in tokens if t and t in template})


def lora_config(lora: Any, tokenizer: Any = None, task_type: str = "CAUSAL_LM") -> Any:
    """PEFT LoraConfig from the recipe's `lora:` block.

    With `train_chat_tokens` (default) the chat template's special-token embedding rows train
    too (PEFT trainable tokens), unless the whole embedding is in `modules_to_save` already.
    """
    from peft import LoraConfig

    trainable_tokens = None
    if lora.train_chat_tokens and tokenizer is not None and "embed_tokens" not in lora.modules_to_save:
        trainable_tokens = chat_token_ids(tokenizer) or None
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=list(lora.modules_to_save) or None,
        trainable_token_indices=trainable_tokens,
        task_type=task_type,
    )


def merge_adapter(base_path: str, adapter_path: str, out_dir: Path, trust_remote_code: bool = False) -> str:
    """Merge a (Q)LoRA adapter into the *unquantized* base and save a full HF folder.

    Merging into 4-bit weights would round the update away; QLoRA practice is to reload the
    base in full precision and merge there.
    """
    from peft import PeftModel

    base = load_model(base_path, "none", trust_remote_code)
    merged = PeftModel.from_pretrained(base, adapter_path).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(adapter_path).save_pretrained(out_dir)
    return str(out_dir)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
