"""The chunked projection on real (tiny, random) HF models: the teacher cache and the trainer's
loss and gradients equal what the full [batch, seq, vocab] logits give, for a plain model and a
PEFT one whose lm_head is trained (`modules_to_save`), at chunk sizes that do and do not divide
the token count."""

import numpy as np
import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    TrainingArguments,
)

from verticalft.distill import cache as tc
from verticalft.distill.batching import DistillCollator, response_hidden
from verticalft.distill.losses import (
    distill_loss,
    label_cross_entropy,
    mix,
    teacher_topk,
    topk_distill_loss,
)
from verticalft.distill.trainer import LogitDistillTrainer, LossSettings, cached_rows

VOCAB = 300  # model rows
USED = 290  # tokenizer ids: the last rows are padding, trimmed like Qwen's
TINY = {"head_dim": 64, "num_attention_heads": 1, "num_key_value_heads": 1, "num_hidden_layers": 1}
CHUNKS = [1, 7, 10_000, 0]


def tiny(seed: int, hidden: int = 64, cls=LlamaForCausalLM, config=LlamaConfig, **extra):
    torch.manual_seed(seed)
    cfg = config(hidden_size=hidden, intermediate_size=64, vocab_size=VOCAB, **{**TINY, **extra})
    return cls(cfg).eval()


def examples(n: int = 5, seed: int = 0) -> list[dict]:
    """Random conversations of 12-40 tokens whose last part is the response; one has none."""
    g = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(g.integers(12, 40))
        prompt = length if i == 2 else int(g.integers(4, length - 3))
        rows.append(
            {
                "input_ids": g.integers(1, USED, length).tolist(),
                "response_mask": [0] * prompt + [1] * (length - prompt),
            }
        )
    return rows


def batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    return DistillCollator(pad_id=0)([{**r, "example_index": i} for i, r in enumerate(rows)])


def full_logit_rows(teacher, rows, k, temperature, batch_size):
    """The cache rows as the build made them before chunking: full logits, then the mask."""
    out = []
    for start in range(0, len(rows), batch_size):
        b = batch(rows[start : start + batch_size])
        with torch.no_grad():
            logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits, mask = logits[:, :-1, :USED], b["labels"][:, 1:] != -100
        out += [
            [t.numpy() for t in teacher_topk(logits[i][mask[i]], k, temperature)] for i in range(len(mask))
        ]
    return out


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cache_rows_equal_the_full_logit_rows(chunk):
    teacher, rows = tiny(0), examples()
    want = full_logit_rows(teacher, rows, k=8, temperature=2.0, batch_size=3)
    got = list(
        tc.teacher_rows(
            teacher, rows, k=8, temperature=2.0, batch_size=3, vocab_size=USED, pad_id=0, chunk_size=chunk
        )
    )
    assert [len(g[0]) for g in got] == [sum(r["response_mask"][1:]) for r in rows]  # one row per token
    assert len(got[2][0]) == 0  # the example without a response has no rows
    for (gi, gv, gt), (wi, wv, wt) in zip(got, want, strict=True):
        assert np.array_equal(gi, wi)
        assert np.allclose(gv, wv, atol=1e-5) and np.allclose(gt, wt, atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "config", "extra"),
    [
        (LlamaForCausalLM, LlamaConfig, {}),
        (Gemma2ForCausalLM, Gemma2Config, {"final_logit_softcapping": 3.0}),  # tanh soft-capping
        (GraniteForCausalLM, GraniteConfig, {"logits_scaling": 4.0}),  # divides the logits
        (CohereForCausalLM, CohereConfig, {"logit_scale": 0.25}),  # multiplies them
    ],
)
def test_response_hidden_and_head_reproduce_the_models_logits(cls, config, extra):
    model = tiny(1, cls=cls, config=config, **extra)
    b = batch(examples(3, seed=1))
    mask = b["labels"][:, 1:] != -100
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        hidden, head = response_hidden(model, inputs, mask, USED)
        want = model(**inputs).logits[:, :-1, :USED][mask]
    assert hidden.shape == (int(mask.sum()), 64)
    assert torch.allclose(head(hidden), want, atol=1e-5)


def reference_loss(student, teacher, cache, inputs, settings):
    """The trainer's loss as it was computed from the full logits (the pre-chunking code)."""
    s = settings
    inputs = dict(inputs)
    index, labels = inputs.pop("example_index"), inputs.pop("labels")
    mask = labels[:, 1:] != -100
    logits = student(**inputs).logits[:, :-1, : s.vocab_size][mask]
    ones = torch.ones(logits.shape[0])
    if cache is not None:
        ids, logp, tail = cached_rows(cache, index, logits.shape[0], logits.device)
        kd = topk_distill_loss(
            logits,
            ids,
            logp,
            ones,
            kind=s.divergence,
            temperature=s.temperature,
            beta=s.beta,
            num_tokens=None,
            teacher_tail_log=tail,
        )
    else:
        with torch.no_grad():
            t_logits = teacher(**inputs).logits[:, :-1, : s.vocab_size][mask]
        kd = distill_loss(logits, t_logits, ones, kind=s.divergence, temperature=s.temperature, beta=s.beta)
    ce = label_cross_entropy(logits[None], labels[:, 1:][mask][None], ones[None])
    return mix(kd, ce, s.ce_weight)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    rows = examples(6, seed=2)
    root = tmp_path_factory.mktemp("cache") / "c"
    return tc.write_cache(
        root,
        tc.teacher_rows(tiny(3, 96), rows, k=16, temperature=2.0, batch_size=4, vocab_size=USED),
        len(rows),
        16,
        USED,
        {},
    )


