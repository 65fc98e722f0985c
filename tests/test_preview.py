"""`verticalft preview`: the rendered training examples with the trained tokens marked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from verticalft.models import train_tiny_tokenizer
from verticalft.preview import corpus_example, preference_example, sft_example

ROOT = Path(__file__).resolve().parents[1]


def _tok():
    return train_tiny_tokenizer(["Revenue rose in the quarter.", "Category: payroll"] * 40, 400)


def test_the_assistant_turn_and_its_end_token_are_the_trained_span():
    tok = _tok()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Category?"},
        {"role": "assistant", "content": "payroll"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "yes"},
    ]
    shown = sft_example(tok, messages, 256)
    # by hand from models.CHAT_TEMPLATE: only each assistant turn's content + <|end|> is marked
    assert [text for text, trained in shown.spans if trained] == ["payroll<|end|>", "yes<|end|>"]
    assert "".join(text for text, _ in shown.spans) == tok.apply_chat_template(messages, tokenize=False)
    want = len(tok("payroll<|end|>", add_special_tokens=False)["input_ids"]) + len(
        tok("yes<|end|>", add_special_tokens=False)["input_ids"]
    )
    assert shown.trained == want and shown.tokens > want and not shown.truncated
    cut = sft_example(tok, messages, 5)
    assert cut.truncated and cut.trained == 0  # the answers lie past the first 5 tokens
    assert "no token" in sft_example(tok, messages[:2], 256).note


def test_preference_answers_are_what_follows_the_rendered_prompt():
    tok = _tok()
    prompt = [{"role": "user", "content": "Category?"}]
    parts = preference_example(
        tok,
        prompt,
        [{"role": "assistant", "content": "payroll"}],
        [{"role": "assistant", "content": "rent"}],
        64,
    )
    assert parts["prompt"].spans == [("<|user|>\nCategory?<|end|>\n<|assistant|>\n", False)]
    assert (
        parts["chosen"].spans == [("payroll<|end|>", True)] and parts["rejected"].spans[0][0] == "rent<|end|>"
    )
    text = "Revenue rose. " * 50
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    doc = corpus_example(tok, text, 16)
    assert doc.tokens == doc.trained == n and doc.note.startswith(f"{(n + 15) // 16} block(s) of 16")


@pytest.mark.slow  # a `verticalft preview` process: 12 CPU-seconds
def test_preview_command_on_the_tiny_profile(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", "preview", "recipes/finance.yaml", "-p", "tiny", "-n", "1",
         "--runs-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert (
        "sft: data_pipelines/finance/sample/sft.jsonl" in out and "preferences:" in out and "corpus:" in out
    )
    assert "example 1: " in out and " trained" in out
    assert "⟦" in out and "<|end|>⟧" in out  # piped: the trained span is bracketed, ending on <|end|>
