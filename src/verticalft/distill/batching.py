"""What the distillation cache build and the distillation trainer share: a conversation as token
ids plus its assistant-token mask, the padded batch, and the student's (or teacher's) final hidden
states at the response positions with the head that projects them to logits — so neither builds
[batch, seq, vocab] logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

IGNORE = -100


def chat_example(
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_length: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Token ids of a conversation through the chat template (with the run's template variables,
    as TRL's trainers render it) and a mask of its assistant tokens (the template's
    `{% generation %}` markers), truncated to `max_length`."""
    enc = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **(chat_template_kwargs or {}),
    )
    ids, mask = list(enc["input_ids"])[:max_length], list(enc["assistant_masks"])[:max_length]
    return {"input_ids": ids, "response_mask": [int(m) for m in mask]}


class DistillCollator:
    """Right-pads a batch; labels are the response tokens (others IGNORE)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n] = torch.tensor(r["input_ids"])
            attn[b, :n] = 1
            resp = torch.tensor(r["response_mask"], dtype=torch.bool)
            labels[b, :n] = torch.where(resp, ids[b, :n], torch.full_like(ids[b, :n], IGNORE))
        index = torch.tensor([int(r["example_index"]) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels, "example_index": index}


Head = Callable[[torch.Tensor], torch.Tensor]


def logit_head(model: Any, vocab_size: int | None = None) -> Head:
    """hidden [..., hidden] → the model's logits [..., vocab_size], outside its forward.

    Goes through the model's own output-embedding module, so a PEFT `modules_to_save` (or LoRA)
    copy of lm_head is the one used and trained, then applies the post-processing some families
    do after lm_head (Gemma-2 soft-capping, Cohere's scale, Granite's divisor);
    `response_hidden` checks the result against the model's own logits at one position.
    """
    lm_head = model.get_output_embeddings()
    cfg = model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    divisor = getattr(cfg, "logits_scaling", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden)
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits[..., :vocab_size] if vocab_size else logits

    return head


def response_hidden(
    model: Any, inputs: dict[str, torch.Tensor], mask: torch.Tensor, vocab_size: int | None = None
) -> tuple[torch.Tensor, Head]:
    """(final hidden states at the positions `mask` [batch, seq-1] selects: [tokens, hidden],
    the head projecting them to logits) — without the model building [batch, seq, vocab] logits.

    The model runs through its own forward, and through the DDP wrapper the Trainer passes to
    `compute_loss` (so gradient sync is untouched), with `logits_to_keep=1`: lm_head sees one
    position per row. A forward hook on the decoder keeps its output, the post-norm last hidden
    state. The one position the model did project checks that `logit_head` reproduces its logits
    (a family with other post-processing stops here instead of training on wrong targets). Under
    FSDP lm_head would be used outside the sharded forward: not supported.
    """
    inner = extract_model_from_parallel(model)
    captured: list[torch.Tensor] = []
    hook = inner.get_decoder().register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
    try:
        out = model(**inputs, logits_to_keep=1)
    finally:
        hook.remove()
    hidden, head = captured[-1], logit_head(inner, vocab_size)
    lm_head = inner.get_output_embeddings()
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in lm_head.modules())
    if not dropout:  # LoRA dropout on lm_head in training would differ between the two calls
        with torch.no_grad():
            ours, theirs = head(hidden[:, -1]).float(), out.logits[:, -1, : vocab_size or None].float()
        if (ours - theirs).abs().max() > 1e-2 * theirs.abs().max() + 1e-4:
            raise ValueError(
                f"{type(inner).__name__}: lm_head(last hidden state) differs from the model's logits; "
                "it post-processes them in a way the chunked distillation loss does not reproduce"
            )
    return hidden[:, :-1][mask], head