@pytest.mark.parametrize("peft", [None, "lm_head", "chat_tokens"])
@pytest.mark.parametrize("mode", ["online", "cache"])
def test_trainer_loss_and_gradients_equal_the_full_logit_reference(mode, peft, cache, tmp_path):
    from peft import LoraConfig, get_peft_model

    student = tiny(4, tie_word_embeddings=peft == "chat_tokens").train()
    if peft == "lm_head":  # LoRA on the body, lm_head trained as a full copy: the copy must be used
        lora = LoraConfig(r=4, target_modules="all-linear", modules_to_save=["lm_head"], lora_dropout=0.0)
        student = get_peft_model(student, lora)
    elif peft == "chat_tokens":  # the stage's default: tied embeddings, a few trainable token rows
        lora = LoraConfig(
            r=4, target_modules="all-linear", trainable_token_indices=[1, 2, 5], lora_dropout=0.0
        )
        student = get_peft_model(student, lora)
    teacher = tiny(3, 96)  # a wider teacher: the cache's
    # jsd: the divergence with the most terms (each kind against the reference: test_distill_losses)
    settings = LossSettings("jsd", temperature=2.0, beta=0.5, ce_weight=0.3, vocab_size=USED)
    inputs = batch(examples(6, seed=2))
    params = [p for p in student.parameters() if p.requires_grad]
    ref = reference_loss(student, teacher, cache if mode == "cache" else None, inputs, settings)
    want = [ref.detach(), *torch.autograd.grad(ref, params)]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    source = {"cache": cache} if mode == "cache" else {"teacher": teacher}
    for chunk in (1, 7, 0):
        settings.chunk_size = chunk
        trainer = LogitDistillTrainer(model=student, args=args, settings=settings, **source)
        loss = trainer.compute_loss(student, dict(inputs))
        got = [loss.detach(), *torch.autograd.grad(loss, params)]
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-6), (chunk, (g - w).abs().max())
    if peft == "lm_head":
        head = student.get_output_embeddings()
        trained = head.modules_to_save["default"].weight
        assert any(p is trained for p in params) and not head.original_module.weight.requires_grad


def test_unknown_logit_post_processing_stops_instead_of_training_on_wrong_targets():
    model = tiny(5, cls=CohereForCausalLM, config=CohereConfig, logit_scale=0.25)
    model.logit_scale = 0.5  # the forward now scales by something the config does not say
    b = batch(examples(2, seed=3))
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with pytest.raises(ValueError, match="post-processes"):
        response_hidden(model, inputs, b["labels"][:, 1:] != -100)


def test_a_cache_merged_from_parts_equals_a_one_pass_build(tmp_path):
    """Parts of whole teacher batches, built in any order by any rank, merge to the same bytes as
    one pass; the ranges cover every example once (13 examples, batches of 2, 4 parts asked)."""
    rows, teacher = examples(13, seed=5), tiny(4, 96)
    ranges = tc.part_ranges(len(rows), 2, parts=4)
    assert ranges == [(0, 4), (4, 8), (8, 12), (12, 13)]  # ceil(13/4)=4 examples, a multiple of 2
    assert tc.parts_of_rank(len(ranges), 1, 3) == [1] and tc.parts_of_rank(len(ranges), 0, 3) == [0, 3]
    one = tc.write_cache(
        tmp_path / "one",
        tc.teacher_rows(teacher, rows, k=16, temperature=2.0, batch_size=2, vocab_size=USED),
        13,
        16,
        USED,
        {},
    )
    parts = [tmp_path / "parts" / f"part-{i}" for i in range(len(ranges))]
    for i in (3, 1, 0, 2):  # the order ranks finish in does not matter
        a, b = ranges[i]
        tc.write_cache(
            parts[i],
            tc.teacher_rows(teacher, rows[a:b], k=16, temperature=2.0, batch_size=2, vocab_size=USED),
            b - a,
            16,
            USED,
            {},
        )
    merged = tc.merge_parts(tmp_path / "merged", parts, USED, {})
    assert tc.is_complete(tmp_path / "merged") and merged.meta["parts"] == 4 and len(merged) == 13
    for name in ("offsets", "ids", "logprobs", "tail"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(one, name))
    for i in range(13):
        for got, want in zip(merged.example(i), one.example(i), strict=True):
            np.testing.assert_array_equal(got, want)
