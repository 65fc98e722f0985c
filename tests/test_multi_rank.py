"""Launched stages on several ranks, as on one GPU node, run here as two CPU processes (torchrun,
gloo): the teacher cache built in parts by every rank, the ranks agreeing before one moves on, the
process group made before any model loads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Loaded by every Python process of the run (PYTHONPATH): rank 1 runs out of memory loading one
# student, and every model load says whether the process group existed at that moment.
SITE = """
import os

def _hook():
    import torch.distributed as dist
    import verticalft.distill.teacher as teacher
    import verticalft.stages.training as training

    def wrap(module):
        load = module.load_model

        def load_model(path, *a, **k):
            rank = os.environ.get("RANK")
            print(f"LOAD {path} rank={rank} group={dist.is_initialized()}", flush=True)
            if rank == "1" and str(path).rstrip("/").endswith("student-m"):
                raise RuntimeError("CUDA out of memory (injected on rank 1 by the test)")
            return load(path, *a, **k)

        module.load_model = load_model

    wrap(training)
    wrap(teacher)

if os.environ.get("RANK") is not None:
    _hook()
"""

SETS = [
    "stages.distill.teacher.model=tiny://teacher",  # no cpt/sft/dpo needed
    "models.students=[tiny://student-s,tiny://student-m]",  # the tiny profile builds student-s only
    "stages.distill.max_examples=64",
    "stages.distill.trainer.max_steps=4",
    "evaluation.batch_size=8",  # the teacher's batch: 64 examples → 8 parts of 8
    "evaluation.max_items=8",
]


def _run(runs: Path, hooks: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = [x for s in [*SETS, *extra] for x in ("--set", s)]
    args = ["run", "recipes/finance.yaml", "-p", "tiny", "--runs-dir", str(runs)]
    args += ["--only", "tiny_models", "--only", "distill", *sets]
    path = os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,  # the old code hung here until torch's 10-minute collective timeout
    )


def _one_process_cache(run_root: Path, out: Path):
    """The same examples through the plain one-pass writer (`write_cache` over `teacher_rows`)."""
    import torch

    from verticalft.distill import cache as tc
    from verticalft.distill.batching import chat_example
    from verticalft.distill.teacher import conversations, teacher_path
    from verticalft.models import load_model, load_tokenizer
    from verticalft.recipe import load_recipe
    from verticalft.rundir import RunDir
    from verticalft.stages.base import StageContext

    torch.set_num_threads(1)  # as the launched ranks (OMP_NUM_THREADS=1)
    recipe = load_recipe(ROOT / "recipes/finance.yaml", "tiny", overrides=SETS)
    ctx = StageContext(recipe, RunDir(run_root), "distill")
    cfg = recipe.stages.distill
    path = teacher_path(ctx)
    tok = load_tokenizer(path, recipe.models.chat_template, require_mask=True)
    kwargs = recipe.models.chat_template_kwargs
    examples = [chat_example(tok, m, cfg.max_length, kwargs) for m in conversations(ctx)[: cfg.max_examples]]
    key = tc.cache_key(tc.teacher_identity(path), tok, examples, cfg.top_k, cfg.temperature)
    teacher = load_model(path, "none")
    rows = tc.teacher_rows(
        teacher,
        examples,
        k=cfg.top_k,
        temperature=cfg.temperature,
        batch_size=8,
        vocab_size=len(tok),
        pad_id=tok.pad_token_id,
    )
    return key, tc.write_cache(out, rows, len(examples), min(cfg.top_k, len(tok)), len(tok), {})


def test_two_ranks_build_the_cache_in_parts_and_give_up_a_failed_student_together(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITE)
    runs = tmp_path / "runs"
    proc = _run(runs, hooks, "compute.launcher=torchrun", "compute.gpus_per_node=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # one student failed: the stage fails in part

    # every rank built its own share of the parts; rank 0 merged them once
    built = {
        int(r): p for r, p in re.findall(r"teacher cache: rank (\d) builds parts \[([\d, ]*)\] of 8", out)
    }
    assert built == {0: "0, 2, 4, 6", 1: "1, 3, 5, 7"}, out[-3000:]
    assert out.count("teacher cache: merging 8 parts") == 1 and "reusing" not in out
    cache_dir = runs / "finance/tiny/teacher_cache"
    (merged,) = [p.parent for p in cache_dir.glob("*/DONE")]
    assert not list(cache_dir.glob("*.parts")) and not list(cache_dir.glob("*.partial"))

    # every model load on every rank came after the process group existed
    # the two ranks print at once: a line may run into the next one's "LOAD", so match the value exactly
    loads = re.findall(r"LOAD (\S+) rank=(\d) group=(True|False)", out)
    assert {r for _, r, _ in loads} == {"0", "1"}
    assert all(g == "True" for _, _, g in loads), loads

    # student-m failed on rank 1 only, and both ranks gave it up together; student-s is kept
    assert "student student-m FAILED on rank 1: RuntimeError: CUDA out of memory" in out
    assert "student student-m FAILED on rank 0: FailedOnAnotherRank" in out
    stage = __import__("json").loads((runs / "finance/tiny/manifest.json").read_text())["stages"]["distill"]
    assert stage["status"] == "failed"
    assert set(stage["metrics"]["students"]) == {"student-s"}
    assert stage["metrics"]["students"]["student-s"]["train"]["world_size"] == 2
    assert "student-m" in stage["metrics"]["failed_students"]
    assert (runs / "finance/tiny/distill/student-s/STUDENT_DONE.json").is_file()

    # the merged cache holds exactly what one process writes in one pass over the same examples
    key, ref = _one_process_cache(runs / "finance/tiny", tmp_path / "one-process")
    assert merged.name == key  # the same examples, tokenizer, teacher, k and temperature
    from verticalft.distill.cache import TeacherCache

    got = TeacherCache(merged)
    assert got.meta["parts"] == 8 and got.meta["examples"] == len(ref) == 64
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_array_equal(got.ids, ref.ids)
    np.testing.assert_array_equal(got.logprobs, ref.logprobs)
    np.testing.assert_array_equal(got.tail, ref.tail)


BARRIER = """
import os, sys, time
import torch.distributed as dist
from verticalft.launch import init_process_state, main_process_first

init_process_state(float(sys.argv[1]))  # minutes
try:
    with main_process_first():  # rank 0 works alone for 8 s; rank 1 waits at the barrier
        if os.environ["RANK"] == "0":
            time.sleep(8)
    print(f"rank {os.environ['RANK']} passed the barrier", flush=True)
except Exception as exc:
    print(f"rank {os.environ['RANK']} timed out: {type(exc).__name__}", flush=True)
    os._exit(3)
"""


@pytest.mark.parametrize("minutes, passes", [(0.05, False), (1.0, True)])
def test_barriers_wait_as_long_as_the_recipe_says(tmp_path, minutes, passes):
    """torch's default process-group timeout is 10 minutes whatever the recipe says; the group is
    now made by `init_process_state` with `compute.timeout_minutes` (here 3 s and 60 s)."""
    script = tmp_path / "barrier.py"
    script.write_text(BARRIER)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(minutes)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = proc.stdout + proc.stderr
    if passes:
        assert proc.returncode == 0 and out.count("passed the barrier") == 2, out[-2000:]
    else:
        assert "rank 1 timed out" in out, out[-2000:]
