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
    lines += ["", "Every number comes from `manifest.json` next to this file.", ""]
    return "\n".join(lines)


def write_report(run: RunDir, title: str) -> str:
    path = run.root / "report.md"
    atomic_write_text(path, render(run.manifest(), title))
    return str(path)
