"""One chat template per run, in its *training variant*, for every stage and for serving.

Why: assistant-only loss (SFT's `assistant_only_loss`, the distillation trainer's and the teacher
cache's `return_assistant_tokens_mask`) needs `{% generation %}` … `{% endgeneration %}` around
what the assistant writes. Real templates (SmolLM2's ChatML, Qwen, Llama) have no markers: TRL's
SFTTrainer swaps in its own training template for the families it knows and raises for the
others, and `apply_chat_template(..., return_assistant_tokens_mask=True)` returns an all-zero
mask with only a log line, so a logit loss silently trains on nothing.

`models.chat_template` in the recipe chooses the template (`choice` below):

- null or `model`: the model's own template;
- a TRL training template name (`qwen2_5`, `qwen3`, `llama3`, … — `trl_template_names()`): the
  `<name>_training.jinja` TRL ships;
- `chatml`: standard ChatML with markers (`CHATML_FILE`; TRL ships no plain ChatML template);
- a path to a `.jinja` file.

`training_template` turns it into the training variant: the template itself when it has markers
(the tiny models' template); else TRL's training template when TRL knows it
(`get_training_chat_template`); else, for ChatML-style templates, `chatml_training_template`
(markers around each assistant turn's content and its `<|im_end|>`), used only after it rendered
byte-identical text to the model's own template on `PROBES`. The variant renders the same text
as the template it stands for (TRL's Qwen3-family variants, by design, keep the think block of
earlier assistant turns in multi-turn history; single-turn prompts are identical), so
`models.load_tokenizer` puts it on the tokenizer and every stage trains, evaluates and saves
(tokenizer_config / chat_template.jinja) with it. vLLM renders `{% generation %}` tags through
transformers' `apply_chat_template` too (it registers the same jinja extension), so served
prompts are training prompts.

Render variables: `models.chat_template_kwargs` (e.g. `{enable_thinking: false}`) go to every
render of the template as jinja variables. Reasoning templates need them: Qwen3's renders an
empty think block after the generation prompt only when `enable_thinking` is false, and without
it the model thinks first (through all of an eval's `max_new_tokens`). Each path takes them its
own library's way: `apply_chat_template(..., **kwargs)` (HF eval and teacher generation, the
distillation mask), a `chat_template_kwargs` column on the rows TRL's SFT/DPO trainers tokenize
(`with_template_kwargs`), DistillationConfig's `chat_template_kwargs`, vLLM's `LLM.chat(...,
chat_template_kwargs=)` and its server's `--default-chat-template-kwargs` (`server_args`).

Templates with none of these (no markers, unknown to TRL, not ChatML: a Llama-2 `[INST]` or a
`### Assistant:` template) can still train sft: `assistant_masks` then finds each assistant turn by
rendering conversation prefixes (axolotl's `roles_to_train` idea) and sft hands TRL the tokenized
rows with their `assistant_masks`; `prefix_mask_problem` says (at validate) when a template cannot
be cut that way. The distillation paths still need markers.

Mask extent: the derived ChatML variant masks exactly the content and `<|im_end|>`. TRL's
variants place the markers their own way, e.g. Qwen2.5's also covers the newline that ends the
`<|im_start|>assistant` header and the one after `<|im_end|>` (fixed tokens, harmless to train).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODEL_CHOICE = "model"
# `models.chat_template: chatml`: standard ChatML (`<|im_start|>role\n…<|im_end|>\n`, no default
# system turn) with markers, for models whose own template is ChatML-like but not byte-identical
# (or absent). The file is `chatml_training_template(None)`, shipped so vLLM gets it as a path.
CHATML_CHOICE = "chatml"
CHATML_FILE = Path(__file__).parent / "templates" / "chatml_training.jinja"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FIX = (
    "set models.chat_template: <a TRL name, e.g. qwen2_5, qwen3, llama3> or a .jinja path with "
    "{% generation %} markers"
)
# what trl.chat_template_utils.has_generation_markers looks for (without importing TRL)
_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
# ChatML for [user "x"]: an optional default system turn (SmolLM2 writes one when none is given).
_CHATML_PROBE = re.compile(
    r"(?:<\|im_start\|>system\n(.*)<\|im_end\|>\n)?<\|im_start\|>user\nx<\|im_end\|>\n", re.S
)


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# Conversations a derived template must render byte-identically to the model's own (with and
# without add_generation_prompt): the shapes the toolkit sends, plus awkward content.
PROBES: list[list[dict[str, str]]] = [
    [_msg("user", "Hi")],
    [_msg("system", "You answer tersely."), _msg("user", "What is 2+2?")],
    [_msg("user", "What is 2+2?"), _msg("assistant", "4")],
    [_msg("user", "a"), _msg("assistant", "b"), _msg("user", "c")],
    [
        _msg("system", "s"),
        _msg("user", "q1"),
        _msg("assistant", "a1"),
        _msg("user", "q2"),
        _msg("assistant", "a2"),
    ],
    [_msg("user", "  leading and trailing  \n"), _msg("assistant", "\nline one\n\nline two\n")],
    [_msg("user", "quotes ' \" {{ x }} {% if %} é 中文 🙂"), _msg("assistant", "tabs\tand <b>tags</b>")],
    [_msg("user", ""), _msg("assistant", "")],
]


class ChatTemplateError(ValueError):
    """The run's chat template cannot be used as asked; the message says what to set."""


