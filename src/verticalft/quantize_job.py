"""One model, one quantization scheme, with llm-compressor: the process the quantize stage starts.

Why a separate process and interpreter: llm-compressor pins transformers and compressed-tensors
to releases that vLLM's pins exclude (llmcompressor 0.14: transformers<=5.17, compressed-tensors
0.19; vllm 0.32: compressed-tensors 0.17), so it lives in its own environment (`make
setup-export` → `.venv-export`), as llm-compressor's own docs suggest for serving stacks. This
file therefore imports nothing from verticalft and only the standard library at module level;
the stage runs it by path: `<export python> quantize_job.py SPEC.json`.

SPEC (JSON): model (an HF folder), out (the folder to write), scheme (a preset name of
compressed-tensors: W8A8, W4A16, FP8_DYNAMIC, ...), calibration (a JSONL of {"text": ...},
the run's SFT conversations rendered with the chat template), samples, max_length, smoothing
(SmoothQuant strength for W8A8, 0 to skip), ignore (module names left unquantized).

The recipes are llm-compressor's own examples (examples/quantization_w8a8_int8,
quantization_w4a16, quantization_w8a8_fp8): SmoothQuant then GPTQ for INT8 weights and
activations, GPTQ for 4-bit weights, a data-free pass for FP8 with dynamic activation scales.
The folder is saved compressed (compressed-tensors format, `quantization_config` in
config.json), which vLLM and transformers load as they are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# Schemes whose activations are quantized at run time or that need no calibration data.
DATA_FREE = {"FP8_DYNAMIC", "FP8_BLOCK"}


def modifiers(scheme: str, smoothing: float, ignore: list[str]) -> list[Any]:
    """The llm-compressor recipe for `scheme` (the modifiers its examples use)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if scheme in DATA_FREE:
        return [QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)]
    steps: list[Any] = []
    if scheme.startswith("W8A8") and smoothing > 0:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        steps.append(SmoothQuantModifier(smoothing_strength=smoothing))
    steps.append(GPTQModifier(targets="Linear", scheme=scheme, ignore=ignore))
    return steps


def calibration_set(path: str, samples: int, max_length: int, tokenizer: Any) -> Any:
    """The first `samples` texts of the JSONL at `path`, tokenized (no padding: batch size 1)."""
    from datasets import Dataset

    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) >= samples:
                break
    rows = [tokenizer(t, max_length=max_length, truncation=True, add_special_tokens=False) for t in texts]
    return Dataset.from_list(
        [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows]
    )


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16)
    scheme = spec["scheme"]
    kwargs: dict[str, Any] = {}
    if scheme not in DATA_FREE:
        data = calibration_set(spec["calibration"], spec["samples"], spec["max_length"], tokenizer)
        kwargs = {"dataset": data, "num_calibration_samples": len(data), "max_seq_length": spec["max_length"]}
    oneshot(
        model=model,
        recipe=modifiers(scheme, spec.get("smoothing", 0.0), spec.get("ignore", ["lm_head"])),
        **kwargs,
    )
    out = Path(spec["out"])
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    import compressed_tensors
    import llmcompressor

    result = {
        "scheme": scheme,
        "seconds": round(time.perf_counter() - started, 1),
        "calibration_samples": kwargs.get("num_calibration_samples", 0),
        "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__,
    }
    (out / "quantize.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: quantize_job.py SPEC.json")
    sys.exit(main(sys.argv[1]))
