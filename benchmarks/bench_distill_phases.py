"""Which distillation keeps the most of the teacher: phases, pruning and KD loss side by side, on
the small profile (SmolLM2-135M-Instruct teacher after cpt → sft → dpo, pruned students), every
option on the same budget of student training tokens.

    .venv/bin/verticalft run recipes/finance.yaml -p small --until dpo --runs-dir RUNS
    .venv/bin/python benchmarks/bench_distill_phases.py --runs-dir RUNS [--budget 72000] [--only a b]

Options (issue 27):
  a      one SFT phase (what the stage did before phases), the whole budget on the conversations
  b      corpus (+ replay) logit KD for half the budget, then the SFT conversations for the other half
  c-even b with the 16-layer student pruned evenly (no calibration) instead of by block influence
  c-10L  b with the 10-layer student (influence)
  d-jsd  b with JSD (beta 0.5) instead of forward KL, in both phases
  d-rkl  b with reverse KL
b and c-10L train in one stage run (the small profile's own two students and phases), so that
`verticalft run ... -p small --only eval bench cost route` on a copy of the folder prices them.
Each option is the real distill stage (`verticalft run --only distill --force`) on the same run
folder, with `--set` overrides only; the teacher, its caches (built by the first option that
needs them, reused after: their build time is reported apart), the eval items and every trainer
setting are the small profile's. Retention is the stage's own quick eval after each phase
(evaluation.max_items items of the eval set) divided by the teacher's on the same items.
Writes benchmarks/results/distill_phases.json (or `--out`) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, results_header

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/finance.yaml"
PRUNE = "prune://teacher?layers={layers}&by={by}"


def phases(budget: int, loss: str | None = None, heal: bool = True) -> str:
    """The `stages.distill.phases` override: half the budget on documents, half on conversations
    (or all of it on conversations)."""
    extra = f", loss: {loss}" if loss else ""
    task = f"{{name: task, data: sft, max_tokens: {budget // 2 if heal else budget}{extra}}}"
    if not heal:
        return f"[{task}]"
    return f"[{{name: heal, data: [corpus, replay], max_tokens: {budget // 2}{extra}}}, {task}]"


def options(budget: int) -> dict[str, dict[str, Any]]:
    """The options in the order they run; `b` trains its 16-layer student and c-10L's 10-layer one
    in one stage run (the same phases, one teacher pass): the small profile's own distillation,
    which the eval, bench and cost stages then price on a copy of the run folder."""
    influence16, influence10 = (PRUNE.format(layers=n, by="influence") for n in (16, 10))
    even16 = PRUNE.format(layers=16, by="even")
    return {
        "a": {"what": "sft only", "students": {"a": influence16}, "phases": phases(budget, heal=False)},
        "c-even": {
            "what": "b, 16 layers pruned evenly",
            "students": {"c-even": even16},
            "phases": phases(budget),
        },
        "b": {
            "what": "corpus+replay → sft",
            "students": {"b": influence16, "c-10L": influence10},
            "phases": phases(budget),
        },
        "d-jsd": {"what": "b with JSD", "students": {"d-jsd": influence16}, "phases": phases(budget, "jsd")},
        "d-rkl": {
            "what": "b with reverse KL",
            "students": {"d-rkl": influence16},
            "phases": phases(budget, "reverse_kl"),
        },
    }


def run_option(runs: Path, option: dict[str, Any], extra: list[str]) -> dict[str, dict[str, Any]]:
    """One distill stage run; a result per student, keyed by the option it measures."""
    refs = ", ".join(f'"{r}"' for r in option["students"].values())
    sets = [f"stages.distill.students=[{refs}]", f"stages.distill.phases={option['phases']}"]
    args = [RECIPE, "-p", "small", "--only", "distill", "--force", "--runs-dir", str(runs)]
    args += [x for s in sets + extra for x in ("--set", s)]
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "verticalft.cli", "run", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    wall = round(time.time() - t0, 1)
    if proc.returncode != 0:
        raise SystemExit(f"option failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest = json.loads((runs / "finance" / "small" / "manifest.json").read_text())["stages"]["distill"]
    m = manifest["metrics"]
    cache_s = round(sum(c["build_seconds"] for c in (m.get("caches") or {}).values()), 1)
    stage = {
        "stage_seconds": manifest["wall_time_s"],
        "of_which_cache_build_s": cache_s,
        "process_seconds": wall,
    }
    out = {}
    from verticalft.distill.students import student_name

    for key, ref in option["students"].items():
        name = student_name(ref)  # the manifest lists students in the order they finished
        student = m["students"][name]
        out[key] = {
            "what": option["what"],
            "student": ref,
            "phases_override": option["phases"],
            "student_name": name,
            "teacher_score": m["teacher_eval"]["score"],
            "teacher_by_task": m["teacher_eval"]["by_task"],
            "score": student["score"],
            "retention": student["retention"],
            "retention_by_task": student["phases"][-1]["retention_by_task"],
            "retention_rephrased": student.get("retention_rephrased"),
            "student_tokens": sum(p["tokens"] for p in student["phases"]),
            "train_seconds": round(sum(p["train"]["train_seconds"] for p in student["phases"]), 1),
            **stage,  # the whole stage: both students of option b
            "phases": [
                {
                    k: p[k]
                    for k in ("name", "data", "tokens", "score", "retention", "retention_by_task", "loss")
                }
                for p in student["phases"]
            ],
        }
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    tasks = sorted(next(iter(results.values()))["teacher_by_task"])
    head = (
        "| option | what | student tokens | retention | "
        + " | ".join(tasks)
        + " | rephrased | train s | stage s |"
    )
    lines = [head, "|" + "---|" * (7 + len(tasks))]
    for key, r in results.items():
        per_task = " | ".join(f"{r['retention_by_task'].get(t) or 0:.3f}" for t in tasks)
        lines.append(
            f"| {key} | {r['what']} | {r['student_tokens']:,} | {r['retention']:.3f} | {per_task} "
            f"| {r.get('retention_rephrased') or 0:.3f} | {r['train_seconds']:.0f} | {r['stage_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True, help="a small-profile run done through dpo")
    ap.add_argument("--budget", type=int, default=72000, help="student training tokens per option")
    ap.add_argument("--only", nargs="*", help="option keys (default: all)")
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides for every option")
    ap.add_argument("--out", type=Path, default=RESULTS / "distill_phases.json")
    args = ap.parse_args()
    load = os.getloadavg()
    chosen = {k: v for k, v in options(args.budget).items() if not args.only or k in args.only}
    results: dict[str, dict[str, Any]] = {}
    if args.out.exists():  # resume: keep the options measured before with the same budget
        before = json.loads(args.out.read_text())
        if before.get("budget") == args.budget:
            results = before["options"]
    for key, option in chosen.items():
        if all(k in results for k in option["students"]):
            continue
        print(f"option {key}: {option['what']} …", flush=True)
        for k, r in run_option(args.runs_dir, option, args.set).items():
            results[k] = r
            print(f"  {k}: retention {r['retention']}, stage {r['stage_seconds']}s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {**results_header("bench_distill_phases.py", sys.argv[1:], load), "budget": args.budget}
        args.out.write_text(json.dumps({**doc, "options": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
