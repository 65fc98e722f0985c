"""Shared machinery for the per-domain sample-data builders in `data_pipelines/<domain>/`.

A domain builder supplies two generators — a raw document and a task item — and this module
turns them into the five files every recipe expects:

    corpus.jsonl        raw domain text, with *planted noise* (see `plant_noise`)
    noise_labels.jsonl  ground truth of the planted noise, one row per noisy document
    heldout.jsonl       clean domain text kept out of CPT, for perplexity before/after
    sft.jsonl           chat `messages` (user prompt → assistant answer)
    preferences.jsonl   conversational prompt / chosen / rejected; `rejected_kind` says which:
                        `wrong` (a wrong figure or label) or `hallucination` (the right answer
                        plus an unsupported claim)
    eval.jsonl          held-out task items with `answer`, `kind` (label|number) and
                        `difficulty` (1 easy … 3 hard) so no tiny model saturates it

Everything is deterministic from a seed, so the committed sample can be rebuilt byte for byte
(tests check that).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verticalft.curation.pii import luhn_valid
from verticalft.rundir import write_jsonl


@dataclass(frozen=True)
class TaskItem:
    task: str
    prompt: str
    answer: str
    kind: str  # "label" or "number"
    difficulty: int  # 1 easy, 2 medium, 3 hard
    rejected: str  # a plausible wrong answer for the preference set


DocFn = Callable[[random.Random], dict[str, Any]]
TaskFn = Callable[[random.Random], TaskItem]


def luhn_complete(prefix: str) -> str:
    """Append the Luhn check digit to `prefix` (so planted card numbers are 'real-looking')."""
    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


def iban_de(bban: str) -> str:
    """A German IBAN with valid ISO 13616 check digits, grouped in fours as printed."""
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    raw = f"DE{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


# --------------------------------------------------------------------------- noise
BOILERPLATE = [
    "Home | About | Contact | Careers | Investor Relations | Privacy Policy",
    "We use cookies to improve your experience. By continuing you accept our cookie policy.",
    "Click here to subscribe to our newsletter.",
    "Copyright 2024. All rights reserved.",
    "Share this page: Facebook Twitter LinkedIn Email",
    "Terms of Use | Sitemap | Accessibility | Do Not Sell My Information",
]
JUNK = [
    "N/A",
    "Page 3 of 7",
    "asdf asdf",
    "lorem ipsum",
    "TBD",
    "[image]",
    "null",
    "-- continued --",
    "click",
    "...",
]
NON_ENGLISH = [
    "Der Umsatz des Unternehmens stieg im dritten Quartal deutlich an, während die Kosten stabil blieben. "
    "Der Vorstand erwartet für das kommende Geschäftsjahr ein moderates Wachstum und eine stabile Dividende.",
    "Los ingresos de la empresa aumentaron en el tercer trimestre, mientras que los costes se mantuvieron "
    "estables. La dirección espera un crecimiento moderado para el próximo ejercicio fiscal.",
    "Le chiffre d'affaires de la société a progressé au troisième trimestre, tandis que les coûts sont restés "
    "stables. La direction prévoit une croissance modérée pour le prochain exercice.",
    "Il fatturato della società è aumentato nel terzo trimestre, mentre i costi sono rimasti stabili. "
    "Il consiglio di amministrazione prevede una crescita moderata per il prossimo esercizio.",
    "Het bedrijf rapporteerde een hogere omzet in het derde kwartaal, terwijl de kosten stabiel bleven. "
    "Het bestuur verwacht een gematigde groei in het komende boekjaar.",
]
PROPRIETARY_LICENSE = "proprietary-no-redistribution"


def _pii_values(rng: random.Random) -> dict[str, str]:
    card = luhn_complete("4" + "".join(str(rng.randint(0, 9)) for _ in range(14)))
    return {
        "email": f"{rng.choice(['j.smith', 'mgarcia', 'li.wei', 'a.khan', 'pat.obrien'])}{rng.randint(1, 99)}@"
        f"{rng.choice(['examplebank.com', 'mail.example.org', 'corp-example.net'])}",
        "phone": f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        "ssn": f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999):04d}",
        "card": " ".join(card[i : i + 4] for i in range(0, 16, 4)),
        "iban": iban_de("".join(str(rng.randint(0, 9)) for _ in range(18))),
        "account": f"{rng.randint(10**9, 10**10 - 1)}",
        "ip": f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
    }


PII_SENTENCES = {
    "email": "For questions contact {v}.",
    "phone": "Call the investor desk at {v}.",
    "ssn": "Customer SSN on file: {v}.",
    "card": "Card used for the payment: {v}.",
    "iban": "Wire the funds to IBAN {v}.",
    "account": "Settlement account number {v} was debited.",
    "ip": "Login recorded from IP address {v}.",
}


def _near_duplicate(text: str, rng: random.Random) -> str:
    """A light edit: a changed word or two and an extra line (a re-published copy, not a new doc)."""
    words = text.split(" ")
    for _ in range(2):
        i = rng.randrange(len(words))
        words[i] = words[i].upper() if rng.random() < 0.5 else words[i] + ","
    return " ".join(words) + "\n(Reprinted with permission.)"


def _pii_doc(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Append two PII sentences to `doc` (kept and redacted by curation); the label lists the values."""
    values = _pii_values(rng)
    kinds = rng.sample(sorted(values), k=2)
    doc["text"] += " " + " ".join(PII_SENTENCES[k].format(v=values[k]) for k in kinds)
    return {"id": doc["id"], "kind": "pii", "detail": {k: values[k] for k in kinds}}


