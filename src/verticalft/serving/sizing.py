"""How vLLM's offline engine is sized for one model of the run: tensor parallelism and context length.

Why: left to its defaults vLLM puts a model on one GPU with its full context. Qwen3-32B (the
finance teacher) has 64 layers × 8 KV heads × 128 dims × 2 (K and V) × 2 bytes = 256 KiB of KV
cache per token, so its 40,960-token context needs 10 GiB for a single sequence, while its bf16
weights already take ~61 GiB of an 80 GB H100: vLLM refuses to start. The eval stage and
`distill.kind: sequence` generation therefore size the engine from the recipe:

- `tensor_parallel_size`: the GPUs per model the bench stage serves it on
  (`stages.bench.gpus_per_model`, resolved by `BenchStage.gpus_for`); every model of the
  teacher's size (base, cpt, sft, dpo, the distill teacher) takes the `teacher` entry.
- `max_model_len`: the longest prompt at hand plus the answer (`context_length`), at most the
  model's own limit. Not the training `max_length`: SFT truncates a long conversation, vLLM
  instead rejects a prompt longer than `max_model_len` and fails the whole batch, so the bound
  must come from the prompts themselves, and a short bound leaves the most memory for batching.
- `gpu_memory_utilization`: vLLM's default.

Recipe `engine_args` always win. On CPU (`compute.gpu: cpu`: the tiny and small profiles) nothing
is derived: the recipe's `engine_args` pass unchanged, as they always have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verticalft.recipe import Recipe

# Tokens a chat template adds around a user turn (role markers, a default system prompt such as
# Llama 3's dated one, Qwen3's empty think block): a generous margin, counted once per prompt.
TEMPLATE_ALLOWANCE = 256


# Tokens of the role markers around each further turn of a chat (`<|im_start|>user\n…<|im_end|>\n`).
TURN_ALLOWANCE = 16

Prompt = str | Sequence[Mapping[str, Any]]  # a prompt text, or a chat: a list of messages


def prompt_bytes(prompt: Prompt) -> int:
    """UTF-8 bytes of a prompt text, or of a chat's contents plus `TURN_ALLOWANCE` per turn."""
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8"))
    return sum(len(str(m.get("content") or "").encode("utf-8")) + TURN_ALLOWANCE for m in prompt)


def prompt_tokens_bound(prompts: Sequence[Prompt]) -> int:
    """An upper bound, without a tokenizer, on the longest prompt (a text or a chat) in tokens once
    chat-templated: its UTF-8 bytes (every byte-level BPE or byte-fallback SentencePiece token covers
    at least one byte), the markers of each turn, plus `TEMPLATE_ALLOWANCE`. Loose (English text is
    ~4 bytes a token), never short."""
    return max((prompt_bytes(p) for p in prompts), default=0) + TEMPLATE_ALLOWANCE


def context_length(prompts: Sequence[Prompt], max_new_tokens: int, model_limit: int | None = None) -> int:
    """vLLM's `max_model_len` for these prompts: the longest prompt's bound plus the answer, at
    most the model's own context (a larger value is a vLLM error, not a longer context)."""
    need = prompt_tokens_bound(prompts) + max_new_tokens
    return min(need, model_limit) if model_limit else need


def model_context_limit(path: str, trust_remote_code: bool = False) -> int | None:
    """The context the model was built for (`max_position_embeddings` of its text config, what
    vLLM derives its default from); None when the config cannot be read here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def tensor_parallel_size(recipe: Recipe, name: str, teacher_sized: bool) -> int:
    """GPUs for one model: the bench stage's `gpus_per_model` (one resolver for serving and eval)."""
    from verticalft.recipe import BenchStage

    return (recipe.stages.bench or BenchStage()).gpus_for(name, teacher_sized)


def engine_args_for(
    recipe: Recipe,
    name: str,
    *,
    teacher_sized: bool,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    explicit: Mapping[str, Any] | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """`vllm.LLM(...)` arguments for model `name` generating `max_new_tokens` after `prompts` (texts
    or chats; module docstring): derived on a GPU, then the recipe's `explicit` engine args on top.
    `model_path` (read only on a GPU, only when `max_model_len` is derived) caps the context."""
    explicit = dict(explicit or {})
    if recipe.compute.gpu == "cpu":
        return explicit
    derived: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size(recipe, name, teacher_sized)}
    if "max_model_len" not in explicit:
        limit = model_context_limit(model_path, recipe.models.trust_remote_code) if model_path else None
        derived["max_model_len"] = context_length(prompts, max_new_tokens, limit)
    return {**derived, **explicit}


def quantized_cpu_dtype(recipe: Recipe, model_path: str) -> str | None:
    """ "bfloat16" for a compressed-tensors (quantized) folder served on CPU, else None.

    Why: vLLM 0.32's CPU INT8 kernel takes bf16/fp16 activations only — a W8A8 folder served at
    the CPU profiles' `--dtype float32` fails with "int8_scaled_mm_with_quant: expect A to be
    bfloat16 or half" (measured) — so a quantized variant computes in bf16 on CPU while the
    profiles serve the other models in fp32. On a GPU every model keeps the recipe's dtype."""
    import json
    from pathlib import Path

    if recipe.compute.gpu != "cpu":
        return None
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    quant = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
    return "bfloat16" if quant.get("quant_method") == "compressed-tensors" else None
