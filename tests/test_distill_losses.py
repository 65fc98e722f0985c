import math

import pytest
import torch
import torch.nn.functional as F

from verticalft.distill.losses import (
    DIVERGENCES,
    bucket_divergence,
    chunked_token_sum,
    distill_loss,
    full_divergence,
    label_cross_entropy,
    masked_token_mean,
    mix,
    teacher_topk,
    token_cross_entropy,
    topk_distill_loss,
    topk_divergence,
    with_tail,
)

V = 50


def logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergence_of_a_distribution_with_itself_is_zero(kind):
    t = logits(2, 7, V)
    assert distill_loss(t, t.clone(), torch.ones(2, 7), kind=kind, temperature=2.0).abs() < 1e-6


def test_forward_and_reverse_kl_differ_on_asymmetric_inputs():
    s, t = logits(4, V, seed=1), logits(4, V, scale=6.0, seed=2)
    mask = torch.ones(4)
    fwd = distill_loss(s, t, mask, kind="forward_kl")
    rev = distill_loss(s, t, mask, kind="reverse_kl")
    assert fwd > 0 and rev > 0 and abs(fwd - rev) > 0.05
    # forward KL(t‖s) is reverse KL with the roles swapped
    assert torch.allclose(fwd, distill_loss(t, s, mask, kind="reverse_kl"))


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_is_bounded_by_log_2(beta):
    # far-apart one-hot-like distributions approach the bound (the binary entropy of beta ≤ log 2)
    s, t = logits(64, V, scale=40.0, seed=3), logits(64, V, scale=40.0, seed=4)
    per = bucket_divergence(F.log_softmax(s, -1), F.log_softmax(t, -1), "jsd", beta)
    h_beta = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert (per >= -1e-6).all() and (per <= h_beta + 1e-5).all() and h_beta <= math.log(2) + 1e-12
    assert per.max() > 0.9 * h_beta


def test_tv_is_half_the_l1_distance_and_at_most_one():
    s, t = logits(8, V, seed=5), logits(8, V, seed=6)
    per = bucket_divergence(F.log_softmax(s, -1), F.log_softmax(t, -1), "tv")
    assert torch.allclose(per, 0.5 * (s.softmax(-1) - t.softmax(-1)).abs().sum(-1))
    assert (per <= 1.0).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_temperature_softens_both_and_scales_by_t_squared(kind):
    s, t = logits(3, 5, V, seed=7), logits(3, 5, V, seed=8)
    mask = torch.ones(3, 5)
    T = 2.5
    manual = bucket_divergence(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), kind).mean()
    assert torch.allclose(distill_loss(s, t, mask, kind=kind, temperature=T), T**2 * manual, rtol=1e-5)


def test_normalised_per_response_token_not_per_sequence():
    s, t = logits(2, 6, V, seed=9), logits(2, 6, V, seed=10)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    per = bucket_divergence(F.log_softmax(s, -1), F.log_softmax(t, -1), "forward_kl")
    loss = distill_loss(s, t, mask, kind="forward_kl")
    # the mean over the 6 response tokens, so the 5-token row weighs 5x the 1-token row …
    assert torch.allclose(loss, per[mask].mean())
    assert not torch.allclose(loss, torch.stack([per[0][mask[0]].mean(), per[1][mask[1]].mean()]).mean())
    # … padding and masked positions change nothing, whatever their logits
    s2 = s.clone()
    s2[~mask] = 1e3
    assert torch.allclose(distill_loss(s2, t, mask, kind="forward_kl"), loss)
    # with gradient accumulation the caller passes the token count of all micro-batches
    assert torch.allclose(distill_loss(s, t, mask, kind="forward_kl", num_tokens=12), loss / 2)
    assert masked_token_mean(per, torch.zeros_like(mask)) == 0  # no response token: 0, not nan


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_top_k_with_tail_equals_full_vocabulary_at_k_equal_vocab(kind, T):
    s, t = logits(2, 4, V, seed=11), logits(2, 4, V, seed=12)
    mask = torch.ones(2, 4)
    ids, top, tail = teacher_topk(t, V, T)
    full = distill_loss(s, t, mask, kind=kind, temperature=T)
    assert torch.allclose(topk_distill_loss(s, ids, top, mask, kind=kind, temperature=T), full, atol=1e-5)
    assert torch.allclose(
        topk_distill_loss(s, ids, top, mask, kind=kind, temperature=T, teacher_tail_log=tail), full, atol=1e-5
    )


