"""The teacher top-k cache: teacher log-probs on disk, so student training never loads the teacher.

A first pass runs the teacher once over the distillation set and keeps, for every *response*
token (the only ones the loss reads), the teacher's top-k token ids and log-probs at the
recipe's temperature, and the log of the mass outside the top-k, computed in fp32 before the
log-probs are rounded to fp16: the loss puts it in an explicit tail bucket (losses), so no
probability mass is dropped silently.

Layout of one cache folder (`<run>/teacher_cache/<key>/`, beside the stage folders so that a
rerun of the distill stage with other student settings reuses it):

    ids.npy        [tokens, k]  uint16 when the vocabulary fits (< 65,536 ids), else int32
    logprobs.npy   [tokens, k]  float16
    tail.npy       [tokens]     float32: log of the teacher's mass outside its top-k
    offsets.npy    [examples + 1] int64: example i owns rows offsets[i]:offsets[i+1]
    meta.json      the key's parts, k, temperature, dtypes, bytes per token
    DONE           written last: a folder without it is a killed build and is rebuilt

It is built in parts (`<key>.parts/part-NNNNN/`, each a cache of the same layout for a range of
examples, `part_ranges`): under a launcher every rank builds its share with its own copy of the
teacher, a killed build resumes at the first unfinished part, and rank 0 merges the parts into
the one folder above (`merge_parts`, the same bytes as a one-pass build).

The key hashes the teacher (its folder's config and weight files' names/sizes, or the run
fingerprint of the stage that produced it), the tokenizer's vocabulary, the chat template,
the tokenized data, k and the temperature: change any of them and a new cache is built; one
cache serves every student with the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verticalft.rundir import atomic_write_text

DONE = "DONE"


def cache_key(
    teacher_id: str, tokenizer: Any, examples: list[dict[str, Any]], k: int, temperature: float
) -> str:
    """sha256 over everything the cached numbers depend on (first 16 hex digits)."""
    h = hashlib.sha256()
    h.update(json.dumps({"teacher": teacher_id, "k": k, "temperature": temperature}, sort_keys=True).encode())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update((tokenizer.chat_template or "").encode())
    for ex in examples:
        h.update(np.asarray(ex["input_ids"], dtype=np.int64).tobytes())
        h.update(np.asarray(ex["response_mask"], dtype=np.int8).tobytes())
    return h.hexdigest()[:16]


def teacher_identity(path: str, run_fingerprint: str | None = None) -> str:
    """What identifies a teacher's weights without hashing tens of GB: the run fingerprint of
    the stage that wrote it when there is one, else its config plus weight file names and sizes."""
    if run_fingerprint:
        return f"{path}@{run_fingerprint}"
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id: the id (and its revision, if the user pins one) is the identity
    parts = [
        (p.name, p.stat().st_size)
        for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    ]
    config = (folder / "config.json").read_text() if (folder / "config.json").exists() else ""
    return hashlib.sha256(json.dumps([path, config, parts]).encode()).hexdigest()[:16]


@dataclass
class TeacherCache:
    """Read side: memory-mapped arrays, one slice per example."""

    root: Path

    def __post_init__(self) -> None:
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.ids = np.load(self.root / "ids.npy", mmap_mode="r")
        self.logprobs = np.load(self.root / "logprobs.npy", mmap_mode="r")
        self.tail = np.load(self.root / "tail.npy", mmap_mode="r")
        self.offsets = np.load(self.root / "offsets.npy")

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids [n, k], log-probs [n, k], tail log-mass [n]) of example i's response tokens."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.ids[a:b]), np.asarray(self.logprobs[a:b]), np.asarray(self.tail[a:b])

    def bytes_per_token(self) -> float:
        tokens = max(int(self.offsets[-1]), 1)
        arrays = (self.ids, self.logprobs, self.tail, self.offsets)
        return sum(a.nbytes for a in arrays) / tokens


def is_complete(root: Path) -> bool:
    return (root / DONE).exists()


def _id_dtype(vocab_size: int) -> Any:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _fresh(root: Path) -> Path:
    """The temporary folder a cache is written into before it is renamed to `root`."""
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, root: Path, info: dict[str, Any]) -> TeacherCache:
    """meta.json, rename into place, DONE last (a folder without DONE is a killed build)."""
    (tmp / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    cache = TeacherCache(root)
    info["bytes_per_token"] = round(cache.bytes_per_token(), 1)
    atomic_write_text(root / "meta.json", json.dumps(info, indent=2, sort_keys=True))
    atomic_write_text(root / DONE, "ok\n")
    return TeacherCache(root)


def write_cache(
    root: Path,
    per_example: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_examples: int,
    k: int,
    vocab_size: int,
    meta: dict[str, Any],
) -> TeacherCache:
    """Write (ids [n_i, k], logprobs [n_i, k], tail [n_i]) per example into `root`, atomically.

    Rows go to a temporary folder first; it is renamed into place and DONE is written last,
    so a killed build leaves no folder that looks finished.
    """
    id_dtype = _id_dtype(vocab_size)
    tmp = _fresh(root)
    ids_parts, lp_parts, tail_parts, offsets = [], [], [], [0]
    for ids, logprobs, tail in per_example:
        ids_parts.append(np.asarray(ids, dtype=id_dtype).reshape(-1, k))
        lp_parts.append(np.asarray(logprobs, dtype=np.float16).reshape(-1, k))
        tail_parts.append(np.asarray(tail, dtype=np.float32).reshape(-1))
        offsets.append(offsets[-1] + len(ids_parts[-1]))
    if len(offsets) - 1 != n_examples:
        raise RuntimeError(f"teacher cache: wrote {len(offsets) - 1} examples, expected {n_examples}")
    np.save(tmp / "ids.npy", np.concatenate(ids_parts) if ids_parts else np.zeros((0, k), id_dtype))
    np.save(tmp / "logprobs.npy", np.concatenate(lp_parts) if lp_parts else np.zeros((0, k), np.float16))
    np.save(tmp / "tail.npy", np.concatenate(tail_parts) if tail_parts else np.zeros((0,), np.float32))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    info = {**meta, "k": k, "examples": n_examples, "tokens": offsets[-1]}
    info |= {"id_dtype": np.dtype(id_dtype).name, "logprob_dtype": "float16"}
    return _finish(tmp, root, info)


# --------------------------------------------------------------------------- built in parts
PARTS = 64  # about this many parts per cache: 8 per rank on one 8-GPU node


def part_ranges(n_examples: int, batch_size: int, parts: int = PARTS) -> list[tuple[int, int]]:
    """[start, end) example ranges of the cache's parts: a whole number of teacher batches each,
    so the batches (and with them every cached number) are the same whichever rank builds which
    part and however many ranks there are."""
    per = max(1, -(-n_examples // parts))
    per = -(-per // batch_size) * batch_size
    return [(a, min(a + per, n_examples)) for a in range(0, n_examples, per)]


def parts_of_rank(n_parts: int, rank: int, world: int) -> list[int]:
    """Round-robin: rank r builds parts r, r + world, … (equal shares when parts are equal)."""
    return list(range(rank, n_parts, world))


def merge_parts(root: Path, parts: list[Path], vocab_size: int, meta: dict[str, Any]) -> TeacherCache:
    """One cache from its finished parts, in order, written through memory maps (one part's
    rows in memory at a time); the same bytes as a cache written in one pass."""
    from numpy.lib.format import open_memmap

    readers = [TeacherCache(p) for p in parts]
    k = readers[0].k if readers else int(meta.get("k", 1))
    tokens = sum(int(r.offsets[-1]) for r in readers)
    id_dtype = _id_dtype(vocab_size)
    tmp = _fresh(root)
    ids = open_memmap(tmp / "ids.npy", mode="w+", dtype=id_dtype, shape=(tokens, k))
    lps = open_memmap(tmp / "logprobs.npy", mode="w+", dtype=np.float16, shape=(tokens, k))
    tail = open_memmap(tmp / "tail.npy", mode="w+", dtype=np.float32, shape=(tokens,))
    offsets, at = [np.zeros(1, np.int64)], 0
    for r in readers:
        n = int(r.offsets[-1])
        ids[at : at + n], lps[at : at + n], tail[at : at + n] = r.ids, r.logprobs, r.tail
        offsets.append(r.offsets[1:] + at)
        at += n
    for array in (ids, lps, tail):
        array.flush()
    del ids, lps, tail
    np.save(tmp / "offsets.npy", np.concatenate(offsets))
    n_examples = sum(len(r) for r in readers)
    info = {**meta, "k": k, "examples": n_examples, "tokens": tokens, "parts": len(parts)}
    info |= {"id_dtype": np.dtype(id_dtype).name, "logprob_dtype": "float16"}
    return _finish(tmp, root, info)


def teacher_rows(
    teacher: Any,
    examples: list[dict[str, Any]],
    *,
    k: int,
    temperature: float,
    batch_size: int,
    vocab_size: int | None = None,
    pad_id: int = 0,
    chunk_size: int | None = None,
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run the teacher over `examples` (input_ids + response_mask) and yield, per example, the
    top-k ids / log-probs / tail log-mass of every position whose next token is a response token.

    The teacher never builds [batch, seq, vocab] logits (10 GB in fp32 for 4 x 4,096 positions at
    a 152k vocabulary): its final hidden states at the response positions are projected to the
    vocabulary `chunk_size` positions at a time (default losses.DEFAULT_CHUNK; 0: all at once)
    and only each chunk's top-k is kept.
    """
    import torch
    from tqdm.auto import tqdm

    from verticalft.distill.batching import DistillCollator, response_hidden
    from verticalft.distill.losses import DEFAULT_CHUNK, teacher_topk

    collate = DistillCollator(pad_id)
    teacher.eval()
    device = next(teacher.parameters()).device
    chunk = DEFAULT_CHUNK if chunk_size is None else chunk_size
    for start in tqdm(range(0, len(examples), batch_size), desc="teacher cache", unit="batch"):
        rows = [
            {**ex, "example_index": start + j} for j, ex in enumerate(examples[start : start + batch_size])
        ]
        batch = collate(rows)
        mask = (batch["labels"][:, 1:] != -100).to(device)
        inputs = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }
        with torch.no_grad():
            hidden, head = response_hidden(teacher, inputs, mask, vocab_size)  # [tokens, hidden]
            step = chunk if chunk > 0 else max(len(hidden), 1)
            parts = [
                teacher_topk(head(hidden[a : a + step]), k, temperature)
                for a in range(0, max(len(hidden), 1), step)
            ]
        counts = mask.sum(1).tolist()
        per_example = [torch.cat(p).cpu().split(counts) for p in zip(*parts, strict=True)]
        for ids, values, tail in zip(*per_example, strict=True):
            yield ids.numpy(), values.numpy(), tail.numpy()
