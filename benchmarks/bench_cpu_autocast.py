"""Training step on CPU: float32 vs bf16 autocast, same model, same batch.

    .venv/bin/python benchmarks/bench_cpu_autocast.py [--model runs/finance/tiny/cpt/model]
        [--batch 8] [--length 256] [--steps 5] [--rounds 4]

The toolkit trains in float32 on every CPU (`models.training_dtype`): without AVX-512-BF16/AMX a
bf16 matmul is ~30x slower. On a CPU that has AMX, bf16 autocast is the obvious lever for the
demo's training stages; this measures how much it buys for one forward + backward of the demo's
model (the tiny teacher after CPT: 4.46M parameters) and how far its loss moves from float32.
Rounds interleave the two settings and alternate which goes first; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, alternating_rounds, results_header  # noqa: E402


def cpu_flags() -> list[str]:
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return sorted(f for f in flags.split() if f.startswith(("amx", "avx512_bf16", "avx512f")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/finance/tiny/cpt/model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        sys.exit(f"--model {args.model}: no such folder (run `make demo` first, or pass an HF folder)")

    import torch
    from transformers import AutoModelForCausalLM

    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length))

    def step(bf16: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad()
        return float(loss)

    losses = {"fp32": step(False), "bf16": step(True)}
    times, orders = alternating_rounds(
        {"fp32": lambda: step(False), "bf16": lambda: step(True)}, args.rounds, args.steps
    )
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    result = {
        **results_header(Path(__file__).name, sys.argv[1:], load_before),
        "model": args.model,
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch": [args.batch, args.length],
        "seconds_per_step": {"fp32": round(fp32, 3), "bf16_autocast": round(bf16, 3)},
        "speedup_bf16_over_fp32": round(fp32 / bf16, 2),
        "loss": {k: round(v, 5) for k, v in losses.items()},
        "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "orders": orders,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_autocast.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