def test_top_k_keeps_the_tail_mass_explicitly():
    s, t = logits(16, V, seed=13), logits(16, V, seed=14)
    ids, top, tail = teacher_topk(t, 8, 1.0)
    # the k probabilities plus the tail bucket are a whole distribution …
    assert torch.allclose(with_tail(top).exp().sum(-1), torch.ones(16), atol=1e-5)
    assert torch.allclose(tail.exp(), 1 - top.exp().sum(-1), atol=1e-6)
    # … and the loss differs from one that renormalises the top-k and forgets the tail
    mask = torch.ones(16)
    with_tail_loss = topk_distill_loss(s, ids, top, mask, kind="forward_kl", teacher_tail_log=tail)
    renorm = bucket_divergence(
        F.log_softmax(s.gather(-1, ids), -1), F.log_softmax(top, -1), "forward_kl"
    ).mean()
    assert abs(with_tail_loss - renorm) > 1e-3
    # a larger k gets closer to the full-vocabulary value
    full = distill_loss(s, t, mask, kind="forward_kl")
    errs = []
    for k in (4, 16, 48):
        i, v, tl = teacher_topk(t, k, 1.0)
        errs.append(abs(topk_distill_loss(s, i, v, mask, kind="forward_kl", teacher_tail_log=tl) - full))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_a_student_confident_on_the_teachers_ids_keeps_finite_gradients(kind):
    # The student puts all but e^-40 of its mass on one of the teacher's ids: Σ top-k rounds to 1
    # in fp32. Its tail bucket must still be log of the mass outside (≈ -40 + log(V - k)), and the
    # gradient finite: log(1 - Σ top-k) = log 0 made every weight NaN after ~20 steps of a real run.
    t = logits(4, V, seed=21)
    ids, top, tail = teacher_topk(t, 8, 1.0)
    s = torch.zeros(4, V)
    s.scatter_(-1, ids[:, :1], 40.0)  # one teacher id at +40, the other V - 1 ids at 0
    s.requires_grad_(True)
    per = topk_divergence(s, ids, top, kind=kind, teacher_tail_log=tail)
    per.sum().backward()
    assert torch.isfinite(per).all() and torch.isfinite(s.grad).all()
    # by hand, forward KL: Σ p_i (log p_i − log q_i) over the k ids and the tail bucket, where the
    # student's log q = x_i − log(e^40 + (V − 1)), its tail (V − k) ids at 0
    log_z = math.log(math.exp(40.0) + V - 1)
    q = torch.where(ids == ids[:, :1], 40.0 - log_z, -log_z)
    q = torch.cat([q, torch.full((4, 1), math.log(V - 8) - log_z)], dim=-1)
    p = torch.cat([top, tail.unsqueeze(-1)], dim=-1)
    if kind == "forward_kl":
        assert torch.allclose(per, (p.exp() * (p - q)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_matches_trl_generalized_jsd(beta, T):
    from trl.experimental.gkd import GKDTrainer

    s, t = logits(3, 9, V, seed=15), logits(3, 9, V, seed=16)
    labels = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(17))
    labels[:, :3] = -100
    mask = labels != -100
    trl = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=T)
    ours = distill_loss(s, t, mask, kind="jsd", temperature=T, beta=beta)
    # TRL does not apply the T² factor; otherwise the same number
    assert torch.allclose(ours / T**2, trl, rtol=1e-5, atol=1e-6)
    if beta == 0.0:
        assert torch.allclose(ours, distill_loss(s, t, mask, kind="forward_kl", temperature=T))
    if beta == 1.0:
        assert torch.allclose(ours, distill_loss(s, t, mask, kind="reverse_kl", temperature=T))


