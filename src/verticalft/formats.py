"""The data formats users already have, turned into the toolkit's canonical rows — one place.

Why: SFT data had to be `{"messages": [...]}` and preferences needed an explicit `prompt`, so a
ShareGPT, Alpaca or TRL prompt/completion file was refused row by row (curate quarantined every
row, sft died later). Every reader of an SFT or preference set (data.load_set for the training
stages and distillation, curation.sources for curate, `verticalft validate`) calls
`normalise_row`, so a format is detected and converted the same way everywhere.

Canonical forms:
- SFT: `messages` (a list of `{"role", "content", ...}`), plus `tools` when the row has one (TRL's
  SFTTrainer passes a `tools` column to `apply_chat_template`).
- Preferences: `prompt`, `chosen`, `rejected` (strings, or lists of chat messages).

Formats (a source's `format:`, default `auto` = picked per row by the fields present):
- `messages`: OpenAI chat rows, kept exactly as they are (system turns, tool calls, `tools`).
- `sharegpt`: `conversations` (or `messages`) of `{"from", "value"}`; `from` human/gpt/system/
  function_call/observation → user/assistant/system/assistant tool call/tool. TRL's
  `maybe_convert_to_chatml` does the key renaming. A `system` column becomes the first turn.
- `alpaca`: `instruction` (+ `input`, joined by a newline as LLaMA-Factory does) → user,
  `output` → assistant; optional `system` and `history` ([[user, assistant], ...]).
- `prompt_completion`: TRL's prompt/completion rows, strings or lists of messages.
- `preference`: explicit `prompt`/`chosen`/`rejected`, or TRL's implicit-prompt rows where chosen
  and rejected are whole conversations (the shared start is the prompt: TRL's `extract_prompt`),
  or LLaMA-Factory's ShareGPT ranking rows (`conversations` + one `chosen`/`rejected` turn each).

A source's `columns:` maps the toolkit's names to the file's (LLaMA-Factory's dataset_info.json
style): `{messages: conversations}`, `{prompt: instruction, query: input, response: output}`.
A row no format can use raises `FormatError` saying what is missing and which formats were tried;
the caller adds the file and line.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

Kind = Literal["sft", "preferences"]
FormatName = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "preference"]
FORMATS: tuple[str, ...] = get_args(FormatName)
SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
SFT_FIELDS = ("messages",)
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
# Names a `columns:` mapping may use: the toolkit's own plus LLaMA-Factory's alpaca aliases.
ColumnKey = Literal[
    "messages", "system", "tools", "history", "instruction", "input", "output", "query", "response",
    "prompt", "completion", "chosen", "rejected",
]  # fmt: skip
IMPLICIT = "preference (implicit prompt)"
SHAREGPT_PREFERENCE = "preference (sharegpt)"

# ShareGPT speakers → chat roles (LLaMA-Factory's names, plus the common variants seen in the wild).
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "chatgpt": "assistant", "system": "system", "observation": "tool", "tool": "tool",
    "function_call": "assistant",
}  # fmt: skip


class FormatError(ValueError):
    """A row no allowed format can use; the message says what is missing and what was tried."""


@dataclass(frozen=True)
class Normalised:
    """A row in canonical form and the format it was read as (what `validate` reports)."""

    format: str
    row: dict[str, Any]


def kind_of(required: tuple[str, ...]) -> Kind | None:
    """The set kind behind a required-fields tuple (how curation names the SFT/preference sets)."""
    kinds: dict[tuple[str, ...], Kind] = {SFT_FIELDS: "sft", PREFERENCE_FIELDS: "preferences"}
    return kinds.get(tuple(required))


def is_canonical_source(fmt: str, columns: Mapping[ColumnKey, str] | None) -> bool:
    """Whether a source is read as today's canonical rows whatever they hold (no detection)."""
    return fmt in ("messages", "preference") and not columns


