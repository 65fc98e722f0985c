"""Students pruned from the teacher: drop whole decoder layers, then distill (Minitron's recipe).

A student entry (a string, like `tiny://student-s` or an HF id) may be

    prune://teacher?layers=10&by=influence

- `teacher`: the distill stage's teacher (`stages.distill.teacher.model`, else the run's newest
  trained model dpo → sft → cpt, else `models.teacher`), the only source so far;
- `layers`: how many decoder layers the student keeps, 1 ≤ layers < the teacher's;
- `by` (default `influence`): which ones.
  `influence` is ShortGPT's block influence (Men et al., 2024): a layer whose output is nearly
  its input, BI = 1 − cos(h_in, h_out) averaged over calibration tokens, does little, so the
  layers with the lowest BI go. `even` keeps evenly spaced layers, first and last included.

Calibration text for `influence`: the first `CALIBRATION_DOCS` conversations of the distill
stage's SFT set (the curated one when curate ran), through the teacher's chat template, each cut
to `CALIBRATION_TOKENS` tokens — the text the student is then distilled on, in file order, so
the choice of layers is deterministic.

The student is an ordinary HF folder, built inside the distill stage when the student is
resolved (`distill/<student>/pruned/`, reused when complete): the kept layers renumbered,
`num_hidden_layers` updated, embeddings (tied or not), final norm and head kept, tokenizer and
generation config as the teacher's, saved in the teacher's dtype. It is written to a temporary
folder with its marker (`PRUNED.json`: kept layers, influence scores) and renamed into place.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

PRUNE_SCHEME = "prune://"
SOURCES = ("teacher",)
METHODS = ("influence", "even")
QUERY_KEYS = ("layers", "by")
MARKER = "PRUNED.json"
FORMAT = 1
CALIBRATION_DOCS = 32
CALIBRATION_TOKENS = 256
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class PruneSpec:
    source: str
    layers: int
    by: str


def is_prune(ref: str) -> bool:
    return ref.startswith(PRUNE_SCHEME)


def _parse(ref: str) -> tuple[PruneSpec | None, list[str]]:
    """(spec, problems): every problem of the string at once, the spec only when there are none."""
    parts = urlsplit(ref)
    problems = []
    if parts.netloc not in SOURCES or parts.path not in ("", "/"):
        problems.append(f"'{ref}': prune from `teacher` (write prune://teacher?layers=N&by=influence|even)")
    query = parse_qs(parts.query, keep_blank_values=True)
    for key in query:
        if key not in QUERY_KEYS:
            close = difflib.get_close_matches(key, QUERY_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"'{ref}': unknown key '{key}'{hint}; keys: {', '.join(QUERY_KEYS)}")
    problems += [f"'{ref}': '{k}' is given more than once" for k, v in query.items() if len(v) > 1]
    layers_text = query.get("layers", [None])[0]
    layers = int(layers_text) if layers_text and layers_text.isdigit() else None
    if layers_text is None:
        problems.append(f"'{ref}': say how many layers the student keeps, e.g. prune://teacher?layers=10")
    elif layers is None or layers < 1:
        problems.append(f"'{ref}': layers must be a whole number ≥ 1, got '{layers_text}'")
    by = query.get("by", [METHODS[0]])[0]
    if by not in METHODS:
        problems.append(f"'{ref}': by must be one of {', '.join(METHODS)}, got '{by}'")
    if problems or layers is None:
        return None, problems
    return PruneSpec(parts.netloc, layers, by), []


def parse_prune(ref: str) -> PruneSpec:
    """The spec of a `prune://` reference; ValueError listing what to fix."""
    spec, problems = _parse(ref)
    if spec is None:
        raise ValueError("; ".join(problems))
    return spec


def spec_problems(ref: str, teacher_layers: int | None) -> list[str]:
    """Validate-time problems of a student reference ([] when it is not `prune://`).

    `teacher_layers`: the teacher's layer count when its config is readable here (local folder,
    tiny spec, GGUF header, a known checkpoint), else None and only the string is checked.
    """
    if not is_prune(ref):
        return []
    spec, problems = _parse(ref)
    if spec is not None and teacher_layers is not None and spec.layers >= teacher_layers:
        problems.append(
            f"'{ref}': the teacher has {teacher_layers} layers; a pruned student keeps fewer "
            f"(layers between 1 and {teacher_layers - 1})"
        )
    return problems


def prune_name(ref: str) -> str:
    """Folder/report name of a pruned student: `prune://teacher?layers=10&by=even` → pruned-10L-even."""
    spec, _ = _parse(ref)
    if spec is None:
        return "pruned-" + "".join(c if c.isalnum() else "-" for c in ref.removeprefix(PRUNE_SCHEME))
    return f"pruned-{spec.layers}L-{spec.by}"


# --------------------------------------------------------------------------- choosing layers
def even_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices, evenly spaced, first and last included (keep=1: the first)."""
    if keep == 1:
        return [0]
    return [int(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def influence_layers(scores: list[float], keep: int) -> list[int]:
    """The `keep` layer indices left when the layers of lowest block influence go (ties: the earlier goes)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[len(scores) - keep :])


def block_influence(model: Any, batches: list[dict[str, Any]]) -> list[float]:
    """ShortGPT's BI per decoder layer: 1 − cos(layer input, layer output), mean over real tokens.

    Measured with forward hooks on the layers themselves, so the final norm (which HF applies to
    the last `hidden_states` entry) does not distort the last layer's score.
    """
    import torch

    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    count = 0
    mask: torch.Tensor | None = None

    def hook(index: int):
        def record(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            if mask is None:  # never: set before each batch's forward
                raise RuntimeError("block_influence: a layer ran outside a batch")
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            sums[index] += float(((1.0 - cos) * mask).sum())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                mask = batch["attention_mask"].float()
                count += int(mask.sum())
                model.get_decoder()(**batch)  # the layers only: no logits over the vocabulary
    finally:
        for h in handles:
            h.remove()
    return [s / max(count, 1) for s in sums]


def calibration_batches(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    """The conversations through the teacher's chat template (plain text without one), right-padded."""
    texts = []
    for messages in conversations[:CALIBRATION_DOCS]:
        if tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append("\n\n".join(m["content"] for m in messages))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return [
        dict(
            tokenizer(
                texts[i : i + CALIBRATION_BATCH],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=CALIBRATION_TOKENS,
                add_special_tokens=False,  # the template writes its own
            )
        )
        for i in range(0, len(texts), CALIBRATION_BATCH)
    ]


# --------------------------------------------------------------------------- cutting the model
def decoder_layers(model: Any) -> Any:
    decoder = model.get_decoder()
    if not hasattr(decoder, "layers"):
        raise ValueError(
            f"pruning needs a decoder-only model with `model.layers`; {type(model).__name__} has none"
        )
    return decoder.layers


def drop_layers(model: Any, keep: list[int]) -> Any:
    """Keep only the decoder layers `keep` (in order), renumbered; the config follows. In place."""
    import torch

    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(decoder_layers(model)[i] for i in keep)
    for new_index, layer in enumerate(decoder.layers):
        for module in layer.modules():  # attention's KV-cache slot
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config.get_text_config()
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):  # sliding/full attention per layer (Qwen3, Gemma …)
        config.layer_types = [config.layer_types[i] for i in keep]
    return model


def build_pruned(
    ref: str,
    teacher: str,
    out: Path,
    conversations: list[list[dict[str, str]]],
    trust_remote_code: bool = False,
) -> str:
    """Write the pruned student of `teacher` to `out` (atomically) and return the folder."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from verticalft.models import count_parameters, load_model

    spec = parse_prune(ref)
    t0 = time.time()
    model = load_model(teacher, "none", trust_remote_code)  # fp32 on CPU: the forward is fast there
    tokenizer = AutoTokenizer.from_pretrained(teacher, trust_remote_code=trust_remote_code)
    total = len(decoder_layers(model))
    if not 1 <= spec.layers < total:
        raise ValueError(f"{ref}: the teacher {teacher} has {total} layers; keep between 1 and {total - 1}")
    scores, calibration = None, None
    if spec.by == "influence":
        batches = calibration_batches(tokenizer, conversations)
        if not batches:
            raise ValueError(f"{ref}: by=influence needs calibration text, and the distill SFT set is empty")
        scores = block_influence(model, batches)
        keep = influence_layers(scores, spec.layers)
        calibration = {
            "documents": sum(len(b["input_ids"]) for b in batches),
            "tokens": int(sum(b["attention_mask"].sum() for b in batches)),
        }
    else:
        keep = even_layers(total, spec.layers)
    drop_layers(model, keep)
    stored = AutoConfig.from_pretrained(teacher, trust_remote_code=trust_remote_code).dtype
    model.to(stored if isinstance(stored, torch.dtype) else torch.float32)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) types the dtype as `self`
    record = {
        "format": FORMAT,
        "spec": ref,
        "teacher": teacher,
        "by": spec.by,
        "teacher_layers": total,
        "kept_layers": keep,
        "removed_layers": [i for i in range(total) if i not in keep],
        "influence": [round(s, 6) for s in scores] if scores else None,
        "calibration": calibration,
        "parameters": count_parameters(model)[1],
        "seconds": round(time.time() - t0, 1),
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # tied embeddings stay tied (config.tie_word_embeddings)
    AutoTokenizer.from_pretrained(teacher, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return str(out)


def pruning_record(folder: str | Path) -> dict[str, Any] | None:
    """What `build_pruned` recorded (kept layers, scores …) for a student folder, else None."""
    marker = Path(folder) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None
