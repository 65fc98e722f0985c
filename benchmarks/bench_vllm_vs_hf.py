"""vLLM serving vs plain transformers `generate`: output tokens/s on the same model and prompts.

Shows the bench stage's serving path is vLLM itself, not a wrapper around HF generate. Both sides
generate exactly `--tokens` tokens per prompt (EOS ignored), greedy, float32, from the same chat
prompts (the recipe's eval prompts):
- vLLM: the OpenAI-compatible server the bench stage starts (`ManagedServer`, same flags as the tiny
  profile), `concurrency` requests in flight (a thread pool over /v1/chat/completions);
- HF: `model.generate` on batches of `concurrency` left-padded prompts, one batch after another.
Server start-up is excluded (it is paid once per deployment); the first request/batch is a warm-up.

    .venv/bin/python benchmarks/bench_vllm_vs_hf.py --model runs/finance/tiny/dpo/model \\
        --prompts data_pipelines/finance/sample/eval.jsonl --n 64 --tokens 32 --concurrency 1 16
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def vllm_tokens_per_s(
    model: str, prompts: list[str], tokens: int, concurrency: list[int], log: Path
) -> dict[int, float]:
    from verticalft.serving.server import ManagedServer, free_port, vllm_command

    port = free_port()
    cmd = vllm_command(
        model, port, served_name="m", max_model_len=512, extra_args=["--enforce-eager", "--dtype", "float32"]
    )
    out = {}
    with ManagedServer(cmd, port, log, env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as server:

        def one(prompt: str) -> int:
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                    "temperature": 0, "ignore_eos": True}  # fmt: skip
            req = urllib.request.Request(server.base_url + "/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=300) as resp:
                return int(json.loads(resp.read())["usage"]["completion_tokens"])

        for c in concurrency:
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(one, prompts[:c]))  # warm-up
                t0 = time.perf_counter()
                n = sum(pool.map(one, prompts))
                out[c] = n / (time.perf_counter() - t0)
    return out


def hf_tokens_per_s(
    model_path: str, prompts: list[str], tokens: int, concurrency: list[int]
) -> dict[int, float]:
    import torch

    from verticalft.models import load_model, load_tokenizer

    model, tok = load_model(model_path, "none"), load_tokenizer(model_path)
    model.eval()
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]

    def batch(chunk: list[str]) -> int:
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return (gen.shape[1] - enc["input_ids"].shape[1]) * len(chunk)

    out = {}
    for c in concurrency:
        batch(texts[:c])  # warm-up
        t0 = time.perf_counter()
        n = sum(batch(texts[i : i + c]) for i in range(0, len(texts), c))
        out[c] = n / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", default="data_pipelines/finance/sample/eval.jsonl")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in rows][: args.n]
    hf = hf_tokens_per_s(args.model, prompts, args.tokens, args.concurrency)
    vl = vllm_tokens_per_s(
        args.model, prompts, args.tokens, args.concurrency, Path("/tmp/bench_vllm_vs_hf.log")
    )
    print(f"{len(prompts)} prompts × {args.tokens} output tokens, greedy, float32, model {args.model}")
    print("| concurrency | transformers generate (tok/s) | vLLM server (tok/s) | vLLM / HF |")
    print("|---|---|---|---|")
    for c in args.concurrency:
        print(f"| {c} | {hf[c]:.1f} | {vl[c]:.1f} | {vl[c] / hf[c]:.2f}x |")


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main()
