"""Templates without `{% generation %}` markers, unknown to TRL and not ChatML: the assistant turns
are found by rendering prefixes (chat_templates.assistant_masks), sft trains on exactly them, and
`preview` shows them."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from verticalft import chat_templates as ct
from verticalft.models import END_TOKEN, train_tiny_tokenizer
from verticalft.preview import sft_example

# "### User / ### Assistant" (Alpaca/Vicuna style): no markers, no ChatML, no TRL family.
HASH_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' %}{{ '### User:\\n' + m['content'] + '\\n\\n' }}"
    "{%- else %}{{ '### Assistant:\\n' + m['content'] + '<|end|>\\n\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Assistant:\\n' }}{%- endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Category of the payment?"},
    {"role": "assistant", "content": "payroll"},
    {"role": "user", "content": "Sure?"},
    {"role": "assistant", "content": "Yes: it is the\nmonthly payroll run."},
]


def tokenizer(template: str = HASH_TEMPLATE):
    tok = train_tiny_tokenizer(["Revenue rose in the quarter.", "Category: payroll", "### User:"] * 40, 400)
    tok.chat_template = template
    return tok


def runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i, (tid, m) in enumerate(zip(ids, mask, strict=True)):
        if m and (i == 0 or not mask[i - 1]):
            out.append([])
        if m:
            out[-1].append(tid)
    return out


def test_the_template_has_no_training_variant():
    # the premise: the run's own template is refused wherever a marked variant is needed
    with pytest.raises(ct.NoTrainingVariant):
        ct.training_template(tokenizer())
    with pytest.raises(ct.ChatTemplateError):
        ct.use_run_template(tokenizer(), require_mask=True)  # distillation keeps needing markers


def test_trained_tokens_are_exactly_each_assistant_content_and_end_token():
    tok = ct.use_run_template(tokenizer(), require_mask=True, prefix_masks=True)
    assert tok.chat_template == HASH_TEMPLATE  # kept as it is: nothing swapped in
    enc = ct.assistant_masks(tok, CONVERSATION)
    # the same tokens apply_chat_template gives, so training sees the text serving renders
    assert (
        enc["input_ids"]
        == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    )
    # by hand: the two assistant contents, each closed by <|end|>; headers and separators untrained
    expected = ["payroll" + END_TOKEN, "Yes: it is the\nmonthly payroll run." + END_TOKEN]
    assert [tok.decode(run) for run in runs(enc["input_ids"], enc["assistant_masks"])] == expected
    want = [tok(text, add_special_tokens=False)["input_ids"] for text in expected]
    assert runs(enc["input_ids"], enc["assistant_masks"]) == want


def test_preview_shows_the_prefix_masked_turns():
    tok = ct.use_run_template(tokenizer(), require_mask=True, prefix_masks=True)
    shown = sft_example(tok, CONVERSATION, 512)
    assert [text for text, trained in shown.spans if trained] == [
        "payroll" + END_TOKEN,
        "Yes: it is the\nmonthly payroll run." + END_TOKEN,
    ]
    assert "".join(text for text, _ in shown.spans) == tok.apply_chat_template(CONVERSATION, tokenize=False)


def test_templates_that_cannot_be_cut_by_prefix_say_why():
    # the end of turn is plain text, not a special token: the model would never learn to stop
    plain_end = HASH_TEMPLATE.replace("<|end|>", "</end>")
    with pytest.raises(ct.ChatTemplateError, match="never learn to stop"):
        ct.use_run_template(tokenizer(plain_end), require_mask=True, prefix_masks=True)
    # the last assistant turn is rendered differently from earlier ones: no prefix to cut at
    moving = HASH_TEMPLATE.replace(
        "m['content'] + '<|end|>", "m['content'] + ('.' if loop.last else '') + '<|end|>"
    )
    with pytest.raises(ct.ChatTemplateError, match="not a prefix"):
        ct.use_run_template(tokenizer(moving), require_mask=True, prefix_masks=True)


def test_an_sft_step_trains_on_the_prefix_masks(tmp_path):
    """The sft stage's own preparation (`prefix_masked`) into TRL's SFTTrainer: TRL takes the rows
    as processed, its labels are the assistant tokens only, and a training step runs."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from verticalft.stages.sft import prefix_masked

    tok = ct.use_run_template(tokenizer(), require_mask=True, prefix_masks=True)
    rows = Dataset.from_list([{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}])
    data = prefix_masked(rows, tok, None)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, packing=False, max_length=512,
        report_to=[], use_cpu=True, bf16=False, save_strategy="no",
    )  # fmt: skip
    trainer = SFTTrainer(model=LlamaForCausalLM(config), args=args, train_dataset=data, processing_class=tok)
    first = trainer.train_dataset[0]
    trained = [t for t, label in zip(first["input_ids"], first["labels"], strict=True) if label != -100]
    assert tok.decode(trained) == "payroll" + END_TOKEN + "Yes: it is the\nmonthly payroll run." + END_TOKEN
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0
