"""Build the finance sample: filings / earnings-call / regulatory style text and four tasks.

    python data_pipelines/finance/build_sample.py            # writes data_pipelines/finance/sample/

Tasks (graded so that no tiny model saturates the eval):
  txn_category   (1 known merchant, 2 unseen merchant whose name carries a category word)
                 bank-statement line → dining|groceries|travel|utilities|payroll|fees
  change         (1 the excerpt says "rose"/"fell", 3 only the two figures say it) → increase|decrease
  extract        (2) pick one named figure out of an excerpt with several → number
  operating_income (3) revenue − operating expenses → number

The raw corpus gets planted noise (duplicates, boilerplate, non-English, PII, junk, stale
dates, a non-redistributable licence): see verticalft.sample_data.plant_noise; the ground
truth is written to sample/noise_labels.jsonl for the curation stage's report.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from verticalft.sample_data import TaskItem, build_and_report, pick_doc, worksheet_doc

SEED = 1234
OUT = Path(__file__).resolve().parent / "sample"

COMPANIES = [
    "Acme Holdings",
    "Northwind Capital",
    "Bluewater Bancorp",
    "Granite Industries",
    "Summit Financial",
    "Redwood Insurance",
    "Harbor Logistics",
    "Keystone Energy",
    "Meridian Health",
    "Pinecrest Retail",
    "Silverline Software",
    "Oakmont Realty Trust",
    "Cobalt Mining",
    "Lighthouse Media",
    "Evergreen Foods",
    "Ironbridge Partners",
    "Crescent Pharma",
    "Falcon Aerospace",
    "Riverbend Utilities",
    "Tidewater Shipping",
]
METRICS = ["net revenue", "operating expenses", "net income", "free cash flow", "total deposits"]
MERCHANTS = {
    "dining": ["STARBUCKS", "CHIPOTLE", "MCDONALDS", "PANERA BREAD", "SUBWAY", "DOMINOS PIZZA"],
    "groceries": ["WHOLE FOODS", "TRADER JOES", "KROGER", "SAFEWAY", "ALDI", "PUBLIX"],
    "travel": ["DELTA AIR", "UNITED AIRLINES", "MARRIOTT", "HILTON HOTELS", "AMTRAK", "HERTZ RENTAL"],
    "utilities": ["CON EDISON", "PG&E", "COMCAST", "VERIZON WIRELESS", "DUKE ENERGY", "CITY WATER DEPT"],
    "payroll": [
        "ADP PAYROLL",
        "GUSTO PAYROLL",
        "PAYCHEX",
        "DIRECT DEP SALARY",
        "INTUIT PAYROLL",
        "WORKDAY PAY",
    ],
    "fees": [
        "OVERDRAFT FEE",
        "ATM FEE",
        "WIRE TRANSFER FEE",
        "MONTHLY SERVICE FEE",
        "FOREIGN TXN FEE",
        "LATE PAYMENT FEE",
    ],
}
# Unseen merchants for the harder eval items: a made-up name plus a word that carries the category.
CATEGORY_WORDS = {
    "dining": ["CAFE", "GRILL", "BISTRO", "DINER"],
    "groceries": ["MARKET", "GROCERY", "FOODS", "FARMSTAND"],
    "travel": ["AIRLINES", "HOTEL", "RAILWAYS", "INN"],
    "utilities": ["POWER", "GAS CO", "TELECOM", "ELECTRIC"],
    "payroll": ["PAYROLL", "SALARY", "WAGES", "PAYRUN"],
    "fees": ["SERVICE FEE", "MAINT FEE", "PENALTY FEE", "ADMIN FEE"],
}
NAME_PARTS = [
    "BLUE DOOR",
    "OLD TOWN",
    "LAKESIDE",
    "MAPLE",
    "SUNRISE",
    "HILLTOP",
    "RIVERSIDE",
    "GOLDEN GATE",
    "NORTHSTAR",
    "CEDAR",
    "PARKVIEW",
    "HARBOR",
]
CITIES = ["NEW YORK NY", "SEATTLE WA", "AUSTIN TX", "CHICAGO IL", "DENVER CO", "BOSTON MA", "MIAMI FL"]
CATEGORIES = sorted(MERCHANTS)
# Unsupported additions for the DPO set's rejected answers (numbers and claims not in the prompt).
HALLUCINATIONS = (
    "up 40% after an undisclosed acquisition",
    "as confirmed by the SEC in 2019",
    "per the CFO's private guidance",
    "which triggers a covenant breach",
    "according to a leaked analyst memo",
    "flagged as fraud by the bank",
)


def _money(rng: random.Random, lo: float = 20, hi: float = 900) -> float:
    return round(rng.uniform(lo, hi), 1)


def _txn_line(rng: random.Random, merchant: str) -> str:
    """A statement line; the merchant comes last, as in most bank exports' description column."""
    prefix = rng.choice(["POS", "DEBIT CARD", "ACH", "CHECKCARD"])
    return f"{rng.uniform(2, 900):.2f} USD {prefix} {rng.randint(1000, 9999)} {merchant}"


def _unseen_merchant(rng: random.Random, category: str) -> str:
    return f"{rng.choice(NAME_PARTS)} {rng.choice(CATEGORY_WORDS[category])}"


