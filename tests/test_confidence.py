"""An answer's confidence (eval stage, HF backend) is the mean log-probability of the tokens the
model generated — checked against a teacher-forced forward pass over prompt + answer."""

import json
from pathlib import Path

import torch

from verticalft.models import build_tiny_models, load_model, load_tokenizer
from verticalft.scoring import confidence, generate

ROOT = Path(__file__).resolve().parents[1]


def test_mean_logprob_matches_a_forward_pass(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data_pipelines/finance/sample/corpus.jsonl").open()]
    spec = {"teacher": {"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128}}
    folder = build_tiny_models(tmp_path, [r["text"] for r in rows[:200]], spec, vocab_size=512, seed=0)[
        "teacher"
    ]
    model, tok = load_model(folder), load_tokenizer(folder)
    prompts = ["What is EBITDA?", "Net income of 3 and 4 is", "Classify: revenue rose 5%"]
    chats = [[{"role": "user", "content": p}] for p in prompts]
    done = generate(model, tok, chats, max_new_tokens=6, batch_size=3)  # batched, left-padded
    for prompt, c in zip(prompts, done, strict=True):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        # the greedy continuation, one prompt alone (no padding), and its token log-probs
        gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)  # fmt: skip
        new = gen[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        full = torch.tensor([ids[0].tolist() + new])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), dim=-1)
        want = sum(logp[ids.shape[1] - 1 + i, t].item() for i, t in enumerate(new)) / len(new)
        assert abs(c.mean_logprob - want) < 1e-3
        assert 0.0 < confidence(c.mean_logprob) <= 1.0
    assert confidence(None) is None
