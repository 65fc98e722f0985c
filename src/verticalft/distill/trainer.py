"""Logit distillation on the HF Trainer: the student matches the teacher token by token.

`compute_loss` is the Trainer's documented extension point; everything else (optimizer,
schedule, checkpoints and resume, DDP/FSDP through accelerate, `report_to`) is the stock
Trainer. The teacher's distribution comes either from the teacher itself, run under
`torch.no_grad()` beside the student (online), or from the top-k cache (then no teacher is in
memory at all). Both paths call the same loss functions (losses.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from verticalft.distill.cache import TeacherCache
from verticalft.distill.losses import distill_loss, label_cross_entropy, mix, topk_distill_loss

IGNORE = -100


@dataclass
class LossSettings:
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    ce_weight: float = 0.0
    vocab_size: int | None = None  # trim logits to the shared tokenizer's ids (padded embedding rows)


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
        outputs = model(**inputs)
        vocab = s.vocab_size or outputs.logits.shape[-1]
        mask = labels[:, 1:] != IGNORE
        student = outputs.logits[:, :-1, :vocab][mask]  # [tokens, vocab]
        targets = labels[:, 1:][mask]
        ones = torch.ones(student.shape[0], device=student.device)
        n = float(num_items_in_batch) if num_items_in_batch is not None else None
        if self.cache is not None:
            ids, logp, tail = cached_rows(self.cache, index, student.shape[0], student.device)
            kd = topk_distill_loss(student, ids, logp, ones, s.divergence, s.temperature, s.beta, n, tail)
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits[:, :-1, :vocab][mask]
            kd = distill_loss(
                student, teacher_logits.to(student.dtype), ones, s.divergence, s.temperature, s.beta, n
            )
        ce = label_cross_entropy(student.unsqueeze(0), targets.unsqueeze(0), ones.unsqueeze(0), n)
        loss = mix(kd, ce, s.ce_weight)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        self.kd_log.append(float(kd.detach()))
        return (loss, outputs) if return_outputs else loss
