"""The export side: the interpreter llm-compressor runs in, a real W8A8 quantization of a small
model, the push's file list and its failures without network (the end-to-end run of quantize →
eval → bench → export is in test_e2e.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from verticalft.hub_push import PushError, files_to_send, push
from verticalft.recipe import ExportStage
from verticalft.stages.quantize import JOB, QuantizeError, export_python, variant_name

ROOT = Path(__file__).resolve().parents[1]
EXPORT_PY = Path(sys.prefix).with_name(Path(sys.prefix).name + "-export") / "bin" / "python"


def test_the_export_interpreter_is_found_or_the_error_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.delenv("VERTICALFT_EXPORT_PYTHON", raising=False)
    with pytest.raises(QuantizeError, match="stages.export.python: /nowhere/python does not exist"):
        export_python(ExportStage(python="/nowhere/python"))
    fake = tmp_path / "python"
    fake.write_text("")
    monkeypatch.setenv("VERTICALFT_EXPORT_PYTHON", str(fake))
    assert export_python(ExportStage()) == str(fake)
    monkeypatch.delenv("VERTICALFT_EXPORT_PYTHON")
    # no sibling venv and no llm-compressor here: the message names the make target
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(QuantizeError, match=r"make setup-export.*env-export"):
        export_python(ExportStage())
    assert variant_name("pruned-16L", "FP8_DYNAMIC") == "pruned-16L-fp8_dynamic"


def _tiny_folder(tmp: Path) -> Path:
    """The tiny profile's teacher, built as the tiny_models stage builds it."""
    out = tmp / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "verticalft.cli",
            "tiny-models",
            "recipes/finance.yaml",
            "--runs-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = [p.parent for p in out.rglob("config.json") if "teacher" in str(p)]
    assert folders, list(out.rglob("*"))
    return folders[0]


@pytest.mark.slow
@pytest.mark.skipif(not EXPORT_PY.is_file(), reason="make setup-export has not run")
def test_w8a8_with_llm_compressor_writes_int8_weights_vllm_reads_as_compressed_tensors(tmp_path):
    model = _tiny_folder(tmp_path)
    calib = tmp_path / "calib.jsonl"
    calib.write_text(
        "".join(json.dumps({"text": f"Revenue rose {i}% in the quarter."}) + "\n" for i in range(8))
    )
    out = tmp_path / "w8a8"
    spec = {"model": str(model), "out": str(out), "scheme": "W8A8", "calibration": str(calib), "samples": 8,
            "max_length": 64, "smoothing": 0.8, "ignore": ["lm_head"]}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [str(EXPORT_PY), str(JOB), str(tmp_path / "spec.json")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    # compressed-tensors' W8A8 preset: int8 per-channel weights, int8 per-token dynamic activations
    group = q["config_groups"]["group_0"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "int-quantized"
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert group["input_activations"]["dynamic"] is True and group["input_activations"]["strategy"] == "token"
    assert q["ignore"] == ["lm_head"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys() if k.endswith("q_proj.weight")}  # noqa: SIM118
    assert dtypes and set(dtypes.values()) == {"I8"}, dtypes
    job = json.loads((out / "quantize.json").read_text())
    assert job["scheme"] == "W8A8" and job["calibration_samples"] == 8


def test_push_lists_the_folder_and_fails_cleanly_without_a_token_or_network(tmp_path, monkeypatch):
    folder = tmp_path / "student"
    folder.mkdir()
    with pytest.raises(PushError, match="no README.md model card"):
        files_to_send(folder)
    card = "---\ntags: [x]\n---\n# card\n"
    (folder / "README.md").write_text(card)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("local only")
    assert [(f.path, f.bytes) for f in files_to_send(folder)] == [
        ("README.md", len(card)),
        ("model.safetensors", 1000),
    ]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(PushError, match="set HF_TOKEN"):
        push(folder, "org/name", private=True)
    # a token but no Hub: nothing is sent and the folder is as it was
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*"))
    code = (
        "import sys; from pathlib import Path; from verticalft.hub_push import push, PushError\n"
        "try:\n    push(Path(sys.argv[1]), 'org/name', private=True)\n"
        "except PushError as e:\n    print(e); sys.exit(3)\n"
    )
    env = {
        **os.environ,
        "HF_TOKEN": "hf_secret_value",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "could not reach the Hub" in proc.stdout and "unchanged" in proc.stdout
    assert "hf_secret_value" not in proc.stdout + proc.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*")) == before
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 3 and "nothing was uploaded" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "verticalft.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_export_and_push_say_what_is_missing_and_exit_2(tmp_path):
    proc = _cli("export", "recipes/real_estate.yaml", "--runs-dir", str(tmp_path))  # its full profile
    assert proc.returncode == 2 and "has no stages.export section" in proc.stderr
    proc = _cli("export", "recipes/finance.yaml", "-p", "tiny", "--runs-dir", str(tmp_path))
    assert proc.returncode == 1 and "no run at" in proc.stderr and "verticalft run" in proc.stderr
    proc = _cli("push", "recipes/finance.yaml", "-p", "tiny", "--runs-dir", str(tmp_path), "--model", "student-s",
                "--repo", "acme/x", "--dry-run")  # fmt: skip
    assert proc.returncode == 2 and "no exported model 'student-s'" in proc.stderr
    assert "verticalft export recipes/finance.yaml" in proc.stderr


def test_a_quantized_folder_is_served_in_bf16_on_cpu_only(tmp_path):
    """vLLM's CPU INT8 kernel refuses fp32 activations (the tiny/small profiles serve in fp32)."""
    from verticalft.recipe import load_recipe
    from verticalft.serving.sizing import quantized_cpu_dtype

    plain, quantized = tmp_path / "plain", tmp_path / "w8a8"
    plain.mkdir()
    quantized.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (quantized / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}})
    )
    cpu = load_recipe(ROOT / "recipes/finance.yaml", "tiny")
    gpu = load_recipe(ROOT / "recipes/finance.yaml")
    assert quantized_cpu_dtype(cpu, str(quantized)) == "bfloat16"
    assert quantized_cpu_dtype(cpu, str(plain)) is None
    assert quantized_cpu_dtype(gpu, str(quantized)) is None
