"""What a non-main rank's host memory holds under FSDP2's cpu_ram_efficient_loading, before and
after loading full-parameter models in fp32 (models.load_kwargs).

With cpu_ram_efficient_loading, transformers gives the ranks other than local rank 0 parameters
that are `torch.empty` (allocated, never written: no resident pages), and accelerate's FSDP2
prepare then casts every trainable low-precision parameter to fp32 (`param.data.to(float32)`):
that cast writes a new fp32 tensor on every rank. Loaded in fp32, there is nothing to cast.
This measures the resident memory (VmRSS) of both, for N parameters, with torch itself — FSDP
needs GPUs, so the whole path cannot run here; the step it takes can.

    python benchmarks/bench_fsdp_load_memory.py [N]      # default 1e9 parameters
"""

from __future__ import annotations

import gc
import sys

import torch


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb * 1024 / 1e9  # VmRSS is in KiB


def main(n: int) -> None:
    base = rss_gb()
    empty_bf16 = torch.empty(n, dtype=torch.bfloat16)  # a non-main rank's bf16 parameter
    held = rss_gb() - base
    upcast = empty_bf16.to(torch.float32)  # accelerate's FSDP2 upcast of a trainable parameter
    before = rss_gb() - base
    del empty_bf16, upcast
    gc.collect()
    base = rss_gb()
    empty_fp32 = torch.empty(n, dtype=torch.float32)  # loaded in fp32: nothing to cast
    after = rss_gb() - base
    del empty_fp32
    print(f"N = {n:,} parameters")
    print(f"bf16 torch.empty held:              {held:6.2f} GB resident")
    print(
        f"before: after the fp32 upcast:      {before:6.2f} GB resident (4 bytes x N = {4 * n / 1e9:.2f} GB)"
    )
    print(f"after: fp32 torch.empty, no upcast: {after:6.2f} GB resident")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000_000)
