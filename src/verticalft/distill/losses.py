"""Distillation losses as small pure functions over log-probabilities.

Every divergence is computed on *bucketed* distributions: either the full vocabulary, or the
teacher's top-k tokens plus one explicit "tail" bucket holding the probability mass outside
the top-k (for the student: its mass outside the *teacher's* top-k ids). With k = vocab size
the tail is empty and the bucketed value equals the full-vocabulary one (tested), so the
cached path and the online path are the same loss, not two approximations.

Conventions follow TRL's generalized JSD (`beta` = weight of the teacher in the mixture):
forward KL = KL(teacher ‖ student) (mode covering, TRL beta=0), reverse KL =
KL(student ‖ teacher) (mode seeking, beta=1), `jsd` = beta·KL(t ‖ m) + (1-beta)·KL(s ‖ m) with
m = beta·t + (1-beta)·s, bounded by log 2. `tv` = ½ Σ |t - s|.

Temperature T divides both sets of logits; the divergence is multiplied by T² so gradient
magnitudes stay comparable across temperatures (Hinton et al., 2015).

Normalisation: per-token divergences are summed over *response* tokens (mask) and divided by
the number of response tokens in the batch — or by `num_tokens` when the caller passes the
count over all gradient-accumulation micro-batches — so every response token weighs the same
whatever the sequence lengths, padding or batch composition.

At real vocabularies (49k-152k ids) the [tokens, vocab] fp32 logits and log-probs are the
largest tensors of a step (4 x 4,096 positions x 152k ids = 10 GB per copy), so the trainer and
the cache build never make them for all positions: they take the final hidden states at the
response positions and project them to the vocabulary `chunk_size` positions at a time
(`chunked_token_sum`), with each chunk under activation checkpointing when gradients flow, as
Liger-Kernel's chunked/fused-linear losses do. The per-position functions below are shared by
the full-logit losses and the chunked path, so both compute the same number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tv"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "tv")
# Positions projected to the vocabulary at once: 1,024 x 152,064 ids x 4 bytes = 0.6 GB per fp32
# copy (a few live in a divergence), against 10 GB per copy for a 4 x 4,096 batch unchunked.
DEFAULT_CHUNK = 1024


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dim from log-probs; 0·log 0 = 0 (empty tail buckets)."""
    p = p_log.exp()
    # q = 0 where p > 0 (a cached tail rounded to nothing) would be +inf: floor q at e^-100.
    terms = torch.where(p > 0, p * (p_log - q_log.clamp(min=-100.0)), torch.zeros_like(p))
    return terms.sum(-1)


def bucket_divergence(
    student_log: torch.Tensor, teacher_log: torch.Tensor, kind: Divergence, beta: float = 0.5
) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probs over the same buckets."""
    if kind == "forward_kl":
        return _kl(teacher_log, student_log)
    if kind == "reverse_kl":
        return _kl(student_log, teacher_log)
    if kind == "tv":
        return 0.5 * (teacher_log.exp() - student_log.exp()).abs().sum(-1)
    if kind == "jsd":
        if beta <= 0.0:
            return _kl(teacher_log, student_log)
        if beta >= 1.0:
            return _kl(student_log, teacher_log)
        mix = torch.logsumexp(
            torch.stack([student_log + math.log1p(-beta), teacher_log + math.log(beta)]), dim=0
        )
        return beta * _kl(teacher_log, mix) + (1 - beta) * _kl(student_log, mix)
    raise ValueError(f"unknown divergence '{kind}'; one of {', '.join(DIVERGENCES)}")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x ≤ 0, numerically stable; -inf where x == 0 (no tail mass)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def with_tail(topk_log: torch.Tensor) -> torch.Tensor:
    """Append the tail bucket log(1 - Σ top-k probs) to top-k log-probs: [..., k] → [..., k+1]."""
    tail = log1mexp(torch.logsumexp(topk_log, dim=-1, keepdim=True))
    return torch.cat([topk_log, tail], dim=-1)


def masked_token_mean(
    per_token: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> torch.Tensor:
    """Σ over masked positions / number of those positions (or `num_tokens` across micro-batches)."""
    mask = mask.to(per_token.dtype)
    denom = torch.as_tensor(num_tokens if num_tokens is not None else mask.sum(), dtype=per_token.dtype)
    return (per_token * mask).sum() / denom.clamp(min=1.0)


def full_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position D(teacher_T ‖ student_T) over the full vocabulary, in fp32 (no T², no mean)."""
    s_log = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return bucket_divergence(s_log, t_log, kind, beta)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """T² · mean over response tokens of D(teacher_T ‖ student_T), full vocabulary.

    Logits are [batch, seq, vocab] already aligned (position i predicts token i+1); `mask` is
    [batch, seq], true where position i's target is a response token.
    """
    per_token = full_divergence(student_logits, teacher_logits, kind, temperature, beta)
    return temperature**2 * masked_token_mean(per_token, mask, num_tokens)