# --------------------------------------------------------------------------- raw documents
def _doc_filing(rng: random.Random) -> str:
    c, q, y = rng.choice(COMPANIES), rng.randint(1, 4), rng.choice([2024, 2025])
    rev, prev = _money(rng, 100, 900), _money(rng, 100, 900)
    opex = round(rev * rng.uniform(0.5, 0.9), 1)
    verb = "increased" if rev > prev else "decreased"
    return (
        f"{c} reported net revenue of ${rev} million for the quarter ended Q{q} {y}, compared with ${prev} "
        f"million a year earlier. Net revenue {verb} as a result of pricing and volume changes. Operating "
        f"expenses were ${opex} million, so operating income was ${round(rev - opex, 1)} million. Management "
        f"reaffirmed its full-year outlook and noted that liquidity remains adequate under the credit facility."
    )


def _doc_call(rng: random.Random) -> str:
    c = rng.choice(COMPANIES)
    m = rng.choice(METRICS)
    a, b = _money(rng), _money(rng)
    word = "increase" if a > b else "decrease"
    return (
        f"Operator: Welcome to the {c} earnings call. CFO: Thank you. This quarter {m} was ${a} million versus "
        f"${b} million in the prior-year period, a {word} that reflects our disciplined execution. Analyst: "
        f"Can you comment on margins? CFO: Margins were stable and we continue to invest in technology."
    )


def _doc_regulatory(rng: random.Random) -> str:
    rule = rng.choice(
        [
            "Regulation SHO",
            "Rule 10b-5",
            "Basel III capital requirements",
            "the liquidity coverage ratio",
            "Regulation Best Interest",
            "anti-money-laundering rules",
        ]
    )
    return (
        f"Compliance bulletin {rng.randint(100, 999)}-{rng.choice([2024, 2025])}: Firms subject to {rule} must "
        f"document their controls, report exceptions to the compliance officer within {rng.randint(2, 30)} "
        f"business days, and retain records for {rng.randint(3, 7)} years. Examiners will review the testing of "
        f"these controls during the next cycle."
    )


def _doc_ledger(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(4, 7)):
        cat = rng.choice(CATEGORIES)
        merchant = rng.choice(MERCHANTS[cat]) if rng.random() < 0.7 else _unseen_merchant(rng, cat)
        lines.append(f"{_txn_line(rng, merchant)} -> {cat}")
    return "Statement of account, categorised transactions:\n" + "\n".join(lines)


def make_doc(rng: random.Random) -> dict:
    return pick_doc(
        rng,
        {
            "filing": (_doc_filing, 2),
            "call": (_doc_call, 2),
            "regulatory": (_doc_regulatory, 1),
            "ledger": (_doc_ledger, 3),
            "worksheet": (_doc_worksheet, 5),
        },
    )


# --------------------------------------------------------------------------- tasks
def _task_category(rng: random.Random) -> TaskItem:
    cat = rng.choice(CATEGORIES)
    hard = rng.random() < 0.4
    merchant = _unseen_merchant(rng, cat) if hard else rng.choice(MERCHANTS[cat])
    wrong = rng.choice([c for c in CATEGORIES if c != cat])
    prompt = f"Categorise this bank transaction: {_txn_line(rng, merchant)}\nCategory:"
    return TaskItem("txn_category", prompt, cat, "label", 2 if hard else 1, wrong)


def _task_change(rng: random.Random) -> TaskItem:
    c, m = rng.choice(COMPANIES), rng.choice(METRICS)
    a, b = _money(rng), _money(rng)
    while abs(a - b) < 5:
        b = _money(rng)
    answer = "increase" if a > b else "decrease"
    wrong = "decrease" if answer == "increase" else "increase"
    excerpt = f"{c}: {m} was ${b} million a year earlier and ${a} million this year"
    if rng.random() < 0.5:  # easy: the excerpt says which way it went
        excerpt, difficulty = excerpt + f", so it {'rose' if a > b else 'fell'}.", 1
    else:  # hard: only the two figures say it
        excerpt, difficulty = excerpt + ".", 3
    prompt = f"Did {m} increase or decrease? Excerpt: {excerpt}\nAnswer:"
    return TaskItem("change", prompt, answer, "label", difficulty, wrong)


def _task_extract(rng: random.Random) -> TaskItem:
    c = rng.choice(COMPANIES)
    metrics = rng.sample(METRICS, 3)
    values = [_money(rng) for _ in metrics]
    excerpt = "; ".join(f"{m} was ${v} million" for m, v in zip(metrics, values, strict=True))
    k = rng.randrange(3)
    wrong = str(values[(k + 1) % 3])
    prompt = f"What was {metrics[k]}, in $ millions? Excerpt: {c} reported that {excerpt}.\nAnswer:"
    return TaskItem("extract", prompt, str(values[k]), "number", 2, wrong)


def _task_operating_income(rng: random.Random) -> TaskItem:
    rev = rng.randint(20, 99)
    opex = rng.randint(10, rev - 1)
    answer = rev - opex
    wrong = str(rev + opex if rng.random() < 0.5 else answer + rng.choice([-10, -1, 1, 10]))
    prompt = (
        f"Net revenue was ${rev} million and operating expenses were ${opex} million. "
        f"What was operating income, in $ millions?\nAnswer:"
    )
    return TaskItem("operating_income", prompt, str(answer), "number", 3, wrong)


def make_task(rng: random.Random) -> TaskItem:
    fn = rng.choices(
        [_task_category, _task_change, _task_extract, _task_operating_income], weights=[4, 3, 3, 2]
    )[0]
    return fn(rng)


def _doc_worksheet(rng: random.Random) -> str:
    return worksheet_doc(rng, make_task)


def main(out: Path = OUT) -> None:
    build_and_report(out, "fin", make_doc, make_task, seed=SEED, n_docs=1000, hallucinations=HALLUCINATIONS)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
