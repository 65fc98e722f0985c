"""Before any GPU work: a recipe that names a GPU must find one, or stop and say why.

Why: without this check a recipe with `compute.gpu: h100-sxm` on a machine where torch sees no GPU
trains on the CPU in fp32 (`accelerate launch --cpu`, `use_cpu`) without a word: hours in, nothing
is wrong but everything is slow. The usual cause on a real GPU node is the driver: PyPI's torch
2.13.0 Linux wheel is built for CUDA 13.0 (it requires cuda-toolkit==13.0.3), which needs an R580
driver; on an older one `torch.cuda.is_available()` is simply False.

Only the stages that put work on the GPU are checked (the training and serving stages of `stages.registry`); curate, cost,
route, report, plan and validate run anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from typing import TYPE_CHECKING

from verticalft.stages.registry import serving_stages, training_stages

if TYPE_CHECKING:
    from verticalft.recipe import Recipe

# The oldest Linux driver each CUDA release runs on: NVIDIA CUDA Toolkit release notes, "CUDA
# Toolkit and Corresponding Driver Versions" (13.0 GA >= 580.65.06, 12.8 GA >= 570.26, 12.6 GA
# >= 560.28.03, 12.4 GA >= 550.54.14), and NVIDIA's data-center driver matrix: R580 is the branch
# that supports CUDA 13.x (docs.nvidia.com/datacenter/tesla/drivers/supported-drivers-and-cuda-
# toolkit-versions.html). Keys: "major.minor", or "major" for every minor of it.
CUDA_DRIVER_MINIMUM = {"13": 580, "12.8": 570, "12.6": 560, "12.4": 550}

HOW_TO_PROCEED = (
    "to run on this machine's CPU instead: `--profile tiny` (tiny models, minutes) or "
    "`--set compute.gpu=cpu` (the recipe's models, fp32, slow)"
)


def driver_minimum(cuda: str | None) -> int | None:
    """The driver branch (e.g. 580) a torch built for CUDA `cuda` ("13.0") needs; None if unknown."""
    if not cuda:
        return None
    major, _, rest = cuda.partition(".")
    minor = rest.split(".")[0]
    return CUDA_DRIVER_MINIMUM.get(f"{major}.{minor}") or CUDA_DRIVER_MINIMUM.get(major)


def nvidia_smi_driver() -> str | None:
    """The driver version `nvidia-smi` reports ("550.54.15"), None without nvidia-smi; its error
    text when it runs but fails (no device, driver/library mismatch)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not out:
        return f"failed (exit {proc.returncode}): {out[0] if out else 'no output'}"
    return out[0].strip()


def gpu_problem(recipe: Recipe, stages: Iterable[str]) -> str | None:
    """Why the recipe's GPU stages cannot run here (torch sees no CUDA GPU although `compute.gpu`
    names one), with torch's CUDA build, the driver it needs, what nvidia-smi says and the way
    out; None when a GPU is visible, the recipe runs on `cpu`, or no stage here needs a GPU."""
    gpu_stages = [s for s in stages if s in (*training_stages(), *serving_stages())]
    if recipe.compute.gpu == "cpu" or not gpu_stages:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    lines = [
        f"compute.gpu is {recipe.compute.gpu} but torch sees no CUDA GPU (torch.cuda.is_available() is "
        f"False); {', '.join(gpu_stages)} would run on the CPU in fp32"
    ]
    cuda = torch.version.cuda
    need = driver_minimum(cuda)
    if cuda is None:
        lines.append(
            f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install "
            f"PyPI's torch=={torch.__version__.split('+')[0]} (its Linux wheel is the CUDA build)"
        )
    else:
        needs = f"an NVIDIA driver R{need} or newer" if need else "a driver that supports it"
        lines.append(f"torch {torch.__version__} is built for CUDA {cuda}: it needs {needs}")
    driver = nvidia_smi_driver()
    if driver is None:
        lines.append("nvidia-smi: not found (no NVIDIA driver installed on this machine?)")
    elif driver.startswith("failed"):
        lines.append(f"nvidia-smi {driver}")
    else:
        major = driver.split(".")[0]
        old = need is not None and major.isdigit() and int(major) < need
        verdict = f": older than R{need}, update the driver" if old else ""
        lines.append(f"nvidia-smi: driver {driver}{verdict}")
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        lines.append(
            f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} limits the GPUs torch sees"
        )
    lines.append(HOW_TO_PROCEED)
    return "\n    ".join(lines)