def teacher_topk(
    teacher_logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k (ids, log-probs) at temperature T and the log of the mass outside
    them, computed in fp32 before anything is rounded: what the cache stores."""
    t_log = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = t_log.topk(min(k, t_log.shape[-1]), dim=-1)
    tail = log1mexp(torch.logsumexp(values, dim=-1))
    return ids, values, tail


def topk_divergence(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_topk_log: torch.Tensor,
    *,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    teacher_tail_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position divergence over the teacher's k ids + the tail bucket (no T², no mean)."""
    s_full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    ids = teacher_ids.long()
    s_top = s_full.gather(-1, ids)
    # The student's tail is the log-sum of its probabilities outside the k ids, not log(1 - Σ top-k):
    # once a confident student puts all but ~1e-8 of its mass on the k ids, Σ top-k rounds to 1 in
    # fp32, log(1 - 1) = -inf, and its gradient (0 · inf) turns every weight into NaN.
    s_tail = s_full.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    t_top = teacher_topk_log.float()
    t_buckets = (
        with_tail(t_top)
        if teacher_tail_log is None
        else torch.cat([t_top, teacher_tail_log.float().unsqueeze(-1)], dim=-1)
    )
    return bucket_divergence(torch.cat([s_top, s_tail], dim=-1), t_buckets, kind, beta)


def topk_distill_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_topk_log: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_tokens: float | None = None,
    teacher_tail_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss from a cached top-k: both distributions over the teacher's k ids + the tail.

    `teacher_topk_log` are log-probs at temperature T (as `teacher_topk` returns them) and
    `teacher_tail_log` the log of the teacher's mass outside them (rebuilt from the top-k when
    not given); the student's log-probs are taken at the same ids and its remaining mass forms
    its own tail bucket.
    """
    per_token = topk_divergence(
        student_logits,
        teacher_ids,
        teacher_topk_log,
        kind=kind,
        temperature=temperature,
        beta=beta,
        teacher_tail_log=teacher_tail_log,
    )
    return temperature**2 * masked_token_mean(per_token, mask, num_tokens)


def token_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy in fp32: logits [..., vocab], labels [...]."""
    flat = student_logits.float().reshape(-1, student_logits.shape[-1])
    per = F.cross_entropy(flat, labels.clamp(min=0).reshape(-1), reduction="none")
    return per.reshape(labels.shape)


def label_cross_entropy(
    student_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> torch.Tensor:
    """Plain next-token cross-entropy on the response tokens, normalised like the divergences."""
    return masked_token_mean(token_cross_entropy(student_logits, labels), mask, num_tokens)


def chunked_token_sum(
    per_token: Callable[..., torch.Tensor],
    hidden: torch.Tensor,
    *rows: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Σ over tokens of `per_token(hidden[a:b], *(r[a:b] for r in rows))`, `chunk_size` tokens at a time.

    `hidden` [tokens, hidden] are final hidden states and `per_token` projects its chunk to the
    vocabulary and returns per-token terms [chunk, ...]; `rows` are per-token side inputs
    (teacher hidden states, cached top-k, labels). With gradients on, each chunk runs under
    non-reentrant `torch.utils.checkpoint`: autograd keeps only the chunk's inputs and its
    per-token terms, and recomputes the chunk's [chunk, vocab] logits in backward, so peak
    memory is one chunk's logits whatever the token count. (Non-reentrant, so a weight used by
    every chunk gets one summed gradient per backward — DDP requires that.) `chunk_size` 0
    means every token in one chunk.
    """
    n = hidden.shape[0]
    step = chunk_size if chunk_size > 0 else max(n, 1)

    def chunk(a: int) -> torch.Tensor:
        args = (hidden[a : a + step], *(r[a : a + step] for r in rows))
        if torch.is_grad_enabled():
            return checkpoint(per_token, *args, use_reentrant=False).sum(0)
        return per_token(*args).sum(0)

    return torch.stack([chunk(a) for a in range(0, max(n, 1), step)]).sum(0)


def mix(kd: torch.Tensor, ce: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """(1 - w)·KD + w·CE: `ce_weight` 0 is pure distillation, 1 is plain SFT on the labels."""
    return (1.0 - ce_weight) * kd + ce_weight * ce
