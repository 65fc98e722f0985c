"""What a training set looks like to the trainer, before anything is paid for: `verticalft preview`.

Each SFT conversation is rendered through the run's chat template (its training variant, with the
recipe's template variables) exactly as the sft stage hands it to TRL — `apply_chat_template` with
`return_assistant_tokens_mask`, the call TRL's `assistant_only_loss` makes, or for a template
without markers the masks found by rendering prefixes (`chat_templates.assistant_masks`) — and split into spans
of trained (assistant) and untrained tokens; preference pairs show the prompt and both answers as
TRL's DPO trainer splits them (the answer is what follows the rendered prompt); corpus documents
show their token count against `cpt.max_length`. A template whose masks come out empty, a
conversation cut by `max_length`, or an answer the mask misses is visible here, not after a day of
training.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Rendered:
    """One example as the trainer sees it: text spans with whether their tokens train."""

    spans: list[tuple[str, bool]] = field(default_factory=list)
    tokens: int = 0
    trained: int = 0
    truncated: bool = False  # longer than max_length: the trainer cuts the tail
    note: str = ""


def sft_example(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    max_length: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools: list[dict[str, Any]] | str | None = None,
) -> Rendered:
    """A conversation's tokens grouped into runs of trained / untrained tokens. `tools` may be the
    JSON string a set stores them as (formats.py), as TRL reads it."""
    from verticalft.chat_templates import assistant_masks

    if isinstance(tools, str):
        tools = json.loads(tools) or None
    enc = assistant_masks(tokenizer, messages, tools, chat_template_kwargs)  # markers, or prefix rendering
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    out = Rendered(tokens=len(ids), trained=sum(mask[:max_length]), truncated=len(ids) > max_length)
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            out.spans.append((tokenizer.decode(ids[start:i]), bool(mask[start])))
            start = i
    if not out.trained:
        out.note = "no token of this conversation trains (no assistant turn, or the template marks none)"
    return out


def preference_example(
    tokenizer: Any,
    prompt: Any,
    chosen: Any,
    rejected: Any,
    max_length: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Rendered]:
    """The prompt and both answers, each with its token count (conversational rows are rendered
    through the template; the answers are what follows the rendered prompt, as TRL splits them)."""
    kwargs = dict(chat_template_kwargs or {})

    def render(messages: Any, generation_prompt: bool) -> str:
        if isinstance(messages, str):
            return messages
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )

    prompt_text = render(prompt, True)
    parts = {"prompt": (prompt_text, False)}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        full = answer if isinstance(answer, str) else render([*prompt, *answer], False)
        text = full[len(prompt_text) :] if full.startswith(prompt_text) else full
        parts[name] = (text, True)
    out = {}
    for name, (text, trained) in parts.items():
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        out[name] = Rendered([(text, trained)], n, n if trained else 0)
    total = out["prompt"].tokens + max(out["chosen"].tokens, out["rejected"].tokens)
    out["prompt"].truncated = total > max_length
    return out


def corpus_example(tokenizer: Any, text: str, max_length: int) -> Rendered:
    """A CPT document: every token trains; packing cuts it into `max_length` blocks."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    blocks = -(-n // max_length)
    return Rendered([(text, True)], n, n, note=f"{blocks} block(s) of {max_length} tokens when packed")
