"""The run report: `runs/<recipe>/<profile>/report.md`, rebuilt from the manifest after every run.

Today it shows what the training stages measured; the eval/bench/cost stages will add the
quality-vs-cost table and plots on top of the same manifest.
"""

from __future__ import annotations

from typing import Any

from verticalft.rundir import RunDir, atomic_write_text


def _score(m: dict[str, Any] | None) -> str:
    return f"{m['score']:.3f}" if isinstance(m, dict) else "–"


def _num(x: Any, fmt: str = "{:,.4g}") -> str:
    return fmt.format(x) if isinstance(x, int | float) else "–"


def render(manifest: dict[str, Any], title: str) -> str:
    stages = manifest.get("stages", {})
    lines = [
        f"# {title}",
        "",
        "| stage | status | wall time | tokens | loss first → last | eval score before → after | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    order = [s for s in manifest.get("stage_order", []) if s in stages] + [
        s for s in stages if s not in manifest.get("stage_order", [])
    ]
    for name in order:
        rec = stages[name]
        m = rec.get("metrics", {})
        before = m.get("eval_base") if name == "cpt" else m.get("eval_before")
        after = m.get("eval_after")
        notes = []
        if m.get("heldout_perplexity_before") is not None:
            notes.append(
                f"held-out perplexity {_num(m['heldout_perplexity_before'])} → {_num(m['heldout_perplexity_after'])}"
            )
        if m.get("reward_accuracy") is not None:
            notes.append(f"reward accuracy {m['reward_accuracy']:.3f}, margin {_num(m.get('reward_margin'))}")
        if m.get("resumed_from"):
            notes.append(f"resumed from {m['resumed_from']}")
        if name == "curate" and "read" in m:
            notes.append(
                f"{m['read']:,} docs → {m['kept']:,} kept, {m['dropped']:,} dropped, "
                f"{m['quarantined']} quarantined ([curation report](curate/report.md))"
            )
        if name == "tiny_models":
            notes.append(", ".join(f"{k.removesuffix('_parameters')} {v / 1e6:.2f}M" for k, v in m.items()))
        lines.append(
            f"| {name} | {rec.get('status')} | {_num(rec.get('wall_time_s'), '{:.0f}s')} | {_num(m.get('tokens_seen'), '{:,}')} "
            f"| {_num(m.get('first_loss'))} → {_num(m.get('last_loss'))} | {_score(before)} → {_score(after)} | {'; '.join(notes)} |"
        )
    final = next(
        (
            stages[s]["metrics"].get("eval_after")
            for s in reversed(order)
            if isinstance(stages[s].get("metrics", {}).get("eval_after"), dict)
        ),
        None,
    )
    if final:
        lines += [
            "",
            "## Domain eval of the latest model, by task and difficulty",
            "",
            "| task | score |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in final["by_task"].items()]
        lines += [f"| difficulty {k} | {v:.3f} |" for k, v in final["by_difficulty"].items()]
    lines += _distill_section(stages.get("distill"))
    lines += ["", "Every number comes from `manifest.json` next to this file.", ""]
    return "\n".join(lines)


def _distill_section(rec: dict[str, Any] | None) -> list[str]:
    """Teacher vs each student: eval score and retention (student / teacher)."""
    m = (rec or {}).get("metrics") or {}
    if not m.get("students") and not m.get("failed_students"):
        return []
    cache = m.get("cache")
    lines = [
        "",
        f"## Distillation ({m.get('kind')}{', teacher top-k cache' if cache else ''})",
        "",
        "| model | eval score | retention | train time | peak RSS | teacher in memory |",
        "|---|---|---|---|---|---|",
        f"| teacher `{m.get('teacher')}` | {_score(m.get('teacher_eval'))} | 1.000 | – | – | – |",
    ]
    for name, st in m.get("students", {}).items():
        train = st.get("train", {})
        lines.append(
            f"| {name} | {_score(st.get('eval'))} | {_num(st.get('retention'), '{:.3f}')} "
            f"| {_num(train.get('train_seconds'), '{:.0f}s')} | {_num(st.get('peak_rss_mb'), '{:,.0f} MB')} "
            f"| {'yes' if st.get('teacher_in_memory') else 'no'} |"
        )
    for name, err in (m.get("failed_students") or {}).items():
        lines.append(f"| {name} | failed: {err} | – | – | – | – |")
    if cache:
        lines += [
            "",
            f"Teacher cache: top-{cache['k']} of {cache['tokens']:,} response tokens, "
            f"{cache['bytes_per_token']} bytes/token, built in {cache['build_seconds']}s "
            f"(0 s = reused).",
        ]
    return lines


def write_report(run: RunDir, title: str) -> str:
    path = run.root / "report.md"
    atomic_write_text(path, render(run.manifest(), title))
    return str(path)