def _boilerplate_lines_doc(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Wrap `doc` in nav/cookie lines (kept by curation, the lines stripped); the label lists them."""
    head, tail = rng.sample(BOILERPLATE, 2), rng.choice(BOILERPLATE)
    doc["text"] = "\n".join(head) + "\n" + doc["text"] + "\n" + tail
    # the planted lines themselves: the noise check looks for these, not for the filter's regex
    return {"id": doc["id"], "kind": "boilerplate_lines", "detail": [*head, tail]}


# A noisy copy: (the document whose fields it copies, the fields it changes, the label's detail).
_Copy = tuple[dict[str, Any], dict[str, Any], Any]


def _exact_copy(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    src = rng.choice(docs)
    return src, {}, src["id"]


def _near_copy(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    src = rng.choice(docs)
    return src, {"text": _near_duplicate(src["text"], rng)}, src["id"]


def _boilerplate_page(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    lines = rng.sample(BOILERPLATE, k=4)
    return rng.choice(docs), {"text": "\n".join(lines)}, ""


def _non_english_page(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    return rng.choice(docs), {"text": rng.choice(NON_ENGLISH)}, ""


def _junk_page(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    return rng.choice(docs), {"text": rng.choice(JUNK)}, ""


def _stale_copy(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    src = rng.choice(docs)
    year = rng.randint(1995, 2007)
    date = f"{year}-{rng.randint(1, 12):02d}-15"
    text = src["text"].replace("2024", str(year)).replace("2025", str(year))
    return src, {"text": text, "date": date}, date


def _licensed_copy(rng: random.Random, docs: list[dict[str, Any]]) -> _Copy:
    src = rng.choice(docs)
    text = src["text"] + " Licensed data; redistribution prohibited."
    return src, {"text": text, "license": PROPRIETARY_LICENSE}, PROPRIETARY_LICENSE


# The added noisy documents, in the order they are drawn (the order is part of the seed's output).
_COPY_KINDS: list[tuple[str, float, Callable[[random.Random, list[dict[str, Any]]], _Copy]]] = [
    ("exact_duplicate", 0.03, _exact_copy),
    ("near_duplicate", 0.03, _near_copy),
    ("boilerplate", 0.02, _boilerplate_page),
    ("non_english", 0.02, _non_english_page),
    ("too_short", 0.02, _junk_page),
    ("stale_date", 0.02, _stale_copy),
    ("license", 0.02, _licensed_copy),
]


def _noise_count(n: int, ratio: float) -> int:
    """How many documents of a kind: `ratio` of the clean count, at least one."""
    return max(1, round(n * ratio))


def _plant_in_place(docs: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Edit distinct clean documents in place (PII, then boilerplate lines); return their labels.

    First, so that the copies drawn afterwards copy the final text."""
    n = len(docs)
    n_pii = _noise_count(n, 0.05)
    targets = rng.sample(range(n), k=n_pii + _noise_count(n, 0.02))
    return [
        _pii_doc(docs[idx], rng) if j < n_pii else _boilerplate_lines_doc(docs[idx], rng)
        for j, idx in enumerate(targets)
    ]


def _noisy_copies(
    docs: list[dict[str, Any]], rng: random.Random, prefix: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The added documents of every `_COPY_KINDS` kind, each a changed copy of one of `docs`, with
    new ids after theirs, and their labels."""
    extra: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for kind, ratio, make in _COPY_KINDS:
        for _ in range(_noise_count(len(docs), ratio)):
            src, changes, detail = make(rng, docs)
            doc = {**src, "id": f"{prefix}-{len(docs) + len(extra) + 1:06d}", **changes}
            extra.append(doc)
            labels.append({"id": doc["id"], "kind": kind, "detail": detail})
    return extra, labels


def plant_noise(
    clean: list[dict[str, Any]], rng: random.Random, prefix: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mix realistic noise into a clean corpus; return (corpus, labels).

    Kinds (ratios of the clean count): exact_duplicate 3%, near_duplicate 3%, boilerplate 2%
    (boilerplate-only pages), boilerplate_lines 2% (a clean doc with nav/cookie lines around it:
    keep it, strip the lines), non_english 2%, pii 5% (a clean doc with PII sentences: keep it,
    redact them; `detail` lists each planted value), too_short 2%, stale_date 2% (dated before
    2008), license 2% (a non-redistributable licence). Every other document is clean.
    """
    docs = [dict(d) for d in clean]
    labels = _plant_in_place(docs, rng)
    extra, copy_labels = _noisy_copies(docs, rng, prefix)
    labels += copy_labels
    # Interleave the extra documents at random places so order carries no signal.
    for doc in extra:
        docs.insert(rng.randrange(len(docs) + 1), doc)
    labels.sort(key=lambda r: r["id"])
    return docs, labels


# --------------------------------------------------------------------------- general replay text
_GENERAL_TOPICS = {
    "weather": [
        "The morning was cool and bright",
        "Rain moved in from the west by noon",
        "A light wind carried the smell of cut grass",
        "By evening the clouds had cleared",
    ],
    "cooking": [
        "Slice the onions thinly and let them soften in butter",
        "Add a pinch of salt and stir",
        "Simmer the soup for twenty minutes",
        "Serve with fresh bread and a green salad",
    ],
    "history": [
        "The old bridge was built of local stone",
        "Travellers crossed the river here for centuries",
        "The town grew around its weekly market",
        "Records from the period are incomplete",
    ],
    "nature": [
        "Birds nest in the hedges along the lane",
        "The forest floor is covered with ferns",
        "Foxes hunt at the edge of the fields at dusk",
        "In spring the meadow turns yellow with flowers",
    ],
    "sport": [
        "The team trained hard through the winter",
        "The match was decided in the final minutes",
        "Supporters filled the small stadium",
        "The coach praised the young players",
    ],
}


def general_doc(rng: random.Random, i: int) -> dict[str, Any]:
    topic = rng.choice(sorted(_GENERAL_TOPICS))
    sentences = [rng.choice(_GENERAL_TOPICS[t]) for t in [topic] * 3 + [rng.choice(sorted(_GENERAL_TOPICS))]]
    rng.shuffle(sentences)
    return {"id": f"gen-{i:06d}", "text": ". ".join(sentences) + ".", "license": "cc0-1.0"}


def build_general_replay(out_dir: Path, n: int = 400, seed: int = 7) -> int:
    rng = random.Random(seed)
    return write_jsonl(out_dir / "replay.jsonl", (general_doc(rng, i) for i in range(n)))


def pick_doc(
    rng: random.Random, kinds: dict[str, tuple[Callable[[random.Random], str], int]]
) -> dict[str, Any]:
    """One raw document: a kind drawn by weight, its text, a recent date and an open licence."""
    names = list(kinds)
    kind = rng.choices(names, weights=[kinds[k][1] for k in names])[0]
    text = kinds[kind][0](rng)
    year = rng.choice([2024, 2025])
    return {
        "text": text,
        "source": f"sample-{kind}",
        "date": f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "license": "cc-by-4.0",
    }


def worksheet_doc(rng: random.Random, task_fn: TaskFn) -> str:
    """Analyst training worksheets: worked questions in the corpus, as firms keep them."""
    items = [task_fn(rng) for _ in range(rng.randint(3, 6))]
    return "Analyst practice worksheet, worked answers:\n" + "\n".join(
        f"{t.prompt} {t.answer}" for t in items
    )


# --------------------------------------------------------------------------- the whole sample
def _unique_items(task_fn: TaskFn, rng: random.Random, n: int, seen: set[str]) -> list[TaskItem]:
    items: list[TaskItem] = []
    tries = 0
    while len(items) < n and tries < n * 50:
        tries += 1
        item = task_fn(rng)
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        items.append(item)
    return items


def _leak_free(doc_fn: DocFn, eval_prompts: list[str]) -> DocFn:
    """`doc_fn`, redrawn until the document quotes no eval prompt: a clean document that quotes an
    eval item and its answer (a worked worksheet) is a leak, and curation would drop it."""

    def doc(rng: random.Random) -> dict[str, Any]:
        d = doc_fn(rng)
        while any(p in d["text"] for p in eval_prompts):
            d = doc_fn(rng)
        return d

    return doc


def _raw_documents(
    doc_fn: DocFn, rng: random.Random, prefix: str, n_docs: int, n_heldout: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(corpus with planted noise, its noise labels, held-out clean text), all from one `rng`."""
    clean = [{"id": f"{prefix}-{i:06d}", **doc_fn(rng)} for i in range(n_docs)]
    corpus, labels = plant_noise(clean, rng, prefix)
    heldout = [{"id": f"{prefix}-heldout-{i:05d}", **doc_fn(rng)} for i in range(n_heldout)]
    return corpus, labels, heldout


def _rejections(
    items: list[TaskItem], rng: random.Random, hallucinations: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(rejected answer, kind) per preference item: half are wrong (a wrong figure or label), half
    the right answer with a hallucinated, unsupported addition — what DPO is meant to train away."""
    return [
        (t.rejected, "wrong")
        if rng.random() < 0.5
        else (f"{t.answer}, {rng.choice(hallucinations)}", "hallucination")
        for t in items
    ]


def _sft_rows(items: list[TaskItem]) -> Iterator[dict[str, Any]]:
    for t in items:
        messages = [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]
        yield {"messages": messages, "task": t.task}


def _preference_rows(items: list[TaskItem], rejections: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for t, (rejected, kind) in zip(items, rejections, strict=True):
        yield {
            "prompt": [{"role": "user", "content": t.prompt}],
            "chosen": [{"role": "assistant", "content": t.answer}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "task": t.task,
            "rejected_kind": kind,
        }


def _eval_rows(items: list[TaskItem], prefix: str) -> Iterator[dict[str, Any]]:
    for i, t in enumerate(items):
        yield {
            "id": f"{prefix}-eval-{i:04d}",
            "task": t.task,
            "prompt": t.prompt,
            "answer": t.answer,
            "kind": t.kind,
            "difficulty": t.difficulty,
        }


def build_sample(
    out_dir: Path,
    prefix: str,
    doc_fn: DocFn,
    task_fn: TaskFn,
    *,
    seed: int,
    n_docs: int = 1200,
    n_heldout: int = 100,
    n_sft: int = 3000,
    n_pref: int = 800,
    n_eval: int = 200,
    hallucinations: tuple[str, ...] = ("as confirmed in a 2019 filing", "according to unnamed sources"),
) -> dict[str, int]:
    """Write the domain sample to `out_dir`; returns row counts per file.

    Each part draws from its own generator seeded from `seed` (the corpus and held-out text share
    one), so the committed sample is rebuilt byte for byte."""
    seen: set[str] = set()
    # Eval first: its prompts never appear in training, the corpus's worked worksheets included.
    eval_items = _unique_items(task_fn, random.Random(seed + 1), n_eval, seen)
    doc = _leak_free(doc_fn, [t.prompt for t in eval_items])
    corpus, labels, heldout = _raw_documents(doc, random.Random(seed), prefix, n_docs, n_heldout)
    sft_items = _unique_items(task_fn, random.Random(seed + 2), n_sft, seen)
    pref_items = _unique_items(task_fn, random.Random(seed + 3), n_pref, seen)
    rejections = _rejections(pref_items, random.Random(seed + 4), hallucinations)
    return {
        "corpus.jsonl": write_jsonl(out_dir / "corpus.jsonl", corpus),
        "noise_labels.jsonl": write_jsonl(out_dir / "noise_labels.jsonl", labels),
        "heldout.jsonl": write_jsonl(out_dir / "heldout.jsonl", heldout),
        "sft.jsonl": write_jsonl(out_dir / "sft.jsonl", _sft_rows(sft_items)),
        "preferences.jsonl": write_jsonl(
            out_dir / "preferences.jsonl", _preference_rows(pref_items, rejections)
        ),
        "eval.jsonl": write_jsonl(out_dir / "eval.jsonl", _eval_rows(eval_items, prefix)),
    }


def build_and_report(out_dir: Path, prefix: str, doc_fn: DocFn, task_fn: TaskFn, **kwargs: Any) -> None:
    """`build_sample` for a builder's `main()`: write the files and print what was written."""
    for name, n in build_sample(out_dir, prefix, doc_fn, task_fn, **kwargs).items():
        print(f"{out_dir / name}: {n} rows")  # noqa: T201 - the builder script's output
