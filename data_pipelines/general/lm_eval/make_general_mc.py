"""Writes general_mc.jsonl: multiple-choice general questions in lm-eval's format (question,
choices, answer index), generated here from arithmetic, unit conversions and a hand list of world
capitals (facts; the text is ours: CC0). Deterministic (seed 0): a test checks the shipped file
is this script's output. The three kinds alternate, so lm-eval's `--limit N` (the first N) asks
each about equally.

python data_pipelines/general/lm_eval/make_general_mc.py data_pipelines/general/lm_eval/general_mc.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasília", "Argentina": "Buenos Aires",
    "Australia": "Canberra", "Russia": "Moscow", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
    "Ireland": "Dublin", "Austria": "Vienna", "Peru": "Lima", "Chile": "Santiago",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Nigeria": "Abuja",
    "Morocco": "Rabat", "South Korea": "Seoul", "Netherlands": "Amsterdam", "Belgium": "Brussels",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Czechia": "Prague", "Cuba": "Havana",
    "Colombia": "Bogotá", "Iran": "Tehran",
}  # fmt: skip
UNITS = [("kilometres", "metres", 1000), ("hours", "minutes", 60), ("kilograms", "grams", 1000),
         ("minutes", "seconds", 60), ("metres", "centimetres", 100), ("litres", "millilitres", 1000)]  # fmt: skip


def choices_around(rng: random.Random, right: int, spread: int) -> tuple[list[str], int]:
    """The right number among three wrong ones within `spread` of it, shuffled; its index."""
    wrong: set[int] = set()
    while len(wrong) < 3:
        w = right + rng.choice([-1, 1]) * rng.randint(1, spread)
        if w != right and (w >= 0 or right < 0):
            wrong.add(w)
    options = [right, *sorted(wrong)]
    rng.shuffle(options)
    return [str(o) for o in options], options.index(right)


def items(seed: int = 0) -> list[dict[str, object]]:
    """300 items: 100 each of arithmetic, unit conversions and capitals, interleaved."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for i in range(100):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-×")
        right = a + b if op == "+" else a - b if op == "-" else a * b
        choices, answer = choices_around(rng, right, 12)
        out.append(
            {"id": f"arith-{i}", "question": f"What is {a} {op} {b}?", "choices": choices, "answer": answer}
        )
    for i in range(100):
        big, small, factor = rng.choice(UNITS)
        n = rng.randint(2, 40)
        choices, answer = choices_around(rng, n * factor, factor)
        out.append({"id": f"unit-{i}", "question": f"How many {small} are in {n} {big}?", "choices": choices,
                    "answer": answer})  # fmt: skip
    countries = sorted(CAPITALS)
    for i in range(100):
        country = countries[i % len(countries)]
        wrong = rng.sample([c for k, c in CAPITALS.items() if k != country], 3)
        options = [CAPITALS[country], *wrong]
        rng.shuffle(options)
        q = (
            f"What is the capital of {country}?"
            if i < len(countries)
            else f"Which city is the capital of {country}?"
        )
        out.append(
            {
                "id": f"capital-{i}",
                "question": q,
                "choices": options,
                "answer": options.index(CAPITALS[country]),
            }
        )
    return [out[k * 100 + i] for i in range(100) for k in range(3)]


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "general_mc.jsonl")
    dest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items()), encoding="utf-8")
