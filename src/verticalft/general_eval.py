"""General ability on lm-evaluation-harness tasks: did domain training cost the model what it knew?

The eval stage (`stages.eval.general`) runs lm-eval's own command line, `python -m lm_eval run`,
once per model of the run, in a child process: the figures are lm-eval's, computed the way every
published lm-eval number is, and the command recorded in the manifest reproduces them by hand.
A child per model also gives back all its memory (a vLLM engine on a GPU included) before the next.

lm-eval runs offline (`HF_DATASETS_OFFLINE`/`HF_HUB_OFFLINE` default to 1 in its environment): the
shipped task (`data_pipelines/general/lm_eval/`, lm-eval's YAML format with its data beside it)
needs nothing else; lm-eval's own tasks need their datasets in the HF cache. Its working directory
is the task folder (`include_path`), so a task's relative `data_files` load from there.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.data import DataError
from verticalft.recipe import GeneralEval
from verticalft.rundir import atomic_write_json

logger = logging.getLogger(__name__)


class GeneralEvalError(RuntimeError):
    """lm-eval failed for a model; the message carries the tail of its log."""


@dataclass
class GeneralResult:
    """One model's lm-eval run: `scores` is task → the configured metric."""

    scores: dict[str, float]
    samples: dict[str, int]  # task → items scored (after --limit)
    command: str  # shell-quoted, as run
    seconds: float


def problems(cfg: GeneralEval | None) -> list[str]:
    """What stops lm-eval from running (not installed, no task folder), said before any work."""
    import importlib.util

    if cfg is None:
        return []
    found = []
    if importlib.util.find_spec("lm_eval") is None:
        found.append("stages.eval.general: lm-eval is not installed: pip install 'verticalft[general]'")
    if cfg.include_path and not Path(cfg.include_path).is_dir():
        found.append(
            f"stages.eval.general.include_path: no folder {cfg.include_path} (paths resolve from {Path.cwd()})"
        )
    return found


def pick_backend(requested: str) -> str:
    """lm-eval's model type: `auto` → vllm with a CUDA GPU and vLLM installed, else hf. On CPU a
    vLLM engine takes about a minute to start per model, and lm-eval's log-likelihood requests are
    one forward pass each, which transformers does as fast."""
    if requested != "auto":
        return requested
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def command(cfg: GeneralEval, model_path: str, backend: str, out_dir: Path, on_gpu: bool) -> list[str]:
    """The lm-eval command line for one model (`python -m lm_eval run …`, lm-eval's own CLI)."""
    if "," in model_path:
        raise DataError(
            f"stages.eval.general: lm-eval's --model_args cannot take a path with a comma: {model_path}"
        )
    model_args: dict[str, Any] = {"pretrained": model_path}
    if not on_gpu:
        model_args["dtype"] = "float32"  # bf16 matmuls are slow on CPU; a GPU keeps the model's own
    model_args.update(cfg.model_args)
    args = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        backend,
        "--model_args",
        ",".join(f"{k}={v}" for k, v in model_args.items()),
        "--tasks",
        ",".join(cfg.tasks),
        "--batch_size",
        str(cfg.batch_size),
        "--output_path",
        str(out_dir),
        "--seed",
        "0",
    ]
    if cfg.include_path:
        args += ["--include_path", str(Path(cfg.include_path).resolve())]
    if cfg.limit is not None:
        args += ["--limit", str(cfg.limit)]
    if cfg.num_fewshot is not None:
        args += ["--num_fewshot", str(cfg.num_fewshot)]
    if cfg.apply_chat_template:
        args.append("--apply_chat_template")
    if backend == "hf":
        args += ["--device", "cuda" if on_gpu else "cpu"]
    return args


def read_results(out_dir: Path, tasks: list[str], metric: str) -> tuple[dict[str, float], dict[str, int]]:
    """The configured metric per task and the items scored, from lm-eval's newest results file
    (`<output_path>/<model>/results_<time>.json`)."""
    found = sorted(out_dir.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise GeneralEvalError(f"lm-eval wrote no results_*.json under {out_dir}")
    data = json.loads(found[-1].read_text())
    scores, samples = {}, {}
    for task in tasks:
        row = data["results"].get(task)
        if row is None:
            raise GeneralEvalError(
                f"lm-eval's {found[-1]} has no task '{task}' (it has {', '.join(data['results'])})"
            )
        key = f"{metric},none"
        if key not in row:
            have = sorted(k.split(",")[0] for k in row if "," in k and "stderr" not in k)
            raise GeneralEvalError(
                f"stages.eval.general.metric: task '{task}' reports no '{metric}' (it reports {', '.join(have)})"
            )
        scores[task] = float(row[key])
        samples[task] = int(
            data.get("n-samples", {}).get(task, {}).get("effective", row.get("sample_len", 0))
        )
    return scores, samples


def evaluate(cfg: GeneralEval, model_path: str, work: Path, backend: str) -> GeneralResult:
    """lm-eval on one model, in `work` (its log, its output, and `general.json`). A finished run
    with the same command is kept, so a stage rerun redoes only the models that lacked one."""
    import torch

    from verticalft.procs import die_with_parent, guarded
    from verticalft.serving.server import log_tail

    on_gpu = torch.cuda.is_available()
    if found := problems(cfg):
        raise DataError("; ".join(found))
    cwd = Path(cfg.include_path) if cfg.include_path else work
    work.mkdir(parents=True, exist_ok=True)
    if Path(model_path).exists():  # lm-eval runs in the task folder: a relative path would miss
        model_path = str(Path(model_path).resolve())
    args = command(cfg, model_path, backend, (work / "lm_eval").resolve(), on_gpu)
    line = shlex.join(args)
    done = work / "general.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        if kept.get("command") == line:
            return GeneralResult(**kept)
    log_file = work / "lm_eval.log"
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    with log_file.open("wb") as log:
        proc = subprocess.run(
            guarded(args),
            cwd=cwd,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(),
        )
    if proc.returncode != 0:
        raise GeneralEvalError(
            f"lm-eval on {model_path} exited with code {proc.returncode}; last lines of {log_file}:\n"
            f"{log_tail(log_file)}"
        )
    scores, samples = read_results(work / "lm_eval", cfg.tasks, cfg.metric)
    result = GeneralResult(scores, samples, line, round(time.monotonic() - start, 1))
    atomic_write_json(done, vars(result))
    return result


def mean(scores: dict[str, float]) -> float:
    """The unweighted mean over tasks (each task counts once, as lm-eval's group averages do
    when `weight_by_size` is off)."""
    return sum(scores.values()) / len(scores)
