"""SFT and preference records, field-aware: the same rules as documents, applied per field.

An SFT row is `{"messages": [...]}`: its *prompt* is every turn before the last assistant turn,
its *response* the last assistant turn. A preference row is `{"prompt", "chosen", "rejected"}`,
each a string or a list of chat messages (TRL's conversational format). Rules:

- empty response, or a chosen/rejected that is empty → `empty_response` / `empty_chosen` …;
- truncated response: the row says so (`finish_reason: "length"`, as vLLM and OpenAI report a
  generation cut by max_tokens — how teacher generations arrive from distillation), or the text
  ends mid-thought (a trailing ellipsis, an unclosed code fence or bracket) → `truncated_response`;
- `chosen == rejected` after normalisation → `chosen_equals_rejected` (such a pair teaches nothing
  and gives DPO a zero margin);
- per-field length limits in characters → `<field>_too_long` / `response_too_short`;
- prompt dedup (exact, normalised; lowest id stays) is done across rows by `prompt_duplicates`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from verticalft.curation.dedup import Duplicate, exact_duplicates, lowercase_words

_OPENERS = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class RecordRules:
    dedup_prompt: bool = True
    min_response_chars: int = 1
    max_prompt_chars: int | None = 32_000
    max_response_chars: int | None = 32_000


def content(value: Any) -> str:
    """The text of a string or of a list of chat messages (their contents, one per line)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return "\n".join(content(m) for m in value)


def split_messages(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(prompt, response) of a chat: the last assistant turn is the response."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return content(messages), ""
    return content(messages[:last]), content(messages[last])


def fields_of(row: dict[str, Any]) -> dict[str, str]:
    """The named text fields of an SFT (`prompt`, `response`) or preference row."""
    if "messages" in row:
        prompt, response = split_messages(row["messages"] or [])
        return {"prompt": prompt, "response": response}
    return {k: content(row.get(k)) for k in ("prompt", "chosen", "rejected")}


def looks_truncated(text: str) -> bool:
    t = text.rstrip()
    if t.endswith(("...", "…")) or t.count("```") % 2:
        return True
    depth = {o: 0 for o in _OPENERS}
    for ch in t:
        if ch in _OPENERS:
            depth[ch] += 1
        elif ch in _OPENERS.values():
            o = next(k for k, v in _OPENERS.items() if v == ch)
            depth[o] = max(0, depth[o] - 1)
    return any(depth.values())


def record_reason(row: dict[str, Any], rules: RecordRules = RecordRules()) -> str | None:
    """The first rule an SFT/preference row breaks, or None to keep it."""
    f = fields_of(row)
    responses = [k for k in ("response", "chosen", "rejected") if k in f]
    for k in responses:
        if not f[k].strip():
            return f"empty_{k}"
    if row.get("finish_reason") == "length" or any(looks_truncated(f[k]) for k in responses):
        return "truncated_response"
    if "chosen" in f and lowercase_words(f["chosen"]) == lowercase_words(f["rejected"]):
        return "chosen_equals_rejected"
    if rules.max_prompt_chars and len(f["prompt"]) > rules.max_prompt_chars:
        return "prompt_too_long"
    for k in responses:
        if len(f[k].strip()) < rules.min_response_chars:
            return f"{k}_too_short"
        if rules.max_response_chars and len(f[k]) > rules.max_response_chars:
            return f"{k}_too_long"
    return None


def prompt_duplicates(rows: Iterable[tuple[str, dict[str, Any]]]) -> list[Duplicate]:
    """(id, row) pairs → rows whose prompt repeats an earlier (lower-id) row's prompt."""
    return exact_duplicates((rid, fields_of(row)["prompt"]) for rid, row in rows)