def normalise_row(
    row: dict[str, Any], kind: Kind, fmt: str = "auto", columns: Mapping[ColumnKey, str] | None = None
) -> Normalised:
    """`row` in the canonical form of `kind`; a canonical row comes back as the very same dict.

    Raises `FormatError` when no format (the one named, or every one for `auto`) fits.
    """
    if columns:
        row = _apply_columns(row, columns, fmt)
    if kind == "preferences":
        if fmt not in ("auto", "preference"):
            raise FormatError(f"format '{fmt}' is for SFT sets; preferences use 'preference' (or auto)")
        return _preference(row)
    if fmt == "preference":
        raise FormatError("format 'preference' is for preference sets, not SFT")
    tried = SFT_FORMATS if fmt == "auto" else (fmt,)
    for name in tried:
        if _fits(row, name):
            return Normalised(name, _tools_as_json(_CONVERT[name](row)))
    wanted = {
        "messages": "'messages'",
        "sharegpt": "'conversations' (or 'messages') of from/value turns",
        "alpaca": "'instruction' and 'output'",
        "prompt_completion": "'prompt' and 'completion'",
    }
    null = [k for k in ("messages", "conversations") if k in row and row[k] is None]
    head = f"{_fields(null)} null" if null else "missing field 'messages'"
    has = ", ".join(repr(k) for k in row) or "none"
    raise FormatError(
        f"{head}; formats tried: {'; '.join(f'{n} needs {wanted[n]}' for n in tried)}; row has {has}"
    )


def columns_problem(
    columns: list[str], kind: Kind, fmt: str = "auto", mapping: Mapping[ColumnKey, str] | None = None
) -> str | None:
    """Why no row of a table with these `columns` could be read as a `kind` set (None: some could).

    A whole file in no usable format is the recipe's mistake, said once instead of per row.
    """
    present = set(_apply_columns(dict.fromkeys(columns), mapping, fmt) if mapping else columns)
    if kind == "preferences":
        missing = [k for k in ("chosen", "rejected") if k not in present]
        return f"no column(s) {', '.join(missing)}" if missing else None
    needs: dict[str, list[tuple[str, ...]]] = {
        "messages": [("messages",)],
        "sharegpt": [("conversations",), ("messages",)],
        "alpaca": [("instruction", "output")],
        "prompt_completion": [("prompt", "completion")],
    }
    tried = SFT_FORMATS if fmt == "auto" else (fmt,)
    if any(all(c in present for c in need) for name in tried for need in needs[name]):
        return None
    wanted = " or ".join("+".join(need) for name in tried for need in needs[name][:1])
    return f"no column(s) messages (formats tried: {', '.join(tried)}; need {wanted})"


# --------------------------------------------------------------------------- columns
def _apply_columns(row: dict[str, Any], columns: Mapping[ColumnKey, str], fmt: str) -> dict[str, Any]:
    """The row with the file's columns renamed to the toolkit's names (`columns`: ours → theirs)."""
    alpaca = fmt == "alpaca" or "query" in columns or "response" in columns
    rename = {"query": "input", "response": "output" if alpaca else "completion"}
    if alpaca:
        rename["prompt"] = "instruction"
    out = {k: v for k, v in row.items() if k not in set(columns.values())}
    for ours, theirs in columns.items():
        if theirs in row:
            out[rename.get(ours, ours)] = row[theirs]
    return out


# --------------------------------------------------------------------------- SFT
def _is_turns(value: Any, key: str) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and key in m for m in value)


def _fits(row: dict[str, Any], name: str) -> bool:
    if name == "messages":
        # Not null; and not ShareGPT turns under a `messages` key (those are read as sharegpt).
        return row.get("messages") is not None and not (
            _is_turns(row["messages"], "from") and not _is_turns(row["messages"], "role")
        )
    if name == "sharegpt":
        turns = row.get("conversations", row.get("messages"))
        return _is_turns(turns, "from")
    if name == "alpaca":
        return isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str)
    return row.get("prompt") is not None and row.get("completion") is not None


def _as_messages(row: dict[str, Any]) -> dict[str, Any]:
    return row  # today's canonical rows: untouched, so existing sets give the same data


def _from_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    from trl.data_utils import maybe_convert_to_chatml

    key = "conversations" if "conversations" in row else "messages"
    converted = maybe_convert_to_chatml({"conversations": copy.deepcopy(row[key])})["messages"]
    messages = [_sharegpt_turn(m) for m in converted]
    out = {k: v for k, v in row.items() if k not in (key, "system")}
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    out["messages"] = messages
    return out


