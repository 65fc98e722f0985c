"""The finance sample's eval items asked in other words: `sample/eval_rephrased.jsonl`.

    python data_pipelines/finance/rephrase_eval.py       # reads sample/eval.jsonl, writes sample/eval_rephrased.jsonl

Same items, same answers, same grading (`kind`, `difficulty`); only the wording of each prompt
differs from the one template its task has in the SFT, preference and eval sets: the figures
come first or the question last, other verbs, other units' phrasing. A student that learned
the training phrasing rather than the task scores lower here than on the eval set; the distill
stage reports retention on both (`data.eval_rephrased`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent / "sample"

Rewrite = Callable[[re.Match[str]], str]

# one pattern per task: the eval prompt's template, and its rewording
REWRITES: dict[str, tuple[str, Rewrite]] = {
    "txn_category": (
        r"Categorise this bank transaction: (?P<line>.+)\nCategory:",
        lambda m: f"Bank statement line: {m['line']}\nWhich spending category does it belong to?\nCategory:",
    ),
    "change": (
        r"Did (?P<metric>.+?) increase or decrease\? Excerpt: (?P<excerpt>.+)\nAnswer:",
        lambda m: (
            f'From the excerpt "{m["excerpt"]}", did {m["metric"]} go up (increase) or down (decrease)?\nAnswer:'
        ),
    ),
    "extract": (
        r"What was (?P<metric>.+?), in \$ millions\? Excerpt: (?P<excerpt>.+)\nAnswer:",
        lambda m: (
            f"{m['excerpt']}\nFrom the passage above, state {m['metric']} in millions of dollars.\nAnswer:"
        ),
    ),
    "operating_income": (
        r"Net revenue was \$(?P<rev>[\d.]+) million and operating expenses were \$(?P<opex>[\d.]+) million\. "
        r"What was operating income, in \$ millions\?\nAnswer:",
        lambda m: (
            f"Operating costs came to ${m['opex']}M against net revenue of ${m['rev']}M. "
            "How much operating income is that, in millions of dollars?\nAnswer:"
        ),
    ),
}


def rephrase(item: dict) -> dict:
    """The item with its prompt reworded; a prompt off its task's template is an error (the
    sample changed: update REWRITES)."""
    pattern, rewrite = REWRITES[item["task"]]
    match = re.fullmatch(pattern, item["prompt"], re.S)
    if match is None:
        raise ValueError(
            f"{item['id']}: prompt does not match the {item['task']} template: {item['prompt']!r}"
        )
    return {**item, "prompt": rewrite(match)}


def main(folder: Path = HERE) -> None:
    rows = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines() if line.strip()]
    out = folder / "eval_rephrased.jsonl"
    out.write_text("".join(json.dumps(rephrase(r), ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
