"""Teacher generations for sequence-level distillation, from one of three backends.

- `vllm`: vLLM's offline `LLM.chat` (batched, paged attention) — the production path;
- `openai`: any OpenAI-compatible `/chat/completions` endpoint — a vLLM server, or a hosted
  model as the teacher; the API key is read from the environment variable the recipe names
  and is never written anywhere;
- `hf`: transformers `generate` (the fallback where vLLM is not installed, e.g. plain CPU CI).

Every backend returns the text and whether it finished on its own (`finish_reason` "stop")
or was cut at `max_new_tokens` ("length"), so truncated generations can be dropped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"


def pick_backend(requested: str, endpoint: str | None) -> str:
    """`auto` → openai when an endpoint is set, vLLM when importable, else HF."""
    if requested != "auto":
        return requested
    if endpoint:
        return "openai"
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def chats(prompts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in prompts]


def generate_vllm(
    model_path: str,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    work_dir: Path,
    engine_args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    chat_template: str | None = None,
) -> list[Generation]:
    """vLLM's offline engine in its own process (`serving.offline`, the eval stage's path too),
    rendering prompts with `chat_template` (the run's) when given, else the folder's own."""
    from verticalft.serving.offline import Job, generate

    job = Job("teacher", model_path, prompts, max_new_tokens, temperature, chat_template=chat_template)
    o = generate([job], work_dir, engine_args or {"enforce_eager": True}, env)["teacher"]
    return [Generation(t, r) for t, r in zip(o.texts, o.finish_reasons, strict=True)]


def generate_openai(
    endpoint: str,
    model: str,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    api_key_env: str | None = None,
    concurrency: int = 8,
    timeout: float = 300.0,
) -> list[Generation]:
    """POST each prompt to `<endpoint>/chat/completions`, `concurrency` at a time."""
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(f"distill.teacher.api_key_env: environment variable {api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    url = endpoint.rstrip("/") + "/chat/completions"

    def one(prompt: str) -> Generation:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            choice = json.loads(resp.read())["choices"][0]
        return Generation(choice["message"]["content"] or "", choice.get("finish_reason") or "stop")

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(
            tqdm(pool.map(one, prompts), total=len(prompts), desc="teacher (endpoint)", unit="prompt")
        )


def generate_hf(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[Generation]:
    from verticalft.scoring import generate

    return [
        Generation(text, reason)
        for text, reason in generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    ]
