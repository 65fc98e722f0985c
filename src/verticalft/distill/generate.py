"""Teacher generations for sequence-level distillation, from one of three backends.

- `vllm`: vLLM's offline `LLM.chat` (batched, paged attention) — the production path;
- `openai`: any OpenAI-compatible `/chat/completions` endpoint — a vLLM server, or a hosted
  model as the teacher; the API key is read from the environment variable the recipe names
  and is never written anywhere;
- `hf`: transformers `generate` (the fallback where vLLM is not installed, e.g. plain CPU CI).

Every backend takes chats (lists of messages, system turn and earlier turns included) and sends
them whole: the teacher answers the last turn in its context. Every backend returns the text and whether it finished on its own (`finish_reason` "stop")
or was cut at `max_new_tokens` ("length"), so truncated generations can be dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"


Chat = list[dict[str, str]]  # chat messages: an optional system turn, earlier turns, the user turn to answer


def generate_vllm(
    model_path: str,
    chats: list[Chat],
    *,
    max_new_tokens: int,
    temperature: float,
    work_dir: Path,
    engine_args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    chat_template: str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Generation]:
    """vLLM's offline engine in its own process (`serving.offline`, the eval stage's path too),
    rendering the chats with `chat_template` (the run's) when given, else the folder's own, and the
    run's template variables."""
    from verticalft.serving.offline import Job, generate

    job = Job(
        "teacher",
        model_path,
        chats,
        max_new_tokens,
        temperature,
        chat_template=chat_template,
        chat_template_kwargs=dict(chat_template_kwargs or {}),
    )
    o = generate([job], work_dir, engine_args or {"enforce_eager": True}, env)["teacher"]
    return [Generation(t, r) for t, r in zip(o.texts, o.finish_reasons, strict=True)]


class EndpointError(RuntimeError):
    """Some prompts got no answer after every retry; the answers received are saved."""


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}  # rate limits, overload, transient errors


def generate_openai(
    endpoint: str,
    model: str,
    chats: list[Chat],
    *,
    max_new_tokens: int,
    temperature: float,
    api_key_env: str | None = None,
    concurrency: int = 8,
    timeout: float = 300.0,
    journal: Path | None = None,
    retries: int = 6,
    backoff_s: float = 1.0,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Generation]:
    """POST each chat (its messages as they are) to `<endpoint>/chat/completions`, `concurrency` at a time.

    A hosted API rate-limits and fails now and then: a 429, 5xx, timeout or dropped connection is
    retried up to `retries` times with exponential backoff (`backoff_s` · 2^attempt, at most 60 s,
    or the server's `Retry-After`). Each answer is appended to `journal` (JSONL, keyed by the
    request's hash — model, whole chat, settings — never the API key) the moment it arrives, so a rerun asks only for the prompts
    that have no answer yet. Prompts still unanswered after every retry raise `EndpointError`
    once all the others are done (and saved). `chat_template_kwargs` go in each request body (vLLM's
    extension of the API) only when there are some: a hosted API may refuse unknown fields.
    """
    url = endpoint.rstrip("/") + "/chat/completions"
    post = _Poster(url, _headers(api_key_env), timeout, retries, backoff_s)
    saved = _read_journal(journal)
    lock = threading.Lock()

    def one(chat: Chat) -> Generation | BaseException:
        body = _request_body(model, chat, max_new_tokens, temperature, chat_template_kwargs)
        key = _request_key(url, body)
        if key in saved:
            return saved[key]
        gen = post(body)
        if journal is not None and isinstance(gen, Generation):
            with lock, journal.open("a") as f:
                f.write(json.dumps({"key": key, "text": gen.text, "finish_reason": gen.finish_reason}) + "\n")
        return gen

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        out = list(tqdm(pool.map(one, chats), total=len(chats), desc="teacher (endpoint)", unit="prompt"))
    _raise_if_unanswered(out, retries, journal)
    return [o for o in out if isinstance(o, Generation)]


def _headers(api_key_env: str | None) -> dict[str, str]:
    """The request headers: the API key, when the recipe names its variable, read from the
    environment here and never written anywhere else."""
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(f"distill.teacher.api_key_env: environment variable {api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _request_body(
    model: str,
    chat: Chat,
    max_new_tokens: int,
    temperature: float,
    chat_template_kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    """The `/chat/completions` body; `chat_template_kwargs` only when there are some (a hosted API
    may refuse the unknown field)."""
    return {
        "model": model,
        "messages": [dict(m) for m in chat],
        "max_tokens": max_new_tokens,
        "temperature": temperature,
    } | ({"chat_template_kwargs": dict(chat_template_kwargs)} if chat_template_kwargs else {})


@dataclass(frozen=True)
class _Poster:
    """One request body POSTed to `url` until it gets an answer: a transient failure (a status in
    `RETRY_STATUS`, a timeout, a dropped connection) waits `backoff_s` · 2^attempt (or the server's
    `Retry-After`), at most 60 s, and tries again, `retries` times; any other failure, or the last,
    is returned as an `EndpointError` so the other prompts go on."""

    url: str
    headers: dict[str, str]
    timeout: float
    retries: int
    backoff_s: float

    def __call__(self, body: dict[str, Any]) -> Generation | EndpointError:
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    choice = json.loads(resp.read())["choices"][0]
                return Generation(choice["message"]["content"] or "", choice.get("finish_reason") or "stop")
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS or attempt == self.retries:
                    detail = exc.read().decode(errors="replace")[:300]
                    return EndpointError(f"HTTP {exc.code} from {self.url}: {detail}")
                wait = _retry_after(exc.headers.get("Retry-After")) or self.backoff_s * 2**attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    return EndpointError(f"{self.url}: {exc}")
                wait = self.backoff_s * 2**attempt
            time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable: the last attempt returns")


def _raise_if_unanswered(out: list[Generation | BaseException], retries: int, journal: Path | None) -> None:
    """One `EndpointError` for every prompt left unanswered, once the others are done and saved."""
    failed = [o for o in out if isinstance(o, BaseException)]
    if failed:
        where = f"; the {len(out) - len(failed)} answers received are saved in {journal}" if journal else ""
        raise EndpointError(
            f"{len(failed)} of {len(out)} prompts got no answer after {retries} retries "
            f"(first: {failed[0]}){where}; rerun to ask only for the missing ones"
        )


def _request_key(url: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([url, body], sort_keys=True).encode()).hexdigest()


def _read_journal(journal: Path | None) -> dict[str, Generation]:
    """Answers saved by earlier attempts; a torn last line (killed mid-write) is ignored."""
    if journal is None or not journal.is_file():
        return {}
    saved = {}
    for line in journal.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        saved[row["key"]] = Generation(row["text"], row["finish_reason"])
    return saved


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:  # an HTTP date: fall back to the backoff
        return None


def generate_hf(
    model: Any,
    tokenizer: Any,
    chats: list[Chat],
    max_new_tokens: int,
    batch_size: int,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Generation]:
    from verticalft.scoring import generate

    return [
        Generation(c.text, c.finish_reason)
        for c in generate(model, tokenizer, chats, max_new_tokens, batch_size, chat_template_kwargs)
    ]
