"""How repeatable is one point of the bench stage's sweep? The same server, the same point, measured
again and again under the settings that might explain a 4.6x gap between two `make demo` runs
(student-s peaked at 357 tok/s in one run and 1,654 in the next).

One vLLM server (the bench stage's `ManagedServer` and `vllm bench serve` arguments) stays up; at
one concurrency the point is measured `--repeats` times in each setting, settings interleaved
round by round so drift hits all alike:
- `cold`: no warm-up requests, the tiny profile's 32 prompts (the old bench);
- `warm`: `concurrency` warm-up requests first, 32 prompts (the bench now);
- `warm-long`: warm-up, `--long-prompts` prompts (a measurement long enough to average out stalls).
The first `cold` repeat runs right after the server's start-up, as the old bench's first point did.
Reports per setting every repeat's output tok/s and median TPOT, and the spread (max − min) / min.

    .venv/bin/python benchmarks/bench_bench_repeatability.py --model runs/finance/tiny/distill/student-s/model \\
        --concurrency 16 --repeats 4

Writes benchmarks/results/bench_repeatability_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, model_label, resolve_model, results_header


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--long-prompts", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--work", default="/tmp/bench_repeatability")
    args = ap.parse_args(argv)

    from verticalft.serving.benchmark import BenchClient, Slo, benchmark_argv, relative_spread, summarise
    from verticalft.serving.server import ManagedServer, free_port, vllm_command

    load_before = os.getloadavg()
    model = resolve_model(args.model)
    model = str(Path(model).resolve()) if Path(model).exists() else model
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = vllm_command(model, port, served_name="m", max_model_len=args.input_len + args.output_len + 64,
                       extra_args=["--enforce-eager", "--dtype", "float32"])  # fmt: skip
    settings = {
        "cold": (0, args.prompts),
        "warm": (None, args.prompts),
        "warm-long": (None, args.long_prompts),
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in settings}
    slo = Slo()
    with (
        BenchClient(work / "client.log") as client,
        ManagedServer(cmd, port, work / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as server,
    ):
        for r in range(args.repeats):
            for name, (warmups, n) in settings.items():
                av = benchmark_argv(
                    server.base_url,
                    "m",
                    tokenizer=model,
                    concurrency=args.concurrency,
                    num_prompts=n,
                    input_len=args.input_len,
                    output_len=args.output_len,
                    slo=slo,
                    result_dir=work,
                    result_file=f"{name}-{r}.json",
                    seed=r,
                    warmups=warmups,
                )
                p = summarise(client.run_point(server, av, work / f"{name}-{r}.log"), slo)
                runs[name].append(
                    {k: p[k] for k in ("output_throughput", "median_tpot_ms", "median_ttft_ms", "duration")}
                )
                print(f"round {r + 1} {name:9s}: {p['output_throughput']:8.1f} tok/s, TPOT {p['median_tpot_ms']:.2f} ms, "
                      f"{p['duration']:.2f} s", flush=True)  # fmt: skip
    out = {
        **results_header(Path(__file__).name, argv, load_before),
        "model": args.model,
        "concurrency": args.concurrency,
        "settings": {
            k: {"warmups": w if w is not None else args.concurrency, "prompts": n}
            for k, (w, n) in settings.items()
        },
        "runs": runs,
        "spread": {k: relative_spread([x["output_throughput"] for x in v]) for k, v in runs.items()},
        "tpot_spread": {k: relative_spread([x["median_tpot_ms"] for x in v]) for k, v in runs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_repeatability_{model_label(args.model)}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"spread": out["spread"], "tpot_spread": out["tpot_spread"]}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
