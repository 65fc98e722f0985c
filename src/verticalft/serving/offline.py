"""Batch generation with vLLM's offline engine (`vllm.LLM.chat`), one child process for many models.

Why a child process: vLLM sets process-wide state (torch threads, OpenMP binding, its engine
workers) that must not leak into the stage runner, and its memory is only surely returned when
the process exits. Why one process for all models: importing vLLM costs ~15 s on a small CPU; a
run evaluates up to six models, so the import is paid once and each model gets its own engine.

`generate(jobs, work_dir, engine_args, env)` writes a job file, runs
`python -m verticalft.serving.offline JOB OUT`, and returns per model the texts, finish reasons
and token counts. A model can be a merged folder or a base plus a PEFT LoRA adapter
(`LoRARequest`, the same adapter format the server's `--lora-modules` takes).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verticalft.logs import show_logs

logger = logging.getLogger(__name__)


def pick_backend(requested: str, endpoint: str | None = None) -> str:
    """Where generation runs: `auto` → openai when an endpoint is set, vLLM when importable, else
    transformers (`hf`); any other value as given."""
    import importlib.util

    if requested != "auto":
        return requested
    if endpoint:
        return "openai"
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


class OfflineGenerationError(RuntimeError):
    """The vLLM child process failed; the message carries the tail of its log."""


@dataclass
class Job:
    name: str
    model: str  # HF folder or hub id
    chats: list[list[dict[str, str]]]  # each a list of chat messages (system and earlier turns), sent as is
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    lora: str | None = None  # PEFT adapter folder served on top of `model`
    max_lora_rank: int | None = None
    chat_template: str | None = None  # the run's template (recipe models.chat_template); None: the folder's
    # its variables (recipe models.chat_template_kwargs), e.g. {"enable_thinking": False}
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # this model's own vllm.LLM(...) arguments (serving.sizing: its GPUs, its context), over the shared ones
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    texts: list[str]
    finish_reasons: list[str]
    output_tokens: list[int]
    mean_logprobs: list[float | None] = field(default_factory=list)  # per answer, from `logprobs`
    seconds: float = 0.0
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def generate(
    jobs: list[Job],
    work_dir: Path,
    engine_args: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Output]:
    """Run every job in one vLLM child process; raise OfflineGenerationError with its log tail."""
    from verticalft.procs import die_with_parent, guarded
    from verticalft.serving.server import log_tail

    work_dir.mkdir(parents=True, exist_ok=True)
    job_file, out_file, log_file = (work_dir / n for n in ("vllm_jobs.json", "vllm_out.json", "vllm.log"))
    job_file.write_text(
        json.dumps({"jobs": [asdict(j) for j in jobs], "engine_args": dict(engine_args or {})}, indent=1)
    )
    out_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "verticalft.serving.offline", str(job_file), str(out_file)]
    with log_file.open("wb") as log:
        # stdout to the log (vLLM is chatty); stderr too, except the progress bars the user watches
        proc = subprocess.run(
            guarded(cmd),
            start_new_session=True,  # the guard's group: vLLM's engine process included
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            preexec_fn=die_with_parent(),
        )
    if proc.returncode != 0 or not out_file.is_file():
        raise OfflineGenerationError(
            f"vLLM generation exited with code {proc.returncode}; last lines of {log_file}:\n{log_tail(log_file)}"
        )
    data = json.loads(out_file.read_text())
    return {name: Output(**o) for name, o in data.items()}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    results: dict[str, Any] = {}
    for job in (Job(**j) for j in spec["jobs"]):
        t0 = time.time()
        kwargs = {"seed": 0, **spec["engine_args"], **job.engine_args}
        if job.lora:
            kwargs |= {"enable_lora": True, "max_lora_rank": job.max_lora_rank or 16, "max_loras": 1}
        llm = LLM(model=job.model, **kwargs)
        loaded = time.time()
        # logprobs=0: the chosen token's log-probability only (the answer's confidence), no top-k
        params = SamplingParams(
            max_tokens=job.max_new_tokens, temperature=job.temperature, seed=0, logprobs=0
        )
        lora = LoRARequest(job.name, 1, job.lora) if job.lora else None
        outs = llm.chat(
            job.chats,
            params,
            use_tqdm=True,
            lora_request=lora,
            chat_template=job.chat_template,
            chat_template_kwargs=job.chat_template_kwargs or None,
        )
        results[job.name] = {
            "texts": [o.outputs[0].text for o in outs],
            "finish_reasons": [o.outputs[0].finish_reason or "stop" for o in outs],
            "output_tokens": [len(o.outputs[0].token_ids) for o in outs],
            "mean_logprobs": [_mean_logprob(o.outputs[0]) for o in outs],
            "seconds": round(time.time() - loaded, 3),
            "load_seconds": round(loaded - t0, 3),
        }
        logger.info(f"[verticalft] {job.name}: {len(outs)} prompts in {time.time() - loaded:.1f}s")
        del llm, outs
        gc.collect()
    return results


def _mean_logprob(completion: Any) -> float | None:
    n = len(completion.token_ids)
    total = completion.cumulative_logprob
    return round(total / n, 6) if n and total is not None else None


def main(argv: list[str]) -> int:
    job_file, out_file = Path(argv[0]), Path(argv[1])
    results = _run(json.loads(job_file.read_text()))
    tmp = out_file.with_suffix(".partial")
    tmp.write_text(json.dumps(results))
    tmp.replace(out_file)  # only a complete result is ever read
    return 0


if __name__ == "__main__":  # vLLM spawns workers: the guard is required (docs/STACK.md)
    show_logs()  # progress lines to stdout: vllm.log
    raise SystemExit(main(sys.argv[1:]))