class NoTrainingVariant(ChatTemplateError):
    """The template has no markers, TRL has no variant of it and it is not ChatML: its assistant
    turns can still be found by rendering prefixes (`prefix_assistant_masks`) where the caller does."""


# --------------------------------------------------------------------------- the recipe's choice
def trl_templates_dir() -> Path:
    """TRL's `chat_templates/` folder, found without importing TRL (recipe validation stays fast)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise ChatTemplateError("TRL is not installed: its training templates are unavailable")
    return Path(next(iter(spec.submodule_search_locations))) / "chat_templates"


def trl_template_names() -> list[str]:
    """Names `models.chat_template` accepts for TRL's training templates (`<name>_training.jinja`)."""
    return sorted(
        p.name.removesuffix("_training.jinja") for p in trl_templates_dir().glob("*_training.jinja")
    )


def choice_problem(choice: str | None) -> str | None:
    """Why the recipe's `models.chat_template` cannot be used (None if it can); no tokenizer needed."""
    if choice in (None, MODEL_CHOICE):
        return None
    assert choice is not None
    if choice.endswith(".jinja"):
        return (
            None if Path(choice).is_file() else f"{choice}: file not found (paths resolve from {Path.cwd()})"
        )
    names = sorted([*trl_template_names(), CHATML_CHOICE])
    if choice in names:
        return None
    close = difflib.get_close_matches(choice, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (
        f"'{choice}' is not a known chat template{hint}; use one of {', '.join(names)}, "
        f"a path to a .jinja file, or `{MODEL_CHOICE}` (the model's own template)"
    )


def chosen_template_path(choice: str | None) -> Path | None:
    """The file the recipe chose (TRL's `<name>_training.jinja` or the `.jinja` path), None for the
    model's own template. vLLM gets it as `--chat-template` / `chat_template=`, since a base folder
    served as it is would render with its own template."""
    problem = choice_problem(choice)
    if problem:
        raise ChatTemplateError(f"models.chat_template: {problem}")
    if choice in (None, MODEL_CHOICE):
        return None
    assert choice is not None
    if choice == CHATML_CHOICE:
        return CHATML_FILE.resolve()
    path = Path(choice) if choice.endswith(".jinja") else trl_templates_dir() / f"{choice}_training.jinja"
    return path.resolve()


def chosen_template(choice: str | None) -> str | None:
    """The text of the recipe's chosen template, None for the model's own."""
    path = chosen_template_path(choice)
    return path.read_text(encoding="utf-8") if path else None


# --------------------------------------------------------------------------- render variables
# apply_chat_template's own arguments: a recipe variable of the same name would clash with them
RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


def kwargs_problem(kwargs: Mapping[str, Any]) -> str | None:
    """Why `models.chat_template_kwargs` cannot be passed to every render (None if it can): names
    that are apply_chat_template's own arguments, and values vLLM's JSON flag cannot carry."""
    clash = sorted(RESERVED_KWARGS & set(kwargs))
    if clash:
        return f"{', '.join(clash)}: apply_chat_template's own argument(s), not template variables"
    try:
        json.dumps(dict(kwargs))
    except TypeError as exc:
        return f"values must be JSON (vLLM's server takes them as JSON): {exc}"
    return None


def with_template_kwargs(dataset: Any, kwargs: Mapping[str, Any] | None) -> Any:
    """`dataset` with a `chat_template_kwargs` column (the same dict on every row): how TRL's
    SFTTrainer and DPOTrainer take template variables (they read `example["chat_template_kwargs"]`
    when they tokenize; their configs have no such option). Unchanged when there are none."""
    if not kwargs:
        return dataset
    return dataset.map(lambda _: {"chat_template_kwargs": dict(kwargs)})


def server_args(kwargs: Mapping[str, Any] | None) -> list[str]:
    """vLLM server arguments that make every request render with `kwargs` (request-level
    `chat_template_kwargs` still win, as vLLM merges them over these defaults)."""
    return ["--default-chat-template-kwargs", json.dumps(dict(kwargs))] if kwargs else []


# --------------------------------------------------------------------------- the training variant
def has_generation_markers(template: str) -> bool:
    return _MARKER.search(template) is not None


def chatml_training_template(default_system: str | None = None) -> str:
    """ChatML with `{% generation %}` around each assistant turn's content *and* its `<|im_end|>`
    (so the model learns to stop), not around the `<|im_start|>assistant\\n` header or the newline
    after the turn. `default_system` is the system turn the model's template writes when the
    conversation does not start with one (SmolLM2: "You are a helpful AI assistant named SmolLM…")."""
    head = ""
    if default_system is not None:
        literal = json.dumps(f"{IM_START}system\n{default_system}{IM_END}\n", ensure_ascii=False)
        head = "{%- if loop.first and message['role'] != 'system' %}{{- " + literal + " }}{%- endif %}"
    return (
        "{%- for message in messages %}" + head + "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' %}"
        "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
        "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


def render(tokenizer: Any, template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_differences(tokenizer: Any, ours: str, theirs: str) -> list[str]:
    """Probe conversations (PROBES × add_generation_prompt) that `ours` renders differently from
    `theirs`; conversations `theirs` refuses to render (a template that raises on a shape) are skipped."""
    diffs = []
    for messages in PROBES:
        for gen in (False, True):
            try:
                expected = render(tokenizer, theirs, messages, gen)
            except Exception:  # the model's template does not accept this shape: nothing to match
                continue
            try:
                same = render(tokenizer, ours, messages, gen) == expected
            except Exception:
                same = False
            if not same:
                diffs.append(f"{[m['role'] for m in messages]} add_generation_prompt={gen}")
    return diffs


def derive_chatml(tokenizer: Any, template: str) -> str | None:
    """The ChatML training variant of `template`, or None when `template` is not ChatML as
    `chatml_training_template` writes it (checked by rendering: byte-identical on every probe)."""
    try:
        head = render(tokenizer, template, [_msg("user", "x")], False)
    except Exception:
        return None
    match = _CHATML_PROBE.fullmatch(head)
    if match is None:
        return None
    derived = chatml_training_template(match.group(1))
    return None if render_differences(tokenizer, derived, template) else derived


def _trl_training(tokenizer: Any, template: str) -> str | None:
    """TRL's training template for `template` when TRL knows its family (None otherwise)."""
    from trl.chat_template_utils import get_training_chat_template

    own = tokenizer.chat_template
    tokenizer.chat_template = template  # TRL identifies the family from the tokenizer's template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # "patching is not supported for this template"
        return None
    finally:
        tokenizer.chat_template = own


def _own_template(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named variants: `default` is the chat one
        template = template.get("default")
    return template


def training_template(tokenizer: Any, choice: str | None = None) -> str:
    """The run's chat template for `tokenizer` (the recipe's `models.chat_template`), in its
    training variant; raises ChatTemplateError naming what to set when there is none."""
    name = getattr(tokenizer, "name_or_path", "") or "the model"
    template = chosen_template(choice) or _own_template(tokenizer)
    if not template:
        raise ChatTemplateError(f"{name} has no chat template; {FIX}")
    resolved: str | None
    if has_generation_markers(template):
        resolved = template
    elif trl := _trl_training(tokenizer, template):
        resolved = trl
        if diffs := render_differences(tokenizer, trl, template):  # by TRL's design (Qwen3: think blocks)
            logger.info(
                f"  chat template: TRL's training variant renders {len(diffs)} probe conversations "
                f"differently from the model's own, e.g. {diffs[0]}"
            )
    else:
        resolved = derive_chatml(tokenizer, template)
    if resolved is None:
        raise NoTrainingVariant(
            f"the chat template of {name} has no {{% generation %}} markers, TRL has no training "
            f"variant of it, and it is not ChatML ({IM_START}role\\n…{IM_END}); {FIX}"
        )
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    if not is_chat_template_stop_token_trained(tokenizer, chat_template=resolved):
        raise ChatTemplateError(
            f"with the tokenizer of {name}, the chat template's assistant mask does not end on a special "
            "end-of-turn token (the {% generation %} block leaves it out, or the template's tokens are not "
            f"special tokens of this tokenizer): the model would never learn to stop; {FIX}"
        )
    return resolved


def use_run_template(
    tokenizer: Any, choice: str | None = None, require_mask: bool = False, prefix_masks: bool = False
) -> Any:
    """Set `tokenizer.chat_template` to the run's training variant (see `training_template`).

    Stages that only render (cpt's and dpo's eval, merging) keep working on a template with no
    training variant: the tokenizer then keeps the chosen (or its own) template as it is. Stages
    that need the assistant mask pass `require_mask` and get the error instead — unless they find
    the assistant turns themselves by rendering prefixes (`prefix_masks`: sft and preview, through
    `assistant_masks`) and `prefix_mask_problem` finds the template fit for it.
    """
    try:
        tokenizer.chat_template = training_template(tokenizer, choice)
    except ChatTemplateError as exc:
        chosen = chosen_template(choice)  # an unknown name / missing file is always an error
        if require_mask and not (prefix_masks and isinstance(exc, NoTrainingVariant)):
            raise
        if chosen:
            tokenizer.chat_template = chosen
        if require_mask:
            if problem := prefix_mask_problem(tokenizer):
                raise ChatTemplateError(
                    f"{exc}; nor can its assistant turns be found by rendering prefixes: {problem}"
                ) from None
            logger.info(
                "  chat template: no {% generation %} markers; assistant turns found by rendering prefixes"
            )
        elif tokenizer.chat_template and not isinstance(exc, NoTrainingVariant):
            logger.warning(f"  chat template: {exc} (rendering with it as it is)")
        # NoTrainingVariant while only rendering: nothing to say, rendering needs no markers (and sft
        # finds the assistant turns by prefix rendering)
    return tokenizer


# --------------------------------------------------------------------------- masks by prefix rendering
def assistant_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character span of each assistant turn in it), found without
    markers, as axolotl's `roles_to_train` does: assistant turn i is what rendering messages[:i+1]
    adds to messages[:i] rendered with the generation prompt — its content and the end-of-turn
    token the template closes it with; whitespace after that (a separator between turns, like the
    newline after ChatML's `<|im_end|>`) stays untrained, as in `chatml_training_template`. Raises ChatTemplateError when
    the template renders a conversation's beginning differently once later turns follow (no prefix
    to cut at)."""
    kwargs = dict(chat_template_kwargs or {})

    def text(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages[:upto], tools=tools, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )

    full = text(len(messages), False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before, through = text(i, True) if i else "", text(i + 1, False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ChatTemplateError(
                f"rendering turns 1..{i + 1} of a conversation is not a prefix of rendering it whole "
                "(the template changes earlier turns once later ones follow)"
            )
        spans.append((len(before), len(through.rstrip())))  # the separator after the turn: untrained
    return full, spans


def prefix_assistant_masks(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 on each assistant turn's tokens) of a conversation,
    from `assistant_spans`: the text is tokenized once, as `apply_chat_template` does (no special
    tokens added), and a token trains when it starts inside an assistant span."""
    full, spans = assistant_spans(tokenizer, messages, tools, chat_template_kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(
            "finding assistant turns by rendering prefixes needs a fast tokenizer (offsets)"
        )
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def assistant_masks(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` of a conversation with the tokenizer's template: from its
    `{% generation %}` markers (`return_assistant_tokens_mask`, what TRL's `assistant_only_loss`
    uses) when it has them, else by rendering prefixes (`prefix_assistant_masks`)."""
    if not has_generation_markers(_own_template(tokenizer) or ""):
        return prefix_assistant_masks(tokenizer, messages, tools, chat_template_kwargs)
    enc = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **dict(chat_template_kwargs or {}),
    )
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": [int(m) for m in enc["assistant_masks"]]}


def prefix_mask_problem(tokenizer: Any) -> str | None:
    """Why the tokenizer's template cannot be masked by rendering prefixes (None if it can): a probe
    conversation it does not render prefix by prefix, or — TRL's `is_chat_template_stop_token_trained`
    check, on the prefix mask — an assistant turn whose last trained token is not an added (special)
    token, so the model would never learn to stop."""
    for messages in PROBES:
        try:
            assistant_spans(tokenizer, messages)
        except ChatTemplateError as exc:
            return str(exc)
        except Exception:  # the template does not accept this shape: nothing to check
            continue
    probe = [_msg("user", "dummy"), _msg("assistant", "dummy"), _msg("user", "dummy")]
    try:
        enc = prefix_assistant_masks(tokenizer, probe)
    except ChatTemplateError as exc:
        return str(exc)
    added = set(tokenizer.get_added_vocab().values())
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    last = next((t for t in reversed(trained) if tokenizer.decode([t]).strip()), None)
    if last not in added:
        return (
            "an assistant turn does not end on a special end-of-turn token, so the model would never learn to "
            f"stop; {FIX}"
        )
    return None
