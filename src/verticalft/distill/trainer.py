"""Logit distillation on the HF Trainer: the student matches the teacher token by token.

`compute_loss` is the Trainer's documented extension point; everything else (optimizer,
schedule, checkpoints and resume, DDP/FSDP through accelerate, `report_to`) is the stock
Trainer. The teacher's distribution comes either from the teacher itself, run under
`torch.no_grad()` beside the student (online), or from the top-k cache (then no teacher is in
memory at all). Both paths call the same loss functions (losses.py).

Neither the student nor the online teacher builds [batch, seq, vocab] logits: `response_hidden`
takes their final hidden states at the response positions and the loss projects them to the
vocabulary a chunk of positions at a time (`LossSettings.chunk_size`, losses.chunked_token_sum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer

from verticalft.distill.cache import TeacherCache
from verticalft.distill.losses import (
    DEFAULT_CHUNK,
    chunked_token_sum,
    full_divergence,
    mix,
    token_cross_entropy,
    topk_divergence,
)

IGNORE = -100


@dataclass
class LossSettings:
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    ce_weight: float = 0.0
    vocab_size: int | None = None  # trim logits to the shared tokenizer's ids (padded embedding rows)
    chunk_size: int = DEFAULT_CHUNK  # response positions projected to the vocabulary at once (0: all)


def chat_example(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """Token ids of a conversation through the chat template and a mask of its assistant tokens
    (the template's `{% generation %}` markers), truncated to `max_length`."""
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(enc["input_ids"])[:max_length], list(enc["assistant_masks"])[:max_length]
    return {"input_ids": ids, "response_mask": [int(m) for m in mask]}


def target_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is a response token: where a causal LM's loss is read."""
    return response_mask[..., 1:].bool()


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


def cached_rows(
    cache: TeacherCache, index: torch.Tensor, expected: int, device: Any
) -> tuple[torch.Tensor, ...]:
    """The cache's rows for a batch's examples, in the order `logits[mask]` flattens them."""
    parts = [cache.example(int(i)) for i in index]
    ids = torch.from_numpy(_cat([p[0] for p in parts]).astype("int64"))
    logp = torch.from_numpy(_cat([p[1] for p in parts]))
    tail = torch.from_numpy(_cat([p[2] for p in parts]))
    if ids.shape[0] != expected:
        # Different tokenization or truncation than the cache was built with: a silent
        # misalignment would train on the wrong tokens' targets, so stop.
        raise RuntimeError(
            f"teacher cache has {ids.shape[0]} response tokens for examples {index.tolist()}, "
            f"the batch has {expected}; rebuild the cache (delete {cache.root})"
        )
    return ids.to(device), logp.to(device), tail.to(device)


def _cat(arrays: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(arrays) if arrays else np.zeros((0,))


class LogitDistillTrainer(Trainer):
    """HF Trainer whose loss is (1-w)·T²·D(teacher ‖ student) + w·CE on response tokens."""

    def __init__(
        self,
        *args: Any,
        settings: LossSettings,
        teacher: Any = None,
        cache: TeacherCache | None = None,
        **kwargs: Any,
    ):
        if (teacher is None) == (cache is None):
            raise ValueError("give exactly one of `teacher` (online) or `cache`")
        super().__init__(*args, **kwargs)
        self.settings, self.teacher, self.cache = settings, teacher, cache
        self.kd_log: list[float] = []
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        s = self.settings
        index = inputs.pop("example_index")
        labels = inputs.pop("labels")
        mask = labels[:, 1:] != IGNORE
        hidden, head = response_hidden(model, inputs, mask, s.vocab_size)  # [tokens, hidden]
        targets = labels[:, 1:][mask]
        if self.cache is not None:
            teacher_side = cached_rows(self.cache, index, hidden.shape[0], hidden.device)

            def divergence(logits: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
                ids, logp, tail = t
                return topk_divergence(logits, ids, logp, s.divergence, s.temperature, s.beta, tail)
        else:
            with torch.no_grad():
                t_hidden, t_head = response_hidden(self.teacher, inputs, mask, s.vocab_size)
            teacher_side = (t_hidden,)

            def divergence(logits: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    t_logits = t_head(t[0])
                return full_divergence(logits, t_logits, s.divergence, s.temperature, s.beta)

        def per_token(h: torch.Tensor, y: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
            logits = head(h)  # [chunk, vocab]: the only logits that exist at any time
            kd = divergence(logits, *t)
            ce = token_cross_entropy(logits, y) if s.ce_weight else torch.zeros_like(kd)
            return torch.stack([kd, ce], dim=-1)

        sums = chunked_token_sum(per_token, hidden, targets, *teacher_side, chunk_size=s.chunk_size)
        tokens = max(float(num_items_in_batch) if num_items_in_batch is not None else hidden.shape[0], 1.0)
        kd, ce = s.temperature**2 * sums[0] / tokens, sums[1] / tokens
        loss = mix(kd, ce, s.ce_weight)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        self.kd_log.append(float(kd.detach()))
        return (loss, {"kd": kd.detach(), "ce": ce.detach()}) if return_outputs else loss