def test_cross_entropy_mix():
    s = logits(2, 5, V, seed=18)
    labels = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(19))
    mask = torch.ones(2, 5, dtype=torch.bool)
    ce = label_cross_entropy(s, labels, mask)
    assert torch.allclose(ce, F.cross_entropy(s.reshape(-1, V), labels.reshape(-1)))
    kd = torch.tensor(2.0)
    assert mix(kd, ce, 0.0) == kd and mix(kd, ce, 1.0) == ce


# ------------------------------------------------------------------ chunked projection
N, H = 23, 16  # 23 response tokens: chunks of 7 leave a remainder of 2
CHUNKS = [1, 7, 100, 0]  # one token, a non-divisor, more than the tokens, 0 = all at once


def hidden_and_head(seed=20):
    """Final hidden states [N, H] (requiring grad, like the decoder's output) and an lm_head [H → V]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).requires_grad_()
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
    return hidden, head


def value_and_grads(loss, hidden, head):
    return (loss.detach(), *torch.autograd.grad(loss, [hidden, head.weight]))


def assert_same(got, want):
    for g, w, name in zip(got, want, ("loss", "d/d hidden", "d/d lm_head"), strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-7), (name, (g - w).abs().max())


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_full_vocabulary_loss_and_gradients_equal_the_full_logit_loss(kind, chunk):
    hidden, head = hidden_and_head()
    teacher, T, beta = logits(N, V, seed=21), 2.0, 0.3
    want = value_and_grads(
        distill_loss(head(hidden), teacher, torch.ones(N), kind=kind, temperature=T, beta=beta), hidden, head
    )
    total = chunked_token_sum(
        lambda h, t: full_divergence(head(h), t, kind, T, beta), hidden, teacher, chunk_size=chunk
    )
    assert_same(value_and_grads(T**2 * total / N, hidden, head), want)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_chunked_top_k_loss_and_gradients_equal_the_full_logit_loss(kind, chunk):
    hidden, head = hidden_and_head(seed=22)
    T, beta = 2.0, 0.5
    ids, top, tail = teacher_topk(logits(N, V, seed=23), 8, T)
    ref = topk_distill_loss(
        head(hidden), ids, top, torch.ones(N), kind=kind, temperature=T, beta=beta, teacher_tail_log=tail
    )
    total = chunked_token_sum(
        lambda h, i, v, tl: topk_divergence(
            head(h), i, v, kind=kind, temperature=T, beta=beta, teacher_tail_log=tl
        ),
        hidden,
        ids,
        top,
        tail,
        chunk_size=chunk,
    )
    assert_same(value_and_grads(T**2 * total / N, hidden, head), value_and_grads(ref, hidden, head))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_cross_entropy_equals_the_full_logit_one(chunk):
    hidden, head = hidden_and_head(seed=24)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(25))
    ref = label_cross_entropy(head(hidden)[None], labels[None], torch.ones(1, N))
    total = chunked_token_sum(lambda h, y: token_cross_entropy(head(h), y), hidden, labels, chunk_size=chunk)
    assert_same(value_and_grads(total / N, hidden, head), value_and_grads(ref, hidden, head))


def test_chunks_keep_no_vocabulary_sized_tensor_for_backward():
    """What bounds memory: autograd keeps the chunks' inputs, never their [chunk, vocab] logits."""
    hidden, head = hidden_and_head(seed=26)
    ids, top, tail = teacher_topk(logits(N, V, seed=27), 8)  # the cached path's per-token rows

    def kept_for_backward(loss_fn):
        shapes: list[tuple[int, ...]] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t
        ):
            loss = loss_fn()
        return loss, shapes

    total, chunked = kept_for_backward(
        lambda: chunked_token_sum(
            lambda h, i, v, tl: topk_divergence(head(h), i, v, teacher_tail_log=tl),
            hidden,
            ids,
            top,
            tail,
            chunk_size=7,
        )
    )
    _, full = kept_for_backward(lambda: topk_distill_loss(head(hidden), ids, top, torch.ones(N)))
    assert (N, V) in full  # the full-logit loss keeps [tokens, vocab] tensors for backward …
    assert all(V not in shape for shape in chunked), chunked  # … the chunked one none
    total.backward()  # its backward recomputes them: gradients still arrive
    assert hidden.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
