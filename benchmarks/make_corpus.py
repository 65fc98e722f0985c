"""Generate a large synthetic finance corpus (JSONL) for the curation scale benchmark — not committed.

    python benchmarks/make_corpus.py --docs 1000000 --out /tmp/corpus-1m.jsonl

Each document is 4-14 lines drawn from the sentence pool of the shipped finance sample's clean
documents, with every number re-drawn (same digit count), so documents pass the recipe's filters
about as often as the sample's do but are unique. Planted, at fixed rates: exact copies of an
earlier document (re-cased, re-spaced), near copies (a few words edited), and documents quoting an
eval item. Document i depends on i alone (its own seeded RNG), so the first N documents of a
bigger corpus are the corpus of N documents: `--docs 250000` is a prefix of `--docs 1000000`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data_pipelines" / "finance" / "sample"
EXACT, NEAR, LEAK = 0.03, 0.03, 0.002  # shares of planted exact copies, near copies, eval leaks
_NUMBER = re.compile(r"\d+")


def sentence_pool() -> list[str]:
    """Lines and sentences of the sample's clean documents (planted noise left out)."""
    noisy = {json.loads(line)["id"] for line in (SAMPLE / "noise_labels.jsonl").read_text().splitlines()}
    pool: set[str] = set()
    for line in (SAMPLE / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["id"] in noisy:
            continue
        for part in row["text"].split("\n"):
            pool.update(s.strip() for s in re.split(r"(?<=[.?!])\s+", part) if len(s.split()) >= 4)
    return sorted(pool)


def renumber(text: str, rng: random.Random) -> str:
    return _NUMBER.sub(lambda m: str(rng.randrange(10 ** (len(m.group()) - 1), 10 ** len(m.group()))), text)


def original(i: int, pool: list[str]) -> str:
    rng = random.Random(i)
    return "\n".join(renumber(s, rng) for s in rng.sample(pool, rng.randint(4, 14)))


def document(i: int, pool: list[str], eval_prompts: list[str]) -> str:
    rng = random.Random(f"kind-{i}")
    roll = rng.random()
    if i > 100 and roll < EXACT:  # a re-published copy: same words, other case and spacing
        return "  ".join(original(rng.randrange(i), pool).upper().split(" "))
    if i > 100 and roll < EXACT + NEAR:  # an edited copy: one word in 40 replaced
        words = original(rng.randrange(i), pool).split(" ")
        for p in rng.sample(range(len(words)), max(1, len(words) // 40)):
            words[p] = rng.choice(["revised", "restated", "adjusted", "updated"])
        return " ".join(words)
    text = original(i, pool)
    if roll > 1 - LEAK:  # quotes an eval item
        text += "\n" + rng.choice(eval_prompts)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from tqdm.auto import tqdm

    pool = sentence_pool()
    prompts = [json.loads(line)["prompt"] for line in (SAMPLE / "eval.jsonl").read_text().splitlines()]
    prompts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for i in tqdm(range(args.docs), desc="documents", unit="doc", mininterval=2):
            date = f"{2012 + i % 14}-{1 + i % 12:02d}-{1 + i % 28:02d}"
            row = {
                "id": f"gen-{i:07d}",
                "text": document(i, pool, prompts),
                "source": "synthetic",
                "date": date,
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
