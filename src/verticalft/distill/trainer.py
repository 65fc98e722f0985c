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

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from verticalft.distill.batching import IGNORE, response_hidden
from verticalft.distill.cache import TeacherCache
from verticalft.distill.losses import (
    DEFAULT_CHUNK,
    Divergence,
    chunked_token_sum,
    full_divergence,
    mix,
    token_cross_entropy,
    topk_divergence,
)


@dataclass
class LossSettings:
    divergence: Divergence = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    ce_weight: float = 0.0
    vocab_size: int | None = None  # trim logits to the shared tokenizer's ids (padded embedding rows)
    chunk_size: int = DEFAULT_CHUNK  # response positions projected to the vocabulary at once (0: all)


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
                return topk_divergence(
                    logits,
                    ids,
                    logp,
                    kind=s.divergence,
                    temperature=s.temperature,
                    beta=s.beta,
                    teacher_tail_log=tail,
                )
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
