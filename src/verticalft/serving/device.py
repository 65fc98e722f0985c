"""What the models were served on, recorded with every benchmark: throughput measured on one
device and priced at another's hourly rate is a different number, so the report says which."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def serving_device() -> dict[str, Any]:
    """Name, count and memory of the accelerators vLLM uses here (CUDA GPUs), else of the CPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {
            "kind": "gpu",
            "name": props.name,
            "count": torch.cuda.device_count(),
            "memory_gb": round(props.total_memory / 1e9, 1),
        }
    return {"kind": "cpu", "name": _cpu_model(), "count": os.cpu_count() or 1, "memory_gb": _ram_gb()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None
