"""Domain eval: greedy answers to the recipe's eval set, scored per item by its `kind`.

Training stages call `evaluate_model` before and after training so the manifest shows what each
stage bought; the eval stage (vLLM generation, every model, retention, gates) uses the same
matching rules (`score_answer`), so a score means the same thing everywhere.

Kinds: `label` (classification: first line, case-insensitive), `exact` (the whole answer,
whitespace-normalised), `number` (first number within a relative tolerance: figures in finance
answers) and `choice` (multiple choice: the option letter, or the option's text; the item's answer may
also be a 0-based option index, as MMLU stores it). Every kind
scores the answer after a leading think block (`strip_think`).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from verticalft.data import DataError, located_rows

if TYPE_CHECKING:
    from verticalft.recipe import Source

_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_think(text: str) -> str:
    """The answer after a leading think block (`<think>…</think>`), as the user would read it.

    Why: reasoning templates (Qwen3, TRL's `qwen3` training variant) put a think block in front of
    every answer, empty when thinking is off, and `<think>` is an ordinary added token there, so
    decoding with `skip_special_tokens` keeps it; scored as it is, every first-line answer would be
    "<think>". A block that never closes (the model thought until `max_new_tokens`) leaves no
    answer: "" (wrong). Text without a leading block is returned unchanged.
    """
    head = text.lstrip()
    if not head.startswith(THINK_OPEN):
        return text
    _, closed, answer = head.partition(THINK_CLOSE)
    return answer.lstrip("\n") if closed else ""  # the newlines after it, as Qwen3's template drops them


def first_answer_line(text: str) -> str:
    """First line of the answer (after any think block), lower-cased, without a final period."""
    text = strip_think(text)
    return text.strip().splitlines()[0].strip().strip(".").lower() if text.strip() else ""


def parse_number(text: str) -> float | None:
    m = _NUMBER.search(text.replace("$", ""))
    if not m:
        return None
    try:
        return float(m.group().replace(",", "").rstrip("."))
    except ValueError:
        return None


KINDS = ("label", "exact", "number", "choice")


ROLES = ("system", "user", "assistant")


def messages_problem(messages: Any) -> str | None:
    """Why an eval item's `messages` cannot be sent to a model, or None: a non-empty list of
    `{"role": system|user|assistant, "content": text}` ending on the user turn the model answers."""
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list of chat messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f'messages[{i}] must be {{"role": {"|".join(ROLES)}, "content": text}}'
    if messages[-1]["role"] != "user":
        return f"`messages` must end on a user turn (the one the model answers), not {messages[-1]['role']!r}"
    return None


def chat_problem(row: dict[str, Any]) -> str | None:
    """Why an eval row's chat (`prompt` or `messages`, optional `system`) is unusable, or None."""
    if row.get("prompt") not in (None, "") and row.get("messages") is not None:
        return "give `prompt` or `messages`, not both"
    system = row.get("system")
    if system is not None and not (isinstance(system, str) and system.strip()):
        return "`system` must be a non-empty string"
    if row.get("messages") is None:
        return None
    problem = messages_problem(row["messages"])
    if problem is None and system is not None and any(m["role"] == "system" for m in row["messages"]):
        return "a `system` field and a system turn in `messages`: keep one"
    return problem


def item_problem(row: dict[str, Any]) -> str | None:
    """Why an eval row cannot be scored (no prompt/messages or answer, a bad chat, unknown kind,
    choices missing), or None."""
    has_chat = row.get("prompt") not in (None, "") or row.get("messages") is not None
    missing = ([] if has_chat else ["prompt (or messages)"]) + (
        ["answer"] if row.get("answer") in (None, "") else []
    )
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    problem = chat_problem(row)
    if problem:
        return problem
    kind = row.get("kind") or "label"
    if kind not in KINDS:
        return f"unknown kind '{kind}'; one of {', '.join(KINDS)}"
    if kind == "choice" and not row.get("choices"):
        return "a `choice` item needs its options in `choices`"
    if kind == "choice":
        try:
            choice_answer(row["answer"], row["choices"])
        except ValueError as exc:
            return str(exc)
    return None


def item_messages(item: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat an eval item sends the model: its `system` turn when it has one, then its
    `messages`, or its `prompt` as one user turn."""
    system = [{"role": "system", "content": item["system"]}] if item.get("system") else []
    if item.get("messages"):
        return system + [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
    return [*system, {"role": "user", "content": item["prompt"]}]


def item_text(item: Mapping[str, Any]) -> str:
    """What to show of an item (reports, eval files): its `prompt`, else its last user turn."""
    if item.get("prompt"):
        return str(item["prompt"])
    return next((m["content"] for m in reversed(item.get("messages") or []) if m.get("role") == "user"), "")


def item_user_text(item: Mapping[str, Any]) -> str:
    """The user turns of an item, one per line: what decontamination matches training data against
    (a system prompt is an instruction, not the question)."""
    if item.get("messages"):
        return "\n".join(str(m.get("content") or "") for m in item["messages"] if m.get("role") == "user")
    return str(item.get("prompt") or "")


def item_key(item: Mapping[str, Any]) -> str:
    """A stable key of an eval item (or an eval-file / API-answer row carrying its fields): the
    prompt of a prompt-only item — so eval files and API answer files written before keep
    matching and route splits them as before — else its whole chat as JSON."""
    if item.get("messages") or item.get("system"):
        return json.dumps(item_messages(item), ensure_ascii=False, sort_keys=True)
    return str(item["prompt"])


def item_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an eval-file row keeps of its item: `prompt` to read (`item_text`), and
    `system`/`messages` when the item has them, so `item_key` of the row is the item's."""
    return {"prompt": item_text(item)} | {k: item[k] for k in ("system", "messages") if item.get(k)}


def load_items(source: Source, max_items: int | None = None) -> list[dict[str, Any]]:
    """Eval rows, each checked (prompt or messages, answer, a known kind); errors name the file and line."""
    items = []
    for where, row in located_rows(source):
        if isinstance(row, str):
            raise DataError(f"{where}: {row}")
        problem = item_problem(row)
        if problem:
            raise DataError(f"{where}: {problem}")
        kind = row.get("kind") or "label"
        answer = choice_answer(row["answer"], row["choices"]) if kind == "choice" else row["answer"]
        items.append({**row, "kind": kind, "answer": str(answer)})
    return items[:max_items] if max_items else items


def choice_answer(answer: Any, choices: list[str]) -> Any:
    """A `choice` item's answer as written for scoring: an integer is a 0-based option index
    and becomes its letter (1 → "B"); anything else is returned unchanged (a letter or the
    option's text, which `choice_letter` reads).

    Why: MMLU and its Hugging Face copies (`cais/mmlu`) store the answer as the index of the
    right option, `answer: 1` with `choices: [...]`; read as the text "1" it matched no option
    and every answer scored 0. Raises ValueError for an index outside the options.
    """
    if isinstance(answer, bool) or not isinstance(answer, int):
        return answer
    if not 0 <= answer < len(choices):
        raise ValueError(f"choice answer index {answer} is not an option (0-based, {len(choices)} choices)")
    return chr(65 + answer)


_CHOICE = re.compile(r"^\(?([A-Za-z])[).:]?(?:\s|$)")


def choice_letter(prediction: str, choices: list[str] | None = None) -> str | None:
    """The option a multiple-choice answer picked: a leading letter ("B", "(b)", "B) …") or, when
    the model wrote an option's text instead, that option's letter."""
    first = first_answer_line(prediction)
    m = _CHOICE.match(first)
    if m and (not choices or ord(m.group(1).lower()) - 97 < len(choices)):
        return m.group(1).upper()
    for i, option in enumerate(choices or []):
        if first == first_answer_line(option):
            return chr(65 + i)
    return None


def score_answer(
    prediction: str,
    answer: str,
    kind: str,
    tolerance: float = 0.001,
    choices: list[str] | None = None,
) -> bool:
    """label: first line, case-insensitive; exact: whole text, whitespace-normalised; number:
    within `tolerance` (relative, absolute below 1); choice: the same option letter as `answer`."""
    if kind == "number":
        got, want = parse_number(first_answer_line(prediction)), parse_number(answer)
        if got is None or want is None:
            return False
        return abs(got - want) <= tolerance * max(1.0, abs(want))
    if kind == "exact":
        return " ".join(strip_think(prediction).split()) == " ".join(answer.split())
    if kind == "choice":
        letter = choice_letter(answer, choices)
        return letter is not None and choice_letter(prediction, choices) == letter
    return first_answer_line(prediction) == first_answer_line(answer)


def score_items(items: list[dict[str, Any]], predictions: list[str], tolerance: float = 0.001) -> list[bool]:
    """Per-item correctness (an item's `kind` defaults to label; a `choice` answer may be a
    0-based option index, as `choice_answer` reads it)."""
    out = []
    for p, it in zip(predictions, items, strict=True):
        kind = it.get("kind") or "label"
        answer = choice_answer(it["answer"], it.get("choices") or []) if kind == "choice" else it["answer"]
        out.append(score_answer(p, str(answer), kind, tolerance, it.get("choices")))
    return out


def summarise(items: list[dict[str, Any]], correct: list[bool]) -> dict[str, Any]:
    """Overall accuracy plus per task and per difficulty."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    by_diff: dict[str, list[bool]] = defaultdict(list)
    for item, ok in zip(items, correct, strict=True):
        by_task[item.get("task", "all")].append(ok)
        by_diff[str(item.get("difficulty", 0))].append(ok)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else 0.0  # noqa: E731
    return {
        "score": mean(correct),
        "n": len(correct),
        "by_task": {k: mean(v) for k, v in sorted(by_task.items())},
        "by_difficulty": {k: mean(v) for k, v in sorted(by_diff.items())},
    }


class Completion(NamedTuple):
    text: str
    finish_reason: str  # "stop": the model ended its turn; "length": cut at max_new_tokens
    mean_logprob: float | None  # mean log-probability of the generated tokens (its confidence)


def confidence(mean_logprob: float | None) -> float | None:
    """A model's confidence in its answer: the geometric-mean probability of its tokens."""
    return None if mean_logprob is None else math.exp(mean_logprob)


def chat_prompts(
    tokenizer: Any, chats: list[list[dict[str, str]]], chat_template_kwargs: Mapping[str, Any] | None = None
) -> list[str]:
    """Each chat (system turn and earlier turns included) through the tokenizer's template, ending
    on the generation prompt, rendered with the run's template variables (`enable_thinking=False`:
    Qwen3's template then ends the prompt on an empty think block, so the model answers directly)."""
    return [
        tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        for chat in chats
    ]


def generate(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[Completion]:
    """Greedy completions of each chat (its last turn the user's) with HF generate (left padding),
    with each answer's mean token log-probability (what vLLM's `logprobs` gives the eval stage on the other backend).
    `chat_template_kwargs` (the recipe's `models.chat_template_kwargs`) render the prompts, as
    vLLM's `LLM.chat` gets them, e.g. `enable_thinking=False` so Qwen3 answers without thinking."""
    import torch
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    outputs: list[Completion] = []
    try:
        for i in tqdm(range(0, len(chats), batch_size), desc="generate (greedy)", unit="batch", leave=False):
            texts = chat_prompts(tokenizer, chats[i : i + batch_size], chat_template_kwargs)
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
                # log p of each chosen token (scores are the processed logits: greedy has none)
                logp = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            new = gen.sequences[:, enc["input_ids"].shape[1] :]
            is_eos = new == tokenizer.eos_token_id
            ended = is_eos.any(dim=1).tolist()
            # tokens up to and including the first end-of-turn count; padding after it does not
            counted = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
            means = ((logp * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)).tolist()
            texts_out = tokenizer.batch_decode(new, skip_special_tokens=True)
            outputs.extend(
                Completion(t, "stop" if e else "length", round(m, 6))
                for t, e, m in zip(texts_out, ended, means, strict=True)
            )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def generate_answers(
    model: Any,
    tokenizer: Any,
    chats: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Greedy answers with HF generate (left padding, chat template with its variables)."""
    done = generate(model, tokenizer, chats, max_new_tokens, batch_size, chat_template_kwargs)
    return [c.text for c in done]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    tolerance: float = 0.001,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The training stages' quick eval: greedy answers (prompts rendered with the run's template
    and its `chat_template_kwargs`, as the eval stage renders them) scored by `score_items`."""
    chats = [item_messages(it) for it in items]
    preds = generate_answers(model, tokenizer, chats, max_new_tokens, batch_size, chat_template_kwargs)
    correct = score_items(items, preds, tolerance)
    summary = summarise(items, correct)
    summary["examples"] = [
        {"prompt": item_text(it)[-80:], "answer": it["answer"], "prediction": p.strip()[:40]}
        for it, p in list(zip(items, preds, strict=True))[:5]
    ]
    return summary