def _sharegpt_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """One converted ShareGPT turn with a chat role; a function_call becomes an assistant tool call."""
    speaker = str(turn.get("role", "")).lower()
    role = SHAREGPT_ROLES.get(speaker, speaker)
    rest = {k: v for k, v in turn.items() if k not in ("role", "content")}
    if speaker == "function_call":
        call = _json(turn.get("content"))
        calls = call if isinstance(call, list) else [call]
        if calls and all(isinstance(c, dict) and "name" in c for c in calls):
            tool_calls = [
                {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                for c in calls
            ]
            return {"role": "assistant", "content": "", "tool_calls": tool_calls, **rest}
    return {"role": role, "content": turn.get("content"), **rest}


def _tools_as_json(row: dict[str, Any]) -> dict[str, Any]:
    """`tools` (a list of JSON schemas) as one JSON string: Arrow would merge the schemas' differing
    shapes into one struct (null-filling keys a tool never had); TRL's SFTTrainer `json.loads` a
    string `tools` before `apply_chat_template`. A row without `tools` is returned as it is."""
    tools = row.get("tools")
    if tools is None or isinstance(tools, str):
        return row
    return {**row, "tools": json.dumps(tools, ensure_ascii=False)}


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None


def _from_alpaca(row: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for turn in row.get("history") or []:
        if isinstance(turn, list | tuple) and len(turn) == 2:
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    query = row.get("input")
    user = row["instruction"] + ("\n" + query if isinstance(query, str) and query.strip() else "")
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    out = {k: v for k, v in row.items() if k not in ("instruction", "input", "output", "system", "history")}
    out["messages"] = messages
    return out


def _from_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = row["prompt"], row["completion"]
    before = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    after = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    out = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    out["messages"] = [*before, *after]
    return out


_CONVERT = {
    "messages": _as_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}


# --------------------------------------------------------------------------- preferences
def _preference(row: dict[str, Any]) -> Normalised:
    """Explicit rows as they are; implicit-prompt rows through TRL's `extract_prompt`."""
    from trl.data_utils import extract_prompt

    tried = (
        "; formats tried: preference needs 'prompt', 'chosen', 'rejected'; "
        "preference (implicit prompt) needs 'chosen' and 'rejected' as whole conversations; "
        "preference (sharegpt) needs 'conversations' of from/value turns, 'chosen', 'rejected'"
    )
    if "prompt" in row and not _implicit(row):
        missing = [k for k in PREFERENCE_FIELDS if k not in row]
        if missing:
            raise FormatError(f"missing {_fields(missing)}{tried}")
        null = [k for k in PREFERENCE_FIELDS if row[k] is None]
        if null:
            raise FormatError(f"{_fields(null)} null")
        return Normalised("preference", row)
    if _is_turns(row.get("chosen"), "role") and _is_turns(row.get("rejected"), "role"):
        pair = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
        if pair["prompt"]:
            return Normalised(IMPLICIT, {**{k: v for k, v in row.items() if k != "prompt"}, **pair})
        raise FormatError("chosen and rejected share no opening turns, so there is no prompt to extract")
    turns = row.get("conversations", row.get("messages"))
    if _is_turns(turns, "from") and row.get("chosen") is not None and row.get("rejected") is not None:
        return Normalised(SHAREGPT_PREFERENCE, _sharegpt_preference(row))
    missing = [k for k in PREFERENCE_FIELDS if k not in row or row[k] is None]
    raise FormatError(f"missing {_fields(missing)}{tried}")


def _sharegpt_preference(row: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT ranking rows: the conversation is the prompt, `chosen`/`rejected`
    one `{"from", "value"}` turn each (or plain text) → conversational prompt/chosen/rejected."""
    prompt = _from_sharegpt({k: v for k, v in row.items() if k not in ("chosen", "rejected")})
    out = {k: v for k, v in prompt.items() if k != "messages"}

    def answer(value: Any) -> list[dict[str, Any]]:
        if isinstance(value, dict) and ("from" in value or "value" in value):
            return [{"role": "assistant", "content": value.get("value")}]
        if isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        return value  # already a list of messages

    return {
        **out,
        "prompt": prompt["messages"],
        "chosen": answer(row["chosen"]),
        "rejected": answer(row["rejected"]),
    }


def _implicit(row: dict[str, Any]) -> bool:
    """A `prompt` that only repeats the conversations' start (TRL's `maybe_extract_prompt` rule):
    a string prompt next to chosen/rejected conversations that hold the user turn themselves."""
    return (
        isinstance(row.get("prompt"), str)
        and _is_turns(row.get("chosen"), "role")
        and _is_turns(row.get("rejected"), "role")
        and row["chosen"][0].get("role") != "assistant"
    )


def _fields(names: Sequence[str]) -> str:
    quoted = ", ".join(repr(n) for n in names)
    return f"field {quoted}" if len(names) == 1 else f"fields {quoted}"
